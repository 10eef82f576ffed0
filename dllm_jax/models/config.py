"""Model configuration: one frozen dataclass for every family, presets, HF config parsing.

The families share one transformer; they differ in dimensions, biases, RoPE theta, norm epsilon,
how positions are counted under padding, Dream's one-position logit shift, WeDLM's per-head
q/k RMSNorm and causal attention in topological order (observed tokens first, masks after), and
the block diffusion models' block-causal attention (LLaDA2.x, SDAR); LLaDA2.x also has partial
RoPE and mixture-of-experts feed-forward layers after its first dense ones.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

import jax.numpy as jnp
from absl import logging

FAMILIES = ("llada", "dream", "wedlm", "llada2_moe", "sdar")
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
  # Block diffusion (LLaDA2.x, SDAR): attention is bidirectional inside blocks of this many
  # positions (counted from the first real token) and causal across them; 0 = off. Decoding
  # uses the same block length.
  attention_block: int = 0
  rotary_dim: int | None = None  # RoPE on the first `rotary_dim` dims of each head (None: all)
  out_bias: bool = False  # LLaDA2 `use_bias`: a bias on the attention output projection
  # Mixture of experts (LLaDA2.x; see moe.py): layers from `dense_layers` on are MoE.
  num_experts: int = 0
  experts_per_token: int = 0
  num_shared_experts: int = 0
  expert_hidden_size: int = 0
  dense_layers: int = 0
  expert_groups: int = 1
  groups_per_token: int = 1
  routed_scaling: float = 1.0
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
    if self.attention_block < 0:
      raise ValueError(f"attention_block must be >= 0, got {self.attention_block}")
    if self.attention_block and (self.topological_causal or self.shift_logits):
      raise ValueError("attention_block (block-causal attention) cannot be combined with "
                       "topological_causal or shift_logits")
    if self.rotary_dim is not None and not (0 < self.rotary_dim <= self.head_dim
                                            and self.rotary_dim % 2 == 0):
      raise ValueError(f"rotary_dim must be even and in (0, head_dim={self.head_dim}], got "
                       f"{self.rotary_dim}")
    if self.num_experts:
      E, k, groups = self.num_experts, self.experts_per_token, self.expert_groups
      if not 1 <= k <= E or self.expert_hidden_size < 1:
        raise ValueError(f"a MoE config needs 1 <= experts_per_token ({k}) <= num_experts ({E}) "
                         f"and expert_hidden_size >= 1 ({self.expert_hidden_size})")
      if groups < 1 or E % groups or E // groups < 2:
        raise ValueError(f"num_experts ({E}) must split into expert_groups ({groups}) of at "
                         "least 2 experts each")
      if not 1 <= self.groups_per_token <= groups or self.groups_per_token * (E // groups) < k:
        raise ValueError(f"groups_per_token ({self.groups_per_token}) must be in [1, "
                         f"{groups}] and its groups must hold >= experts_per_token ({k}) experts")
      if not 0 <= self.dense_layers <= self.num_layers:
        raise ValueError(f"dense_layers must be in [0, num_layers], got {self.dense_layers}")
    if self.topological_causal and self.shift_logits:
      raise ValueError("topological_causal (WeDLM) predicts each masked slot in place; it cannot "
                       "be combined with shift_logits")

  def is_moe_layer(self, layer: int) -> bool:
    return self.num_experts > 0 and layer >= self.dense_layers

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


def llada2_mini(**changes: Any) -> ModelConfig:
  """LLaDA2.0-mini / LLaDA2.1-mini (16B total, 1.4B active), from the released config.json."""
  config = ModelConfig(
      family="llada2_moe", vocab_size=157184, hidden_size=2048, num_layers=20, num_heads=16,
      num_kv_heads=4, head_dim=128, mlp_hidden_size=5120, rope_theta=600000.0, norm_eps=1e-6,
      max_length=32768, mask_token_id=156895, eos_token_id=156892, pad_token_id=156892,
      qk_norm=True, positions_from_mask=True, attention_block=32, rotary_dim=64,
      num_experts=256, experts_per_token=8, num_shared_experts=1, expert_hidden_size=512,
      dense_layers=1, expert_groups=8, groups_per_token=4, routed_scaling=2.5)
  return config.replace(**changes)


def llada2_flash(**changes: Any) -> ModelConfig:
  """LLaDA2.0-flash / LLaDA2.1-flash (100B total, 6.1B active): 32 layers of width 4096, 256
  experts of width 1024 (from the model card and deployment reports); heads 32:4 and the dense
  layer's width 9216 are the Ling-flash-2.0 base model's (not read from a released LLaDA2 file)."""
  return llada2_mini(hidden_size=4096, num_layers=32, num_heads=32, num_kv_heads=4,
                     mlp_hidden_size=9216, expert_hidden_size=1024).replace(**changes)


def llada2_tiny(**changes: Any) -> ModelConfig:
  """A 2-layer LLaDA2-layout model for tests: layer 0 dense, layer 1 MoE with 8 experts in 4
  groups (2 kept per token, top-2), one shared expert, partial RoPE, q/k norm, block 4."""
  config = ModelConfig(
      family="llada2_moe", vocab_size=160, hidden_size=32, num_layers=2, num_heads=4,
      num_kv_heads=2, head_dim=16, mlp_hidden_size=64, rope_theta=600000.0, norm_eps=1e-6,
      max_length=128, mask_token_id=150, eos_token_id=151, pad_token_id=151, qk_norm=True,
      positions_from_mask=True, attention_block=4, rotary_dim=8, num_experts=8,
      experts_per_token=2, num_shared_experts=1, expert_hidden_size=16, dense_layers=1,
      expert_groups=4, groups_per_token=2, routed_scaling=2.5)
  return config.replace(**changes)


def sdar_tiny(**changes: Any) -> ModelConfig:
  """A 2-layer SDAR-layout model for tests (Qwen3: GQA 4:2, q/k norm; block-causal, block 4)."""
  config = ModelConfig(
      family="sdar", vocab_size=176, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2,
      head_dim=16, mlp_hidden_size=64, rope_theta=1e6, norm_eps=1e-6, max_length=128,
      mask_token_id=170, eos_token_id=171, pad_token_id=171, qk_norm=True,
      positions_from_mask=True, attention_block=4)
  return config.replace(**changes)


PRESETS = {"llada_8b": llada_8b, "dream_7b": dream_7b, "wedlm_8b": wedlm_8b, "wedlm_7b": wedlm_7b,
           "llada_tiny": llada_tiny, "dream_tiny": dream_tiny, "wedlm_tiny": wedlm_tiny,
           "wedlm_7b_tiny": wedlm_7b_tiny, "llada2_mini": llada2_mini,
           "llada2_flash": llada2_flash, "llada2_tiny": llada2_tiny, "sdar_tiny": sdar_tiny}


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


# Every field of a released LLaDA2.x config.json (and LLaDA2MoeConfig's own) this reader knows:
# the architecture fields it reads or checks, and ones that do not change the forward pass.
_LLADA2_KNOWN = {
    "model_type", "architectures", "auto_map", "vocab_size", "hidden_size", "intermediate_size",
    "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim", "hidden_act",
    "use_qkv_bias", "use_qk_norm", "use_bias", "rms_norm_eps", "norm_head", "tie_word_embeddings",
    "embedding_dropout", "attention_dropout", "output_dropout", "initializer_range",
    "max_position_embeddings", "rope_theta", "rope_scaling", "rope_parameters", "use_cache",
    "use_sliding_window", "sliding_window", "max_window_layers", "pad_token_id", "eos_token_id",
    "bos_token_id", "mask_token_id", "num_experts", "num_shared_experts", "num_experts_per_tok",
    "n_group", "topk_group", "routed_scaling_factor", "moe_intermediate_size",
    "first_k_dense_replace", "output_router_logits", "partial_rotary_factor", "norm_topk_prob",
    "score_function", "moe_router_enable_expert_bias", "router_dtype", "torch_dtype", "dtype",
    "transformers_version", "num_nextn_predict_layers", "mtp_loss_scaling_factor",
    "using_split_qkv_in_self_attention", "rotary_dim", "moe_shared_expert_intermediate_size",
    "block_size", "attention_block"}
# LLaDA2.x's token ids (the released tokenizer): mask and EOS, which its config.json omits.
LLADA2_MASK_ID, LLADA2_EOS_ID = 156895, 156892


def _llada2_from_hf(fields: dict[str, Any], source: str) -> ModelConfig:
  unknown = sorted(set(fields) - _LLADA2_KNOWN)
  if unknown:
    raise ValueError(f"{source}: unknown llada2_moe config fields {unknown}; they may change the "
                     "architecture, so this reader refuses them (remove them if they do not)")
  _expect(fields, source, "hidden_act", ("silu",))
  _expect(fields, source, "tie_word_embeddings", (False,))
  _expect(fields, source, "rope_scaling", (None,))
  _expect(fields, source, "use_sliding_window", (False,))
  _expect(fields, source, "norm_head", (False,))
  _expect(fields, source, "use_qk_norm", (True,))
  _expect(fields, source, "score_function", ("sigmoid",))
  _expect(fields, source, "norm_topk_prob", (True,))
  _expect(fields, source, "router_dtype", ("fp32", "float32", None))
  _expect(fields, source, "moe_router_enable_expert_bias", (True,))
  _expect(fields, source, "using_split_qkv_in_self_attention", (False, None))
  _expect(fields, source, "num_nextn_predict_layers", (0, None))
  if fields.get("rope_parameters") and fields["rope_parameters"].get("rope_type",
                                                                      "default") != "default":
    raise ValueError(f"{source}: rope_parameters {fields['rope_parameters']} is not supported "
                     "(only rope_type 'default')")
  hidden = _require(fields, source, "hidden_size")
  n_heads = _require(fields, source, "num_attention_heads")
  head_dim = fields.get("head_dim") or hidden // n_heads
  experts = _require(fields, source, "num_experts")
  shared = fields.get("num_shared_experts")
  if not shared:
    raise ValueError(f"{source}: num_shared_experts={shared!r} is not supported (LLaDA2 has 1; "
                     "the official code builds a shared expert whenever it is not null)")
  rope = fields.get("rope_parameters") or {}
  factor = float(rope.get("partial_rotary_factor", fields.get("partial_rotary_factor", 0.5)))
  vocab = _require(fields, source, "vocab_size")
  eos = fields.get("eos_token_id", LLADA2_EOS_ID if vocab > LLADA2_MASK_ID else None)
  if isinstance(eos, list):
    eos = eos[0]
  mask_id = fields.get("mask_token_id", LLADA2_MASK_ID if vocab > LLADA2_MASK_ID else None)
  if eos is None or mask_id is None:
    raise ValueError(f"{source}: set mask_token_id and eos_token_id (the released vocabulary's "
                     f"{LLADA2_MASK_ID} / {LLADA2_EOS_ID} do not fit vocab_size={vocab})")
  return ModelConfig(
      family="llada2_moe", vocab_size=vocab, hidden_size=hidden,
      num_layers=_require(fields, source, "num_hidden_layers"), num_heads=n_heads,
      num_kv_heads=fields.get("num_key_value_heads") or n_heads, head_dim=head_dim,
      mlp_hidden_size=_require(fields, source, "intermediate_size"),
      rope_theta=float(rope.get("rope_theta", fields.get("rope_theta", 10000.0))),
      norm_eps=float(fields.get("rms_norm_eps", 1e-5)),
      max_length=_require(fields, source, "max_position_embeddings"), mask_token_id=mask_id,
      eos_token_id=eos, pad_token_id=fields.get("pad_token_id", eos),
      qkv_bias=bool(fields.get("use_qkv_bias", False)),
      out_bias=bool(fields.get("use_bias", True)),  # LLaDA2MoeConfig's default is True
      qk_norm=True, positions_from_mask=True,
      attention_block=int(fields.get("attention_block") or 32),
      rotary_dim=int(head_dim * factor), num_experts=experts,
      experts_per_token=_require(fields, source, "num_experts_per_tok"),
      num_shared_experts=shared,
      expert_hidden_size=_require(fields, source, "moe_intermediate_size"),
      dense_layers=int(fields.get("first_k_dense_replace", 0)),
      expert_groups=int(fields.get("n_group") or 1),
      groups_per_token=int(fields.get("topk_group") or 1),
      routed_scaling=float(fields.get("routed_scaling_factor", 1.0)))


def _sdar_from_hf(fields: dict[str, Any], source: str) -> ModelConfig:
  """SDAR's config.json (Qwen3 layout plus `block_size` and `mask_token_id`)."""
  for name in ("num_experts", "num_experts_per_tok"):
    if fields.get(name):
      raise ValueError(f"{source}: {name}={fields[name]} (SDAR MoE) is not supported; only the "
                       "dense SDAR models are")
  base = _wedlm_from_hf({**fields, "model_type": "qwen3"}, source)
  block = _require(fields, source, "block_size")
  return base.replace(family="sdar", topological_causal=False, attention_block=int(block))


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
  elif model_type == "llada2_moe":
    config = _llada2_from_hf(fields, str(path))
  elif model_type == "sdar":
    config = _sdar_from_hf(fields, str(path))
  else:
    raise ValueError(f"{path}: unknown model_type {fields.get('model_type')!r}; "
                     "expected 'llada' (LLaDA), 'Dream' (Dream), 'wedlm' / 'qwen3' (WeDLM), "
                     "'llada2_moe' (LLaDA2.x) or 'sdar' (SDAR)")
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
  if config.family == "llada2_moe":
    return {
        "model_type": "llada2_moe", "architectures": ["LLaDA2MoeModelLM"],
        "vocab_size": config.vocab_size, "hidden_size": config.hidden_size,
        "intermediate_size": config.mlp_hidden_size, "num_hidden_layers": config.num_layers,
        "num_attention_heads": config.num_heads, "num_key_value_heads": config.num_kv_heads,
        "head_dim": config.head_dim, "hidden_act": "silu", "use_qkv_bias": config.qkv_bias,
        "use_qk_norm": True, "use_bias": config.out_bias, "rms_norm_eps": config.norm_eps,
        "norm_head": False, "tie_word_embeddings": False,
        "max_position_embeddings": config.max_length, "rope_theta": config.rope_theta,
        "rope_scaling": None, "partial_rotary_factor": (config.rotary_dim or config.head_dim)
        / config.head_dim, "pad_token_id": config.pad_token_id,
        "eos_token_id": config.eos_token_id, "mask_token_id": config.mask_token_id,
        "num_experts": config.num_experts, "num_shared_experts": config.num_shared_experts,
        "num_experts_per_tok": config.experts_per_token, "n_group": config.expert_groups,
        "topk_group": config.groups_per_token, "routed_scaling_factor": config.routed_scaling,
        "moe_intermediate_size": config.expert_hidden_size,
        "first_k_dense_replace": config.dense_layers, "norm_topk_prob": True,
        "score_function": "sigmoid", "attention_block": config.attention_block,
        "torch_dtype": torch_dtype}
  if config.family == "sdar":
    return {
        "model_type": "sdar", "architectures": ["SDARForCausalLM"],
        "hidden_size": config.hidden_size, "num_attention_heads": config.num_heads,
        "num_key_value_heads": config.num_kv_heads, "num_hidden_layers": config.num_layers,
        "intermediate_size": config.mlp_hidden_size, "head_dim": config.head_dim,
        "vocab_size": config.vocab_size, "rope_theta": config.rope_theta,
        "rms_norm_eps": config.norm_eps, "max_position_embeddings": config.max_length,
        "mask_token_id": config.mask_token_id, "eos_token_id": config.eos_token_id,
        "pad_token_id": config.pad_token_id, "bos_token_id": config.bos_token_id,
        "attention_bias": config.qkv_bias, "block_size": config.attention_block,
        "hidden_act": "silu", "tie_word_embeddings": False, "rope_scaling": None,
        "use_sliding_window": False, "torch_dtype": torch_dtype}
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
