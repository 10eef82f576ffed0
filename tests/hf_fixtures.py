"""Tiny random Hugging Face checkpoints in the exact LLaDA / Dream / WeDLM key layouts (numpy only).

The key names below are written out from the published checkpoints (DESIGN.md §4), independently
of the library's own mapping table, so a wrong entry in that table fails the tests that use them.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
from safetensors.numpy import save_file

LLADA_BLOCK = {  # suffix -> which weight (shape decided by `_shape`)
    "attn_norm.weight": "norm", "q_proj.weight": "q", "k_proj.weight": "kv",
    "v_proj.weight": "kv", "attn_out.weight": "o", "ff_norm.weight": "norm",
    "ff_proj.weight": "up", "up_proj.weight": "up", "ff_out.weight": "down",
}
DREAM_BLOCK = {
    "input_layernorm.weight": "norm", "self_attn.q_proj.weight": "q",
    "self_attn.q_proj.bias": "q_bias", "self_attn.k_proj.weight": "kv",
    "self_attn.k_proj.bias": "kv_bias", "self_attn.v_proj.weight": "kv",
    "self_attn.v_proj.bias": "kv_bias", "self_attn.o_proj.weight": "o",
    "post_attention_layernorm.weight": "norm", "mlp.gate_proj.weight": "up",
    "mlp.up_proj.weight": "up", "mlp.down_proj.weight": "down",
}
# WeDLM-8B (Qwen3): per-head q/k norms [head_dim], no attention biases.
WEDLM_8B_BLOCK = {
    "input_layernorm.weight": "norm", "self_attn.q_proj.weight": "q",
    "self_attn.k_proj.weight": "kv", "self_attn.v_proj.weight": "kv",
    "self_attn.o_proj.weight": "o", "self_attn.q_norm.weight": "head_norm",
    "self_attn.k_norm.weight": "head_norm", "post_attention_layernorm.weight": "norm",
    "mlp.gate_proj.weight": "up", "mlp.up_proj.weight": "up", "mlp.down_proj.weight": "down",
}
# WeDLM-7B (Qwen2.5): q/k/v biases, no q/k norms.
WEDLM_7B_BLOCK = {
    "input_layernorm.weight": "norm", "self_attn.q_proj.weight": "q",
    "self_attn.q_proj.bias": "q_bias", "self_attn.k_proj.weight": "kv",
    "self_attn.k_proj.bias": "kv_bias", "self_attn.v_proj.weight": "kv",
    "self_attn.v_proj.bias": "kv_bias", "self_attn.o_proj.weight": "o",
    "post_attention_layernorm.weight": "norm", "mlp.gate_proj.weight": "up",
    "mlp.up_proj.weight": "up", "mlp.down_proj.weight": "down",
}


def llada_hf_config(*, d_model=64, n_layers=2, n_heads=4, n_kv_heads=4, mlp_hidden=160,
                    vocab=256, mask_id=250, eos_id=251, max_len=128) -> dict:
  """A config.json with the fields of the released LLaDA-8B-Instruct file, scaled down."""
  return {
      "activation_type": "silu", "alibi": False, "alibi_bias_max": 8.0,
      "architectures": ["LLaDAModelLM"], "attention_dropout": 0.0, "attention_layer_norm": False,
      "attention_layer_norm_with_affine": True, "bias_for_layer_norm": False,
      "block_group_size": 1, "block_type": "llama", "d_model": d_model, "embedding_dropout": 0.0,
      "embedding_size": vocab, "eos_token_id": eos_id, "flash_attention": False,
      "include_bias": False, "include_qkv_bias": False, "init_device": "meta",
      "init_fn": "mitchell", "init_std": 0.02, "input_emb_norm": False, "layer_norm_type": "rms",
      "layer_norm_with_affine": True, "mask_token_id": mask_id, "max_sequence_length": max_len,
      "mlp_hidden_size": mlp_hidden, "mlp_ratio": 4, "model_type": "llada",
      "multi_query_attention": None, "n_heads": n_heads, "n_kv_heads": n_kv_heads,
      "n_layers": n_layers, "pad_token_id": eos_id, "precision": "amp_bf16",
      "residual_dropout": 0.0, "rms_norm_eps": 1e-05, "rope": True, "rope_full_precision": True,
      "rope_theta": 500000.0, "scale_logits": False, "use_cache": False, "vocab_size": vocab,
      "weight_tying": False,
  }


def dream_hf_config(*, hidden=64, layers=2, heads=4, kv_heads=2, intermediate=176, vocab=320,
                    mask_id=300, eos_id=301, max_len=128) -> dict:
  """A config.json with the fields of the released Dream-v0-Instruct-7B file, scaled down."""
  return {
      "architectures": ["DreamModel"], "attention_dropout": 0.0, "bos_token_id": eos_id,
      "eos_token_id": eos_id, "hidden_act": "silu", "hidden_size": hidden,
      "initializer_range": 0.02, "intermediate_size": intermediate, "mask_token_id": mask_id,
      "max_position_embeddings": max_len, "max_window_layers": layers, "model_type": "Dream",
      "num_attention_heads": heads, "num_hidden_layers": layers, "num_key_value_heads": kv_heads,
      "pad_token_id": eos_id, "rms_norm_eps": 1e-06, "rope_scaling": None,
      "rope_theta": 1000000.0, "sliding_window": None, "tie_word_embeddings": False,
      "torch_dtype": "float32", "use_cache": False, "use_sliding_window": False,
      "vocab_size": vocab,
  }


def wedlm_hf_config(variant: str = "8b", *, hidden=48, layers=2, heads=4, kv_heads=2,
                    head_dim=16, intermediate=112, vocab=320, mask_id=300, eos_id=301,
                    max_len=128) -> dict:
  """A config.json with the fields of the released WeDLM-8B ("8b": Qwen3, q/k norm, explicit
  head_dim, here 16 != hidden / heads = 12) or WeDLM-7B ("7b": Qwen2.5, q/k/v biases, head_dim
  hidden / heads) file, scaled down. The released files say `"mask_token_id": null`; a tiny
  vocabulary cannot hold the default id, so this one names its mask id."""
  qwen3 = variant == "8b"
  cfg = {
      "architectures": ["WeDLMForCausalLM"], "attention_bias": not qwen3,
      "attention_dropout": 0.0, "bos_token_id": eos_id, "eos_token_id": eos_id,
      "hidden_act": "silu", "hidden_size": hidden, "initializer_range": 0.02,
      "intermediate_size": intermediate, "mask_token_id": mask_id,
      "max_position_embeddings": max_len, "max_window_layers": layers, "model_type": "wedlm",
      "num_attention_heads": heads, "num_hidden_layers": layers, "num_key_value_heads": kv_heads,
      "pad_token_id": eos_id, "qk_norm": qwen3, "rms_norm_eps": 1e-06, "rope_scaling": None,
      "rope_theta": 1000000.0, "sliding_window": None, "tie_word_embeddings": False,
      "torch_dtype": "float32", "use_cache": True, "use_sliding_window": False,
      "vocab_size": vocab,
  }
  if qwen3:
    cfg["head_dim"] = head_dim
  return cfg


def _dims(cfg: dict) -> dict:
  if cfg["model_type"] == "llada":
    return dict(D=cfg["d_model"], L=cfg["n_layers"], N=cfg["n_heads"], K=cfg["n_kv_heads"],
                F=cfg["mlp_hidden_size"], V=cfg["embedding_size"],
                H=cfg["d_model"] // cfg["n_heads"])
  return dict(D=cfg["hidden_size"], L=cfg["num_hidden_layers"], N=cfg["num_attention_heads"],
              K=cfg["num_key_value_heads"], F=cfg["intermediate_size"], V=cfg["vocab_size"],
              H=cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"])


def _shape(kind: str, d: dict) -> tuple[int, ...]:
  H = d["H"]
  return {"norm": (d["D"],), "q": (d["N"] * H, d["D"]), "kv": (d["K"] * H, d["D"]),
          "o": (d["D"], d["N"] * H), "up": (d["F"], d["D"]), "down": (d["D"], d["F"]),
          "q_bias": (d["N"] * H,), "kv_bias": (d["K"] * H,), "embed": (d["V"], d["D"]),
          "head": (d["V"], d["D"]), "head_norm": (H,)}[kind]


def hf_tensor_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
  """Every key of the family's checkpoint with its PyTorch shape."""
  d = _dims(cfg)
  if cfg["model_type"] == "llada":
    prefix, block, top = "model.transformer.blocks", LLADA_BLOCK, {
        "model.transformer.wte.weight": "embed", "model.transformer.ln_f.weight": "norm",
        "model.transformer.ff_out.weight": "head"}
  else:
    block = DREAM_BLOCK
    if cfg["model_type"] == "wedlm":
      block = WEDLM_8B_BLOCK if cfg["qk_norm"] else WEDLM_7B_BLOCK
    prefix, top = "model.layers", {
        "model.embed_tokens.weight": "embed", "model.norm.weight": "norm",
        "lm_head.weight": "head"}
  shapes = {key: _shape(kind, d) for key, kind in top.items()}
  for i in range(d["L"]):
    for suffix, kind in block.items():
      shapes[f"{prefix}.{i}.{suffix}"] = _shape(kind, d)
  return shapes


def random_tensors(cfg: dict, seed: int = 0, dtype=np.float32) -> dict[str, np.ndarray]:
  """Random weights with every tensor non-trivial (norm scales near 1, non-zero biases)."""
  rng = np.random.default_rng(seed)
  tensors = {}
  for key, shape in hf_tensor_shapes(cfg).items():
    noise = rng.standard_normal(shape, dtype=np.float32)
    if key.endswith("norm.weight") or key.endswith("ln_f.weight") or "layernorm" in key:
      value = 1.0 + 0.2 * noise
    elif key.endswith(".bias"):
      value = 0.3 * noise
    else:
      value = noise / np.sqrt(shape[-1])  # unit-variance activations
    tensors[key] = np.ascontiguousarray(value.astype(dtype))
  return tensors


def write_checkpoint(directory: pathlib.Path, cfg: dict, tensors: dict[str, np.ndarray],
                     num_shards: int = 1) -> pathlib.Path:
  """Saves `tensors` as model.safetensors, or as an indexed sharded checkpoint."""
  directory.mkdir(parents=True, exist_ok=True)
  (directory / "config.json").write_text(json.dumps(cfg, indent=2))
  keys = list(tensors)
  if num_shards == 1:
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    return directory
  weight_map = {}
  for s in range(num_shards):
    name = f"model-{s + 1:05d}-of-{num_shards:05d}.safetensors"
    part = {k: tensors[k] for k in keys[s::num_shards]}  # interleaved, as in LLaDA's release
    save_file(part, str(directory / name), metadata={"format": "pt"})
    weight_map.update({k: name for k in part})
  index = {"metadata": {"total_size": sum(t.nbytes for t in tensors.values())},
           "weight_map": weight_map}
  (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
  return directory
