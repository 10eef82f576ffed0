"""Model configuration: one frozen dataclass for LLaDA, Dream and WeDLM, presets, HF config parsing.

The families share one transformer; they differ in dimensions, biases, RoPE theta, norm epsilon,
how positions are counted under padding, Dream's one-position logit shift, and WeDLM's per-head
q/k RMSNorm and causal attention in topological order (observed tokens first, masks after).
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

import jax.numpy as jnp
from absl import logging

FAMILIES = ("llada", "dream", "wedlm")
# WeDLM releases `"mask_token_id": null`; Tencent's engine and fine-tuning code then use this id.
WEDLM_DEFAULT_MASK_ID = 151665
DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture, special tokens and dtype policy of a masked diffusion transformer.

  `dtype` is the compute dtype of activations and matmuls, `param_dtype` the storage dtype of the
  weights; RMSNorm statistics, RoPE, softmax and the returned logits are always float32.
  """

  family: str  # "llada", "dream" or "wedlm": selects the checkpoint key layout.
  vocab_size: int
  hidden_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  mlp_hidden_size: int
  rope_theta: float
  norm_eps: float
  max_length: int  # longest canvas (prompt + generation) the model accepts.
  mask_token_id: int
  eos_token_id: int
  pad_token_id: int
  eot_token_id: int | None = None  # end of turn (LLaDA <|eot_id|>, Dream <|im_end|>).
  bos_token_id: int | None = None
  qkv_bias: bool = False
  # Dream: logits[:, t] is the prediction made at t-1 (logits[:, 0] stays).
  shift_logits: bool = False
  # Dream and WeDLM count positions over real tokens only (cumsum(mask) - 1); LLaDA uses 0..L-1.
  positions_from_mask: bool = False
  qk_norm: bool = False  # WeDLM-8B (Qwen3): RMSNorm over each head's queries and keys before RoPE.
  # WeDLM: causal attention in topological order. Observed tokens come before masks, each group in
  # logical order; every token keeps its logical position for RoPE (see transformer.py).
  topological_causal: bool = False
  dtype: str = "float32"
  param_dtype: str = "float32"

  def __post_init__(self):
    if self.family not in FAMILIES:
      raise ValueError(f"unknown model family {self.family!r}; expected one of {FAMILIES}")
    for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim",
                 "mlp_hidden_size", "max_length"):
      if getattr(self, name) < 1:
        raise ValueError(f"ModelConfig.{name} must be positive, got {getattr(self, name)}")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads "
                       f"({self.num_kv_heads})")
    if self.head_dim % 2:
      raise ValueError(f"head_dim must be even for rotary embeddings, got {self.head_dim}")
    for name in ("mask_token_id", "eos_token_id", "pad_token_id", "eot_token_id", "bos_token_id"):
      token = getattr(self, name)
      if token is not None and not 0 <= token < self.vocab_size:
        raise ValueError(f"{name}={token} is outside the vocabulary [0, {self.vocab_size})")
    for name in ("dtype", "param_dtype"):
      if getattr(self, name) not in DTYPES:
        raise ValueError(f"ModelConfig.{name}={getattr(self, name)!r}; expected one of {DTYPES}")
    if self.rope_theta <= 0 or self.norm_eps <= 0:
      raise ValueError("rope_theta and norm_eps must be positive")
    if self.topological_causal and self.shift_logits:
      raise ValueError("topological_causal (WeDLM) predicts each masked slot in place; it cannot "
                       "be combined with shift_logits")

  @property
  def compute_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.dtype)

  @property
  def weight_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.param_dtype)

  def replace(self, **changes: Any) -> ModelConfig:
    return dataclasses.replace(self, **changes)

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

  @classmethod
  def from_json(cls, text: str) -> ModelConfig:
    fields = json.loads(text)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - known)
    if unknown:
      raise ValueError(f"unknown ModelConfig fields {unknown}")
    return cls(**fields)


# ----------------------------------------------------------------------------------------------
# Presets


def llada_8b(**changes: Any) -> ModelConfig:
  """LLaDA-8B (Base / Instruct / 1.5): 8,015,581,184 parameters."""
  config = ModelConfig(
      family="llada", vocab_size=126464, hidden_size=4096, num_layers=32, num_heads=32,
      num_kv_heads=32, head_dim=128, mlp_hidden_size=12288, rope_theta=500000.0, norm_eps=1e-5,
      max_length=4096, mask_token_id=126336, eos_token_id=126081, pad_token_id=126081,
      eot_token_id=126348, bos_token_id=126080)
  return config.replace(**changes)


def dream_7b(**changes: Any) -> ModelConfig:
  """Dream-7B (Qwen2.5-7B layout, GQA with 4 kv heads, q/k/v biases)."""
  config = ModelConfig(
      family="dream", vocab_size=152064, hidden_size=3584, num_layers=28, num_heads=28,
      num_kv_heads=4, head_dim=128, mlp_hidden_size=18944, rope_theta=1e6, norm_eps=1e-6,
      max_length=131072, mask_token_id=151666, eos_token_id=151643, pad_token_id=151643,
      eot_token_id=151645, bos_token_id=151643, qkv_bias=True, shift_logits=True,
      positions_from_mask=True)
  return config.replace(**changes)


def wedlm_8b(**changes: Any) -> ModelConfig:
  """WeDLM-8B(-Instruct): the Qwen3-8B architecture (GQA 32:8, per-head q/k norm, no biases)."""
  config = ModelConfig(
      family="wedlm", vocab_size=151936, hidden_size=4096, num_layers=36, num_heads=32,
      num_kv_heads=8, head_dim=128, mlp_hidden_size=12288, rope_theta=1e6, norm_eps=1e-6,
      max_length=16384, mask_token_id=WEDLM_DEFAULT_MASK_ID, eos_token_id=151643,
      pad_token_id=151643, eot_token_id=151645, qk_norm=True, positions_from_mask=True,
      topological_causal=True)
  return config.replace(**changes)


def wedlm_7b(**changes: Any) -> ModelConfig:
  """WeDLM-7B(-Instruct): the Qwen2.5-7B architecture (GQA 28:4, q/k/v biases, no q/k norm)."""
  config = ModelConfig(
      family="wedlm", vocab_size=152064, hidden_size=3584, num_layers=28, num_heads=28,
      num_kv_heads=4, head_dim=128, mlp_hidden_size=18944, rope_theta=1e6, norm_eps=1e-6,
      max_length=16384, mask_token_id=WEDLM_DEFAULT_MASK_ID, eos_token_id=151643,
      pad_token_id=151643, eot_token_id=151645, qkv_bias=True, positions_from_mask=True,
      topological_causal=True)
  return config.replace(**changes)


def llada_tiny(**changes: Any) -> ModelConfig:
  """A 2-layer LLaDA-layout model for tests (vocab 256, mask id 250)."""
  config = ModelConfig(
      family="llada", vocab_size=256, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=4,
      head_dim=16, mlp_hidden_size=160, rope_theta=500000.0, norm_eps=1e-5, max_length=128,
      mask_token_id=250, eos_token_id=251, pad_token_id=251, eot_token_id=252, bos_token_id=253)
  return config.replace(**changes)


def dream_tiny(**changes: Any) -> ModelConfig:
  """A 2-layer Dream-layout model for tests (GQA 4:2, q/k/v biases, shifted logits)."""
  config = ModelConfig(
      family="dream", vocab_size=320, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
      head_dim=16, mlp_hidden_size=176, rope_theta=1e6, norm_eps=1e-6, max_length=128,
      mask_token_id=300, eos_token_id=301, pad_token_id=301, eot_token_id=302, bos_token_id=301,
      qkv_bias=True, shift_logits=True, positions_from_mask=True)
  return config.replace(**changes)


def wedlm_tiny(**changes: Any) -> ModelConfig:
  """A 2-layer WeDLM-8B-layout model for tests (GQA 4:2, q/k norm, head_dim 16 != D / N)."""
  config = ModelConfig(
      family="wedlm", vocab_size=288, hidden_size=48, num_layers=2, num_heads=4, num_kv_heads=2,
      head_dim=16, mlp_hidden_size=128, rope_theta=1e6, norm_eps=1e-6, max_length=128,
      mask_token_id=280, eos_token_id=281, pad_token_id=281, eot_token_id=282, qk_norm=True,
      positions_from_mask=True, topological_causal=True)
  return config.replace(**changes)


def wedlm_7b_tiny(**changes: Any) -> ModelConfig:
  """A 2-layer WeDLM-7B-layout model for tests (GQA 4:2, q/k/v biases, no q/k norm)."""
  return wedlm_tiny(hidden_size=64, qkv_bias=True, qk_norm=False).replace(**changes)


def llada_sized(hidden_size: int, num_layers: int, vocab_size: int = 32000,
                **changes: Any) -> ModelConfig:
  """A LLaDA-layout model of a chosen size (benchmarks): head_dim 64, MLP 8/3 x width."""
  config = ModelConfig(
      family="llada", vocab_size=vocab_size, hidden_size=hidden_size, num_layers=num_layers,
      num_heads=hidden_size // 64, num_kv_heads=hidden_size // 64, head_dim=64,
      mlp_hidden_size=(8 * hidden_size // 3 + 63) // 64 * 64, rope_theta=500000.0, norm_eps=1e-5,
      max_length=4096, mask_token_id=vocab_size - 1, eos_token_id=vocab_size - 2,
      pad_token_id=vocab_size - 2, eot_token_id=vocab_size - 3)
  return config.replace(**changes)


PRESETS = {"llada_8b": llada_8b, "dream_7b": dream_7b, "wedlm_8b": wedlm_8b, "wedlm_7b": wedlm_7b,
           "llada_tiny": llada_tiny, "dream_tiny": dream_tiny, "wedlm_tiny": wedlm_tiny,
           "wedlm_7b_tiny": wedlm_7b_tiny}


# ----------------------------------------------------------------------------------------------
# Hugging Face config.json


def _require(fields: dict[str, Any], source: str, name: str) -> Any:
  if fields.get(name) is None:
    raise ValueError(f"{source}: required field {name!r} is missing")
  return fields[name]


def _expect(fields: dict[str, Any], source: str, name: str, allowed: tuple[Any, ...]) -> None:
  """Rejects a field whose value changes the architecture in a way this model does not build."""
  if name in fields and fields[name] not in allowed:
    raise ValueError(f"{source}: {name}={fields[name]!r} is not supported (expected one of "
                     f"{allowed})")


def _llada_from_hf(fields: dict[str, Any], source: str) -> ModelConfig:
  _expect(fields, source, "block_type", ("llama",))
  _expect(fields, source, "activation_type", ("silu", "swiglu"))
  _expect(fields, source, "layer_norm_type", ("rms",))
  _expect(fields, source, "layer_norm_with_affine", (True,))
  for flag in ("alibi", "weight_tying", "include_bias", "attention_layer_norm", "input_emb_norm",
               "scale_logits", "bias_for_layer_norm"):
    _expect(fields, source, flag, (False, None))
  _expect(fields, source, "rope", (True,))
  d_model = _require(fields, source, "d_model")
  n_heads = _require(fields, source, "n_heads")
  n_kv_heads = fields.get("n_kv_heads") or n_heads
  if d_model % n_heads:
    raise ValueError(f"{source}: d_model={d_model} is not divisible by n_heads={n_heads}")
  mlp_hidden = fields.get("mlp_hidden_size") or _require(fields, source, "mlp_ratio") * d_model
  vocab = fields.get("embedding_size") or _require(fields, source, "vocab_size")
  if vocab < _require(fields, source, "vocab_size"):
    raise ValueError(f"{source}: embedding_size={vocab} is smaller than vocab_size="
                     f"{fields['vocab_size']}")
  eos = _require(fields, source, "eos_token_id")
  return ModelConfig(
      family="llada", vocab_size=vocab, hidden_size=d_model,
      num_layers=_require(fields, source, "n_layers"), num_heads=n_heads, num_kv_heads=n_kv_heads,
      head_dim=d_model // n_heads, mlp_hidden_size=mlp_hidden,
      rope_theta=float(fields.get("rope_theta", 10000.0)),
      norm_eps=float(fields.get("rms_norm_eps", 1e-5)),
      max_length=_require(fields, source, "max_sequence_length"),
      mask_token_id=_require(fields, source, "mask_token_id"), eos_token_id=eos,
      pad_token_id=fields.get("pad_token_id", eos),
      # LLaDA's config.json names no BOS/EOT; the released tokenizer's ids apply to its vocabulary.
      eot_token_id=fields.get("eot_token_id", 126348 if vocab == 126464 else None),
      bos_token_id=fields.get("bos_token_id", 126080 if vocab == 126464 else None),
      qkv_bias=bool(fields.get("include_qkv_bias", False)))


def _dream_from_hf(fields: dict[str, Any], source: str) -> ModelConfig:
  _expect(fields, source, "hidden_act", ("silu",))
  _expect(fields, source, "tie_word_embeddings", (False,))
  _expect(fields, source, "rope_scaling", (None,))
  _expect(fields, source, "use_sliding_window", (False,))
  hidden = _require(fields, source, "hidden_size")
  n_heads = _require(fields, source, "num_attention_heads")
  if hidden % n_heads and not fields.get("head_dim"):
    raise ValueError(f"{source}: hidden_size={hidden} is not divisible by "
                     f"num_attention_heads={n_heads}")
  eos = _require(fields, source, "eos_token_id")
  vocab = _require(fields, source, "vocab_size")
  return ModelConfig(
      family="dream", vocab_size=vocab, hidden_size=hidden,
      num_layers=_require(fields, source, "num_hidden_layers"), num_heads=n_heads,
      num_kv_heads=fields.get("num_key_value_heads") or n_heads,
      head_dim=fields.get("head_dim") or hidden // n_heads,
      mlp_hidden_size=_require(fields, source, "intermediate_size"),
      rope_theta=float(fields.get("rope_theta", 10000.0)),
      norm_eps=float(fields.get("rms_norm_eps", 1e-6)),
      max_length=_require(fields, source, "max_position_embeddings"),
      mask_token_id=_require(fields, source, "mask_token_id"), eos_token_id=eos,
      pad_token_id=fields.get("pad_token_id", eos),
      eot_token_id=fields.get("eot_token_id", 151645 if vocab == 152064 else None),
      bos_token_id=fields.get("bos_token_id"), qkv_bias=True, shift_logits=True,
      positions_from_mask=True)


def _wedlm_from_hf(fields: dict[str, Any], source: str) -> ModelConfig:
  """WeDLM's `config.json` (model_type "wedlm"), or a Qwen3 one ("qwen3": always q/k norm, and
  no attention bias unless it says so). WeDLMConfig's own defaults are bias on, q/k norm off."""
  qwen3 = str(fields.get("model_type")).lower() == "qwen3"
  _expect(fields, source, "hidden_act", ("silu",))
  _expect(fields, source, "tie_word_embeddings", (False,))
  _expect(fields, source, "rope_scaling", (None,))
  _expect(fields, source, "use_sliding_window", (False,))
  _expect(fields, source, "qk_norm", (True,) if qwen3 else (True, False))
  _expect(fields, source, "attention_bias", (True, False))
  if any(t != "full_attention" for t in fields.get("layer_types") or []):
    raise ValueError(f"{source}: layer_types {sorted(set(fields['layer_types']))} are not "
                     "supported (only full_attention layers)")
  hidden = _require(fields, source, "hidden_size")
  n_heads = _require(fields, source, "num_attention_heads")
  n_kv_heads = fields.get("num_key_value_heads") or n_heads
  if hidden % n_heads and not fields.get("head_dim"):
    raise ValueError(f"{source}: hidden_size={hidden} is not divisible by "
                     f"num_attention_heads={n_heads} and no head_dim is given")
  vocab = _require(fields, source, "vocab_size")
  mask_id = fields.get("mask_token_id")
  if mask_id is None:
    if vocab <= WEDLM_DEFAULT_MASK_ID:
      raise ValueError(f"{source}: mask_token_id is null and the default {WEDLM_DEFAULT_MASK_ID} "
                       f"is outside the vocabulary of {vocab}; set mask_token_id in config.json")
    logging.warning("%s: mask_token_id is null; using %d, the id Tencent's WeDLM engine uses",
                    source, WEDLM_DEFAULT_MASK_ID)
    mask_id = WEDLM_DEFAULT_MASK_ID
  eos = _require(fields, source, "eos_token_id")
  if isinstance(eos, list):  # generation configs may list several; the first is EOS proper
    eos = eos[0]
  # Files saved by transformers >= 5 keep RoPE in "rope_parameters" (and no "rope_theta").
  rope = fields.get("rope_parameters") or {"rope_theta": fields.get("rope_theta", 10000.0)}
  if rope.get("rope_type", "default") != "default":
    raise ValueError(f"{source}: rope_parameters {rope} is not supported (only rope_type "
                     "'default')")
  return ModelConfig(
      family="wedlm", vocab_size=vocab, hidden_size=hidden,
      num_layers=_require(fields, source, "num_hidden_layers"), num_heads=n_heads,
      num_kv_heads=n_kv_heads, head_dim=fields.get("head_dim") or hidden // n_heads,
      mlp_hidden_size=_require(fields, source, "intermediate_size"),
      rope_theta=float(rope.get("rope_theta", fields.get("rope_theta", 10000.0))),
      norm_eps=float(fields.get("rms_norm_eps", 1e-6)),
      max_length=_require(fields, source, "max_position_embeddings"), mask_token_id=mask_id,
      eos_token_id=eos, pad_token_id=fields.get("pad_token_id", eos),
      eot_token_id=fields.get("eot_token_id", 151645 if vocab > 151645 else None),
      bos_token_id=fields.get("bos_token_id"),
      qkv_bias=bool(fields.get("attention_bias", not qwen3)),
      qk_norm=True if qwen3 else bool(fields.get("qk_norm", False)),
      positions_from_mask=True, topological_causal=True)


def from_hf_config(path: str | pathlib.Path, **changes: Any) -> ModelConfig:
  """Reads a LLaDA (OLMo-style fields), Dream (Qwen2-style) or WeDLM (Qwen3-style) `config.json`.

  `path` is the file or the checkpoint directory holding it; `changes` override fields (for
  example the dtype policy). Unknown model types and inconsistent fields raise ValueError.
  """
  path = pathlib.Path(path)
  if path.is_dir():
    path = path / "config.json"
  if not path.is_file():
    raise FileNotFoundError(f"no config.json at {path}")
  try:
    fields = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: not valid JSON ({e})") from e
  model_type = str(fields.get("model_type", "")).lower()
  if model_type == "llada":
    config = _llada_from_hf(fields, str(path))
  elif model_type == "dream":
    config = _dream_from_hf(fields, str(path))
  elif model_type in ("wedlm", "qwen3"):
    config = _wedlm_from_hf(fields, str(path))
  else:
    raise ValueError(f"{path}: unknown model_type {fields.get('model_type')!r}; "
                     "expected 'llada' (LLaDA), 'Dream' (Dream) or 'wedlm' / 'qwen3' (WeDLM)")
  return config.replace(**changes)


def to_hf_config(config: ModelConfig) -> dict[str, Any]:
  """The family's `config.json` fields for `config` (what `from_hf_config` reads back)."""
  torch_dtype = config.param_dtype
  if config.family == "llada":
    return {
        "model_type": "llada", "architectures": ["LLaDAModelLM"], "d_model": config.hidden_size,
        "n_heads": config.num_heads, "n_kv_heads": config.num_kv_heads,
        "n_layers": config.num_layers, "mlp_hidden_size": config.mlp_hidden_size,
        "vocab_size": config.vocab_size, "embedding_size": config.vocab_size,
        "rope_theta": config.rope_theta, "rms_norm_eps": config.norm_eps,
        "max_sequence_length": config.max_length, "mask_token_id": config.mask_token_id,
        "eos_token_id": config.eos_token_id, "pad_token_id": config.pad_token_id,
        "bos_token_id": config.bos_token_id, "eot_token_id": config.eot_token_id,
        "block_type": "llama", "activation_type": "silu", "layer_norm_type": "rms",
        "layer_norm_with_affine": True, "rope": True, "alibi": False, "weight_tying": False,
        "include_bias": False, "include_qkv_bias": config.qkv_bias,
        "attention_layer_norm": False, "input_emb_norm": False, "scale_logits": False,
        "torch_dtype": torch_dtype}
  if config.family == "wedlm":
    return {
        "model_type": "wedlm", "architectures": ["WeDLMForCausalLM"],
        "hidden_size": config.hidden_size, "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads, "num_hidden_layers": config.num_layers,
        "intermediate_size": config.mlp_hidden_size, "head_dim": config.head_dim,
        "vocab_size": config.vocab_size, "rope_theta": config.rope_theta,
        "rms_norm_eps": config.norm_eps, "max_position_embeddings": config.max_length,
        "mask_token_id": config.mask_token_id, "eos_token_id": config.eos_token_id,
        "pad_token_id": config.pad_token_id, "bos_token_id": config.bos_token_id,
        "eot_token_id": config.eot_token_id, "attention_bias": config.qkv_bias,
        "qk_norm": config.qk_norm, "hidden_act": "silu", "tie_word_embeddings": False,
        "rope_scaling": None, "use_sliding_window": False, "torch_dtype": torch_dtype}
  return {
      "model_type": "Dream", "architectures": ["DreamModel"], "hidden_size": config.hidden_size,
      "num_attention_heads": config.num_heads, "num_key_value_heads": config.num_kv_heads,
      "num_hidden_layers": config.num_layers, "intermediate_size": config.mlp_hidden_size,
      "head_dim": config.head_dim, "vocab_size": config.vocab_size,
      "rope_theta": config.rope_theta, "rms_norm_eps": config.norm_eps,
      "max_position_embeddings": config.max_length, "mask_token_id": config.mask_token_id,
      "eos_token_id": config.eos_token_id, "pad_token_id": config.pad_token_id,
      "bos_token_id": config.bos_token_id, "eot_token_id": config.eot_token_id,
      "hidden_act": "silu", "tie_word_embeddings": False,
      "rope_scaling": None, "use_sliding_window": False, "torch_dtype": torch_dtype}
