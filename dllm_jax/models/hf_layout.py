"""Hugging Face checkpoint key layouts of LLaDA, Dream and WeDLM: each tensor mapped to a param.

One table per family: HF key pattern -> parameter path in `init_params(config)` + transform.
PyTorch stores `Linear` weights as [out, in]; the JAX kernels are [in, out], hence "transpose".
`{i}` stands for the layer index.
"""

from __future__ import annotations

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

TABLES = {"llada": _LLADA, "dream": _DREAM, "wedlm": _WEDLM}


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


def key_map(config: ModelConfig) -> dict[str, tuple[Path, str]]:
  """Every HF key a checkpoint of `config` must hold -> (parameter path, transform)."""
  return {key: (path, transform) for key, path, transform in _expand(config)}


def hf_shape(param_shape: tuple[int, ...], transform: str) -> tuple[int, ...]:
  return tuple(reversed(param_shape)) if transform == "transpose" else tuple(param_shape)


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
