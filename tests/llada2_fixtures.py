"""Tiny random LLaDA2.x and SDAR Hugging Face checkpoints in the released key layouts (numpy).

The LLaDA2 keys are written out here from inclusionAI's `modeling_llada2_moe.py` parameter names,
independently of the library's table (dllm_jax/models/hf_layout.py).
"""

from __future__ import annotations

import json
import pathlib

import jax.numpy as jnp
import numpy as np

from dllm_jax.models import hf_layout
from dllm_jax.models.config import from_hf_config
from tests import hf_fixtures as fx


def llada2_hf_config(*, hidden=32, layers=2, heads=4, kv_heads=2, head_dim=16, intermediate=64,
                     experts=8, top_k=2, groups=4, topk_group=2, expert_width=16, vocab=160,
                     mask_id=150, eos_id=151, max_len=128, use_bias=False) -> dict:
  """The fields of the released LLaDA2.0-mini config.json, scaled down (layer 0 dense)."""
  return {
      "architectures": ["LLaDA2MoeModelLM"], "model_type": "llada2_moe",
      "auto_map": {"AutoConfig": "configuration_llada2_moe.LLaDA2MoeConfig"},
      "attention_dropout": 0.0, "embedding_dropout": 0.0, "output_dropout": 0.0,
      "first_k_dense_replace": 1, "head_dim": head_dim, "hidden_act": "silu",
      "hidden_size": hidden, "initializer_range": 0.02, "intermediate_size": intermediate,
      "max_position_embeddings": max_len, "moe_intermediate_size": expert_width,
      "n_group": groups, "norm_head": False, "norm_topk_prob": True,
      "num_attention_heads": heads, "num_experts": experts, "num_experts_per_tok": top_k,
      "num_hidden_layers": layers, "num_key_value_heads": kv_heads, "num_shared_experts": 1,
      "output_router_logits": False, "pad_token_id": eos_id, "eos_token_id": eos_id,
      "mask_token_id": mask_id, "partial_rotary_factor": 0.5, "rms_norm_eps": 1e-06,
      "rope_scaling": None, "rope_theta": 600000, "routed_scaling_factor": 2.5,
      "score_function": "sigmoid", "moe_router_enable_expert_bias": True, "router_dtype": "fp32",
      "tie_word_embeddings": False, "topk_group": topk_group, "torch_dtype": "float32",
      "use_bias": use_bias, "use_qk_norm": True, "use_qkv_bias": False, "use_cache": False,
      "use_sliding_window": False, "vocab_size": vocab,
  }


def llada2_tensor_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
  D, H, V = cfg["hidden_size"], cfg["head_dim"], cfg["vocab_size"]
  N, K = cfg["num_attention_heads"], cfg["num_key_value_heads"]
  F, Fe, E = cfg["intermediate_size"], cfg["moe_intermediate_size"], cfg["num_experts"]
  shapes = {"model.word_embeddings.weight": (V, D), "model.norm.weight": (D,),
            "lm_head.weight": (V, D)}
  for i in range(cfg["num_hidden_layers"]):
    p = f"model.layers.{i}."
    shapes.update({p + "input_layernorm.weight": (D,), p + "post_attention_layernorm.weight": (D,),
                   p + "attention.query_key_value.weight": ((N + 2 * K) * H, D),
                   p + "attention.query_layernorm.weight": (H,),
                   p + "attention.key_layernorm.weight": (H,),
                   p + "attention.dense.weight": (D, N * H)})
    if cfg.get("use_bias", True):
      shapes[p + "attention.dense.bias"] = (D,)
    if i < cfg["first_k_dense_replace"]:
      shapes.update({p + "mlp.gate_proj.weight": (F, D), p + "mlp.up_proj.weight": (F, D),
                     p + "mlp.down_proj.weight": (D, F)})
      continue
    shapes.update({p + "mlp.gate.weight": (E, D), p + "mlp.gate.expert_bias": (E,)})
    for e in range(E):
      shapes.update({p + f"mlp.experts.{e}.gate_proj.weight": (Fe, D),
                     p + f"mlp.experts.{e}.up_proj.weight": (Fe, D),
                     p + f"mlp.experts.{e}.down_proj.weight": (D, Fe)})
    Fs = Fe * cfg["num_shared_experts"]
    shapes.update({p + "mlp.shared_experts.gate_proj.weight": (Fs, D),
                   p + "mlp.shared_experts.up_proj.weight": (Fs, D),
                   p + "mlp.shared_experts.down_proj.weight": (D, Fs)})
  return shapes


def llada2_tensors(cfg: dict, seed: int = 0) -> dict[str, np.ndarray]:
  """Random weights: norm scales near 1, unit-variance linears, a router with spread-out scores
  and an expert bias large enough to change some choices."""
  rng = np.random.default_rng(seed)
  tensors = {}
  for key, shape in llada2_tensor_shapes(cfg).items():
    noise = rng.standard_normal(shape, dtype=np.float32)
    if "norm" in key:
      value = 1.0 + 0.2 * noise
    elif key.endswith("expert_bias"):
      value = 0.05 * noise
    elif key.endswith(".bias"):
      value = 0.3 * noise
    else:
      value = noise / np.sqrt(shape[-1])
    tensors[key] = np.ascontiguousarray(value.astype(np.float32))
  return tensors


def sdar_hf_config(**kw) -> dict:
  """SDAR's config.json (the released SDAR-1.7B-Chat fields: Qwen3 plus block_size), scaled
  down to the WeDLM-8B fixture's dimensions."""
  cfg = fx.wedlm_hf_config("8b", **kw)
  cfg.update({"model_type": "sdar", "architectures": ["SDARForCausalLM"], "block_size": 4,
              "attn_implementation": "flex_attention", "fuse_cross_entropy": True})
  return cfg


def sdar_tensors(cfg: dict, seed: int = 0) -> dict[str, np.ndarray]:
  return fx.random_tensors({**cfg, "model_type": "wedlm"}, seed=seed)


def jax_params(cfg: dict, tensors: dict[str, np.ndarray], folder: pathlib.Path,
               attention_block: int = 4):
  """(ModelConfig, params) of an HF config and its tensors, through the converter's key table
  (`config.json` is written to `folder`)."""
  path = pathlib.Path(folder) / "config.json"
  path.write_text(json.dumps(cfg))
  config = from_hf_config(path, attention_block=attention_block)
  assembler, params = hf_layout.HFAssembler(config), {}
  for key, array in tensors.items():
    for p, value in assembler.add(key, array):
      hf_layout.set_path(params, p, jnp.asarray(value))
  return config, params
