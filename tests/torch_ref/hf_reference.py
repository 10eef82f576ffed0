"""PyTorch reference logits for the model tests: `transformers` Llama (LLaDA) and Qwen2 (Dream)
models run bidirectionally on the weights of a `tests.hf_fixtures` checkpoint.

A bidirectional LlamaModel / Qwen2Model given a 4-D additive attention mask that hides only padded
keys computes the same function as those architectures (DESIGN.md §4).
"""

from __future__ import annotations

import numpy as np
import torch
import transformers

from tests.hf_fixtures import _dims

def reference_model(cfg: dict, tensors: dict[str, np.ndarray]) -> torch.nn.Module:
  """The `transformers` causal-LM class whose weights equal the checkpoint's, in float32."""
  d = _dims(cfg)
  common = dict(hidden_size=d["D"], intermediate_size=d["F"], num_hidden_layers=d["L"],
                num_attention_heads=d["N"], num_key_value_heads=d["K"], vocab_size=d["V"],
                tie_word_embeddings=False, attn_implementation="eager")
  if cfg["model_type"] == "llada":
    config = transformers.LlamaConfig(
        rms_norm_eps=cfg["rms_norm_eps"], attention_bias=False, mlp_bias=False,
        rope_parameters={"rope_type": "default", "rope_theta": cfg["rope_theta"]}, **common)
    model = transformers.LlamaForCausalLM(config)
    rename = {"attn_norm": "input_layernorm", "q_proj": "self_attn.q_proj",
              "k_proj": "self_attn.k_proj", "v_proj": "self_attn.v_proj",
              "attn_out": "self_attn.o_proj", "ff_norm": "post_attention_layernorm",
              "ff_proj": "mlp.gate_proj", "up_proj": "mlp.up_proj", "ff_out": "mlp.down_proj"}
    state = {}
    for key, value in tensors.items():
      if key == "model.transformer.wte.weight":
        state["model.embed_tokens.weight"] = value
      elif key == "model.transformer.ln_f.weight":
        state["model.norm.weight"] = value
      elif key == "model.transformer.ff_out.weight":
        state["lm_head.weight"] = value
      else:
        _, _, _, i, module, param = key.split(".")
        state[f"model.layers.{i}.{rename[module]}.{param}"] = value
  else:
    config = transformers.Qwen2Config(
        rms_norm_eps=cfg["rms_norm_eps"],
        rope_parameters={"rope_type": "default", "rope_theta": cfg["rope_theta"]}, **common)
    model = transformers.Qwen2ForCausalLM(config)
    state = dict(tensors)
  state = {k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in state.items()}
  missing, unexpected = model.load_state_dict(state, strict=False)
  buffers = {name for name, _ in model.named_buffers()}
  if unexpected or set(missing) - buffers:
    raise AssertionError(f"reference weights do not fit: {missing} {unexpected}")
  return model.eval()


def reference_logits(cfg: dict, tensors: dict[str, np.ndarray], tokens: np.ndarray,
                     mask: np.ndarray) -> np.ndarray:
  """Float32 logits [B, L, V]: bidirectional, padded keys hidden, family position/shift rules."""
  model = reference_model(cfg, tensors)
  tokens_t = torch.as_tensor(tokens, dtype=torch.long)
  mask_t = torch.as_tensor(mask, dtype=torch.bool)
  B, L = tokens.shape
  additive = torch.zeros(B, 1, L, L)
  additive.masked_fill_(~mask_t[:, None, None, :], torch.finfo(torch.float32).min)
  if cfg["model_type"] == "llada":
    positions = torch.arange(L).expand(B, L)
  else:  # Dream: positions count real tokens; padding gets 1.
    positions = (mask_t.long().cumsum(-1) - 1).masked_fill(~mask_t, 1)
  with torch.no_grad():
    logits = model(input_ids=tokens_t, attention_mask=additive, position_ids=positions).logits
  if cfg["model_type"] != "llada":
    logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
  return logits.float().numpy()
