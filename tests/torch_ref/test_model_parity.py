"""Converted LLaDA / Dream checkpoints give the PyTorch reference's logits at float32."""

import ml_dtypes
import numpy as np
import pytest

from dllm_jax import checkpoint
from dllm_jax.models import make_denoise
from tests import hf_fixtures as fx
from tests.torch_ref import hf_reference as ref

# max |jax - torch| <= TOLERANCE * max |logit|, float32 on both sides.
TOLERANCE = 1e-4


def _batch(vocab: int, mask_id: int, pad_id: int, seed: int = 0):
  """Three rows of length 24: full, left-padded by 7, left-padded by 15; some mask tokens."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, mask_id, size=(3, 24))
  tokens[rng.random(tokens.shape) < 0.3] = mask_id
  mask = np.ones_like(tokens, bool)
  for row, pad in ((1, 7), (2, 15)):
    tokens[row, :pad] = pad_id
    mask[row, :pad] = False
  return tokens, mask


@pytest.mark.parametrize("family,num_shards", [("llada", 1), ("llada", 3), ("dream", 1),
                                               ("dream", 2)])
def test_logits_match_pytorch(tmp_path, family, num_shards):
  cfg = fx.llada_hf_config() if family == "llada" else fx.dream_hf_config()
  tensors = fx.random_tensors(cfg, seed=1)
  fx.write_checkpoint(tmp_path / "hf", cfg, tensors, num_shards=num_shards)
  config = checkpoint.convert_hf(tmp_path / "hf", tmp_path / "jax")
  params, loaded = checkpoint.load(tmp_path / "jax")
  assert loaded == config and config.param_dtype == "float32"

  tokens, mask = _batch(config.vocab_size, config.mask_token_id, config.pad_token_id)
  want = ref.reference_logits(cfg, tensors, tokens, mask)
  got = np.asarray(make_denoise(config)(params, tokens, mask))
  assert got.shape == want.shape == (3, 24, config.vocab_size)
  real = mask  # padded query rows are not part of the contract
  err = np.abs(got - want)[real].max()
  scale = np.abs(want[real]).max()
  print(f"{family} shards={num_shards}: max|err| {err:.3g}, max|logit| {scale:.3g}")
  assert err <= TOLERANCE * scale


def test_padding_does_not_change_real_logits(tmp_path):
  """Left padding hides keys only: a padded row's real tokens see what the unpadded row sees."""
  cfg = fx.dream_hf_config()
  fx.write_checkpoint(tmp_path / "hf", cfg, fx.random_tensors(cfg, seed=2))
  config = checkpoint.convert_hf(tmp_path / "hf", tmp_path / "jax")
  params, _ = checkpoint.load(tmp_path / "jax")
  denoise = make_denoise(config)
  tokens, _ = _batch(config.vocab_size, config.mask_token_id, config.pad_token_id, seed=3)
  row = tokens[:1, 5:]
  padded = np.concatenate([np.full((1, 5), config.pad_token_id), row], axis=1)
  padded_mask = np.arange(padded.shape[1])[None] >= 5
  # Dream shifts logits right by one over the whole canvas, so the first real position of the
  # padded row holds a padding position's prediction by design; compare from the second one.
  alone = np.asarray(denoise(params, row, np.ones_like(row, bool)))[:, 1:]
  inside = np.asarray(denoise(params, padded, padded_mask))[:, 6:]
  np.testing.assert_allclose(inside, alone, atol=1e-4 * np.abs(alone).max())


def test_bfloat16_checkpoint_keeps_its_dtype(tmp_path):
  cfg = fx.llada_hf_config()
  tensors = fx.random_tensors(cfg, seed=4, dtype=ml_dtypes.bfloat16)
  fx.write_checkpoint(tmp_path / "hf", cfg, tensors)
  config = checkpoint.convert_hf(tmp_path / "hf", tmp_path / "jax")
  assert (config.param_dtype, config.dtype) == ("bfloat16", "bfloat16")
  params, _ = checkpoint.load(tmp_path / "jax")
  kernel = params["layers"][1]["attn"]["q_proj"]["kernel"]
  assert kernel.dtype == np.dtype("bfloat16")
  want = tensors["model.transformer.blocks.1.q_proj.weight"].T.astype(np.float32)
  np.testing.assert_array_equal(np.asarray(kernel, np.float32), want)
