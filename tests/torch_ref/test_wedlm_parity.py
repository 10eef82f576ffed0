"""Converted WeDLM checkpoints against `transformers` Qwen3 (WeDLM-8B), Qwen2 (WeDLM-7B) at fp32.

The reference does WeDLM's topological reordering physically (DESIGN.md §11): each row's observed
tokens first, its masks after, each group in ascending logical order (left padding stays in
front, hidden on keys), explicit logical `position_ids`, a causal 4-D mask; its logits are then
scattered back to logical order. Our denoiser computes the same function in logical order.
"""

import numpy as np
import pytest
import torch
import transformers

from dllm_jax import checkpoint
from dllm_jax.models import make_denoise
from tests import hf_fixtures as fx

# max |jax - torch| <= TOLERANCE * max |logit|, float32 on both sides.
TOLERANCE = 1e-4


def _reference_model(cfg: dict, tensors: dict) -> torch.nn.Module:
  """Qwen3ForCausalLM (q/k norm, explicit head_dim, no bias) or Qwen2ForCausalLM (q/k/v bias)."""
  common = dict(
      hidden_size=cfg["hidden_size"], intermediate_size=cfg["intermediate_size"],
      num_hidden_layers=cfg["num_hidden_layers"], num_attention_heads=cfg["num_attention_heads"],
      num_key_value_heads=cfg["num_key_value_heads"], vocab_size=cfg["vocab_size"],
      rms_norm_eps=cfg["rms_norm_eps"], tie_word_embeddings=False, attn_implementation="eager",
      max_position_embeddings=cfg["max_position_embeddings"],
      rope_parameters={"rope_type": "default", "rope_theta": cfg["rope_theta"]})
  if cfg["qk_norm"]:
    model = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(
        head_dim=cfg["head_dim"], attention_bias=False, **common))
  else:
    model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**common))
  state = {k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in tensors.items()}
  missing, unexpected = model.load_state_dict(state, strict=False)
  buffers = {name for name, _ in model.named_buffers()}
  if unexpected or set(missing) - buffers:
    raise AssertionError(f"reference weights do not fit: {missing} {unexpected}")
  return model.eval()


def reordered_reference_logits(model, tokens, valid, mask_id):
  """Logits [B, L, V] in logical order, from the physically reordered canvas."""
  B, L = tokens.shape
  positions = np.where(valid, np.cumsum(valid, axis=1) - 1, 1)
  perm = np.stack([np.concatenate([np.flatnonzero(~valid[b]),
                                   np.flatnonzero(valid[b] & (tokens[b] != mask_id)),
                                   np.flatnonzero(valid[b] & (tokens[b] == mask_id))])
                   for b in range(B)])
  rows = np.arange(B)[:, None]
  causal = np.tril(np.ones((L, L), bool))
  visible = causal[None] & valid[rows, perm][:, None, :]
  additive = np.where(visible, 0.0, np.finfo(np.float32).min).astype(np.float32)[:, None]
  with torch.no_grad():
    physical = model(input_ids=torch.as_tensor(tokens[rows, perm], dtype=torch.long),
                     position_ids=torch.as_tensor(positions[rows, perm], dtype=torch.long),
                     attention_mask=torch.from_numpy(additive)).logits.float().numpy()
  logical = np.empty_like(physical)
  logical[rows, perm] = physical
  return logical


def _canvases(config, seed):
  """Four rows of 24: unpadded with masks scattered at random, left-padded by 5 and 11 with
  scattered masks, and a decoding-like row (padding, prompt, then a generated region with some
  positions filled among the masks)."""
  rng = np.random.default_rng(seed)
  mask_id, pad = config.mask_token_id, config.pad_token_id
  tokens = rng.integers(0, mask_id, size=(4, 24))
  valid = np.ones_like(tokens, bool)
  tokens[:3][rng.random((3, 24)) < 0.4] = mask_id
  for row, n in ((1, 5), (2, 11), (3, 3)):
    tokens[row, :n], valid[row, :n] = pad, False
  gen = np.arange(24) >= 12
  tokens[3, gen & (rng.random(24) < 0.7)] = mask_id
  tokens[2, 11] = mask_id  # a row whose real part starts with a mask
  return tokens, valid


@pytest.mark.parametrize("variant,num_shards", [("8b", 1), ("8b", 3), ("7b", 2)])
def test_logits_match_the_reordered_pytorch_reference(tmp_path, variant, num_shards):
  cfg = fx.wedlm_hf_config(variant)
  tensors = fx.random_tensors(cfg, seed=11)
  fx.write_checkpoint(tmp_path / "hf", cfg, tensors, num_shards=num_shards)
  config = checkpoint.convert_hf(tmp_path / "hf", tmp_path / "jax")
  assert config.family == "wedlm" and config.qk_norm == (variant == "8b")
  assert config.num_kv_heads < config.num_heads  # GQA
  params, _ = checkpoint.load(tmp_path / "jax")
  tokens, valid = _canvases(config, seed=3)
  assert ((tokens == config.mask_token_id) & valid).sum(1).min() > 0

  want = reordered_reference_logits(_reference_model(cfg, tensors), tokens, valid,
                                    config.mask_token_id)
  got = np.asarray(make_denoise(config)(params, tokens, valid))
  assert got.shape == want.shape == (4, 24, config.vocab_size)
  err = np.abs(got - want)[valid].max()  # padded query rows are not part of the contract
  scale = np.abs(want[valid]).max()
  print(f"wedlm {variant} shards={num_shards}: max|err| {err:.3g}, max|logit| {scale:.3g}")
  assert err <= TOLERANCE * scale
  # The reordering matters: plain causal attention in logical order is a different function.
  with torch.no_grad():
    plain = _reference_model(cfg, tensors)(
        input_ids=torch.as_tensor(tokens), attention_mask=torch.as_tensor(valid.astype(int)),
        position_ids=torch.as_tensor(np.where(valid, np.cumsum(valid, 1) - 1, 1))
    ).logits.numpy()
  assert np.abs(plain - want)[valid].max() > 100 * TOLERANCE * scale


@pytest.mark.parametrize("variant", ["8b", "7b"])
def test_all_observed_canvas_is_the_plain_causal_lm(tmp_path, variant):
  """Without masks the order is the logical one: `transformers`' own causal LM (its own causal
  mask from a 2-D padding mask) gives the same logits."""
  cfg = fx.wedlm_hf_config(variant)
  tensors = fx.random_tensors(cfg, seed=12)
  fx.write_checkpoint(tmp_path / "hf", cfg, tensors)
  config = checkpoint.convert_hf(tmp_path / "hf", tmp_path / "jax")
  params, _ = checkpoint.load(tmp_path / "jax")
  tokens, valid = _canvases(config, seed=4)
  tokens = np.where(tokens == config.mask_token_id, 7, tokens)
  with torch.no_grad():
    want = _reference_model(cfg, tensors)(
        input_ids=torch.as_tensor(tokens), attention_mask=torch.as_tensor(valid.astype(int)),
        position_ids=torch.as_tensor(np.where(valid, np.cumsum(valid, 1) - 1, 1))
    ).logits.numpy()
  got = np.asarray(make_denoise(config)(params, tokens, valid))
  err, scale = np.abs(got - want)[valid].max(), np.abs(want[valid]).max()
  print(f"wedlm {variant} all observed: max|err| {err:.3g}, max|logit| {scale:.3g}")
  assert err <= TOLERANCE * scale
