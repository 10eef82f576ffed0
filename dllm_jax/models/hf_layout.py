"""Hugging Face checkpoint key layouts of every family: each tensor mapped to parameter(s).

One table per family: HF key pattern -> parameter path in `init_params(config)` + transform.
PyTorch stores `Linear` weights as [out, in]; the JAX kernels are [in, out], hence "transpose".
`{i}` stands for the layer index.

LLaDA2.x (`_llada2_entries`) adds two many-to-one relations: expert `e`'s weight is slice `e`
of a stacked [E, ...] parameter (`Entry.expert`), and the fused `query_key_value` projection is
split into the q/k/v kernels (transform "qkv_kernel" / "qkv_bias", rows ordered q, k, v).
`hf_tensors` writes a tree back, `HFAssembler` builds parameters from HF tensors.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Iterator

import numpy as np

from dllm_jax.models.config import ModelConfig

Path = tuple[Any, ...]  # e.g. ("layers", 3, "attn", "q_proj", "kernel")

_LLADA = (
    ("model.transformer.wte.weight", "embed.embedding", "identity"),
    ("model.transformer.blocks.{i}.attn_norm.weight", "layers.{i}.attn_norm.scale", "identity"),
    ("model.transformer.blocks.{i}.q_proj.weight", "layers.{i}.attn.q_proj.kernel", "transpose"),
    ("model.transformer.blocks.{i}.k_proj.weight", "layers.{i}.attn.k_proj.kernel", "transpose"),
    ("model.transformer.blocks.{i}.v_proj.weight", "layers.{i}.attn.v_proj.kernel", "transpose"),
    ("model.transformer.blocks.{i}.q_proj.bias", "layers.{i}.attn.q_proj.bias", "identity"),
    ("model.transformer.blocks.{i}.k_proj.bias", "layers.{i}.attn.k_proj.bias", "identity"),
    ("model.transformer.blocks.{i}.v_proj.bias", "layers.{i}.attn.v_proj.bias", "identity"),
    ("model.transformer.blocks.{i}.attn_out.weight", "layers.{i}.attn.o_proj.kernel", "transpose"),
    ("model.transformer.blocks.{i}.ff_norm.weight", "layers.{i}.mlp_norm.scale", "identity"),
    ("model.transformer.blocks.{i}.ff_proj.weight", "layers.{i}.mlp.gate_proj.kernel", "transpose"),
    ("model.transformer.blocks.{i}.up_proj.weight", "layers.{i}.mlp.up_proj.kernel", "transpose"),
    ("model.transformer.blocks.{i}.ff_out.weight", "layers.{i}.mlp.down_proj.kernel", "transpose"),
    ("model.transformer.ln_f.weight", "final_norm.scale", "identity"),
    ("model.transformer.ff_out.weight", "lm_head.kernel", "transpose"),
)

_DREAM = (
    ("model.embed_tokens.weight", "embed.embedding", "identity"),
    ("model.layers.{i}.input_layernorm.weight", "layers.{i}.attn_norm.scale", "identity"),
    ("model.layers.{i}.self_attn.q_proj.weight", "layers.{i}.attn.q_proj.kernel", "transpose"),
    ("model.layers.{i}.self_attn.k_proj.weight", "layers.{i}.attn.k_proj.kernel", "transpose"),
    ("model.layers.{i}.self_attn.v_proj.weight", "layers.{i}.attn.v_proj.kernel", "transpose"),
    ("model.layers.{i}.self_attn.q_proj.bias", "layers.{i}.attn.q_proj.bias", "identity"),
    ("model.layers.{i}.self_attn.k_proj.bias", "layers.{i}.attn.k_proj.bias", "identity"),
    ("model.layers.{i}.self_attn.v_proj.bias", "layers.{i}.attn.v_proj.bias", "identity"),
    ("model.layers.{i}.self_attn.o_proj.weight", "layers.{i}.attn.o_proj.kernel", "transpose"),
    ("model.layers.{i}.post_attention_layernorm.weight", "layers.{i}.mlp_norm.scale", "identity"),
    ("model.layers.{i}.mlp.gate_proj.weight", "layers.{i}.mlp.gate_proj.kernel", "transpose"),
    ("model.layers.{i}.mlp.up_proj.weight", "layers.{i}.mlp.up_proj.kernel", "transpose"),
    ("model.layers.{i}.mlp.down_proj.weight", "layers.{i}.mlp.down_proj.kernel", "transpose"),
    ("model.norm.weight", "final_norm.scale", "identity"),
    ("lm_head.weight", "lm_head.kernel", "transpose"),
)

# WeDLM: the Qwen3 layout (WeDLM-8B: per-head q/k norms, no biases) or Qwen2.5 (WeDLM-7B: q/k/v
# biases, no q/k norms); the keys are Dream's plus the two norms.
_WEDLM = _DREAM + (
    ("model.layers.{i}.self_attn.q_norm.weight", "layers.{i}.attn.q_norm.scale", "identity"),
    ("model.layers.{i}.self_attn.k_norm.weight", "layers.{i}.attn.k_norm.scale", "identity"),
)

TABLES = {"llada": _LLADA, "dream": _DREAM, "wedlm": _WEDLM, "sdar": _WEDLM}


@dataclasses.dataclass(frozen=True)
class Entry:
  """One HF tensor: the parameter it fills (for "qkv_*": the attention module), how, and for a
  stacked expert parameter the expert's slot."""

  path: Path
  transform: str  # "identity" | "transpose" | "qkv_kernel" | "qkv_bias"
  expert: int | None = None


def _llada2_entries(config: ModelConfig) -> Iterator[tuple[str, Entry]]:
  """LLaDA2.x's keys (`LLaDA2MoeModelLM` in inclusionAI's modeling_llada2_moe.py)."""
  yield "model.word_embeddings.weight", Entry(("embed", "embedding"), "identity")
  for i in range(config.num_layers):
    p, a = f"model.layers.{i}.", ("layers", i)
    yield p + "input_layernorm.weight", Entry(a + ("attn_norm", "scale"), "identity")
    yield p + "attention.query_key_value.weight", Entry(a + ("attn",), "qkv_kernel")
    if config.qkv_bias:
      yield p + "attention.query_key_value.bias", Entry(a + ("attn",), "qkv_bias")
    yield p + "attention.query_layernorm.weight", Entry(a + ("attn", "q_norm", "scale"), "identity")
    yield p + "attention.key_layernorm.weight", Entry(a + ("attn", "k_norm", "scale"), "identity")
    yield p + "attention.dense.weight", Entry(a + ("attn", "o_proj", "kernel"), "transpose")
    if config.out_bias:
      yield p + "attention.dense.bias", Entry(a + ("attn", "o_proj", "bias"), "identity")
    yield p + "post_attention_layernorm.weight", Entry(a + ("mlp_norm", "scale"), "identity")
    if not config.is_moe_layer(i):
      for name in ("gate_proj", "up_proj", "down_proj"):
        yield p + f"mlp.{name}.weight", Entry(a + ("mlp", name, "kernel"), "transpose")
      continue
    yield p + "mlp.gate.weight", Entry(a + ("mlp", "router"), "transpose")
    yield p + "mlp.gate.expert_bias", Entry(a + ("mlp", "expert_bias"), "identity")
    for e in range(config.num_experts):
      for name, stacked in (("gate_proj", "gate_kernel"), ("up_proj", "up_kernel"),
                            ("down_proj", "down_kernel")):
        yield (p + f"mlp.experts.{e}.{name}.weight",
               Entry(a + ("mlp", stacked), "transpose", expert=e))
    if config.num_shared_experts:
      for name in ("gate_proj", "up_proj", "down_proj"):
        yield (p + f"mlp.shared_experts.{name}.weight",
               Entry(a + ("mlp", "shared", name, "kernel"), "transpose"))
  yield "model.norm.weight", Entry(("final_norm", "scale"), "identity")
  yield "lm_head.weight", Entry(("lm_head", "kernel"), "transpose")


def _parse_path(template: str, layer: int | None) -> Path:
  parts = template.format(i=layer).split(".")
  return tuple(int(p) if p.isdigit() else p for p in parts)


def _expand(config: ModelConfig) -> Iterator[tuple[str, Path, str]]:
  for hf_pattern, path_pattern, transform in TABLES[config.family]:
    if hf_pattern.endswith(".bias") and not config.qkv_bias:
      continue
    if hf_pattern.endswith("_norm.weight") and ".self_attn." in hf_pattern and not config.qk_norm:
      continue
    layers = range(config.num_layers) if "{i}" in hf_pattern else [None]
    for i in layers:
      yield hf_pattern.format(i=i), _parse_path(path_pattern, i), transform


def key_map(config: ModelConfig) -> dict[str, Entry]:
  """Every HF key a checkpoint of `config` must hold -> its `Entry`."""
  if config.family == "llada2_moe":
    return dict(_llada2_entries(config))
  return {key: Entry(path, transform) for key, path, transform in _expand(config)}


def _qkv_parts(entry: Entry) -> tuple[Path, Path, Path]:
  leaf = "kernel" if entry.transform == "qkv_kernel" else "bias"
  return tuple(entry.path + (name, leaf) for name in ("q_proj", "k_proj", "v_proj"))


def expected_shape(entry: Entry, params: Any) -> tuple[int, ...]:
  """The HF tensor's shape for `entry`, given the (abstract) parameter tree."""
  if entry.transform.startswith("qkv"):
    shapes = [get_path(params, path).shape for path in _qkv_parts(entry)]
    rows = sum(shape[-1] for shape in shapes)
    return (rows, shapes[0][0]) if entry.transform == "qkv_kernel" else (rows,)
  shape = tuple(get_path(params, entry.path).shape)
  if entry.expert is not None:
    shape = shape[1:]
  return hf_shape(shape, entry.transform)


def hf_shape(param_shape: tuple[int, ...], transform: str) -> tuple[int, ...]:
  return tuple(reversed(param_shape)) if transform == "transpose" else tuple(param_shape)


def hf_tensors(params: Any, config: ModelConfig) -> Iterator[tuple[str, np.ndarray]]:
  """(HF key, array) for every tensor of the family's checkpoint layout, one at a time (a stacked
  expert parameter is fetched once and sliced)."""
  stacked_path, stacked = None, None
  for key, entry in key_map(config).items():
    if entry.transform.startswith("qkv"):
      parts = [np.asarray(get_path(params, path)) for path in _qkv_parts(entry)]
      yield key, np.concatenate([to_hf(part, "transpose") for part in parts], axis=0)
    elif entry.expert is not None:
      if entry.path != stacked_path:
        stacked_path, stacked = entry.path, np.asarray(get_path(params, entry.path))
      yield key, to_hf(stacked[entry.expert], entry.transform)
    else:
      yield key, to_hf(np.asarray(get_path(params, entry.path)), entry.transform)


class HFAssembler:
  """Builds parameters from HF tensors fed in any order: `add(key, array)` (the array as stored,
  [out, in] for linears) returns the (path, array) pairs it completes."""

  def __init__(self, config: ModelConfig):
    self.entries = key_map(config)
    self.num_experts = config.num_experts
    self.q_rows = config.num_heads * config.head_dim
    self.kv_rows = config.num_kv_heads * config.head_dim
    self._stacks: dict[Path, tuple[np.ndarray, set[int]]] = {}

  def add(self, key: str, array: np.ndarray) -> list[tuple[Path, np.ndarray]]:
    entry = self.entries[key]
    if entry.transform.startswith("qkv"):
      return [(path, to_hf(part, "transpose")) for path, part in
              zip(_qkv_parts(entry), self._split_qkv(entry, array))]
    value = to_hf(array, entry.transform)
    if entry.expert is None:
      return [(entry.path, value)]
    stack, seen = self._stacks.setdefault(
        entry.path, (np.empty((self.num_experts,) + value.shape, value.dtype), set()))
    stack[entry.expert] = value
    seen.add(entry.expert)
    if len(seen) < self.num_experts:
      return []
    del self._stacks[entry.path]
    return [(entry.path, stack)]

  def _split_qkv(self, entry: Entry, array: np.ndarray) -> list[np.ndarray]:
    """Rows [q (N H) | k (K H) | v (K H)] (shape checked beforehand by the caller)."""
    del entry
    return np.split(array, [self.q_rows, self.q_rows + self.kv_rows], axis=0)


def to_hf(array: np.ndarray, transform: str) -> np.ndarray:
  return np.ascontiguousarray(array.T) if transform == "transpose" else array


def layer_of(key: str) -> int | None:
  match = re.search(r"\.(?:blocks|layers)\.(\d+)\.", key)
  return int(match.group(1)) if match else None


def get_path(tree: dict[Any, Any], path: Path) -> Any:
  for part in path:
    tree = tree[part]
  return tree


def set_path(tree: dict[Any, Any], path: Path, value: Any) -> None:
  for part in path[:-1]:
    tree = tree.setdefault(part, {})
  tree[path[-1]] = value
