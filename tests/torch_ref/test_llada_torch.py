"""The PyTorch benchmark reference computes the same function as `make_denoise` at float32."""

import numpy as np
import pytest
import torch

from dllm_jax import models
from tests.torch_ref import llada_torch

# max |jax - torch| <= TOLERANCE * max |logit| over real positions, float32 on both sides.
TOLERANCE = 1e-4


def _batch(config: models.ModelConfig, length: int, seed: int = 0):
  """Three rows: full, left-padded by 5, left-padded by 11; about 30% mask tokens."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, config.mask_token_id, size=(3, length)).astype(np.int32)
  tokens[rng.random(tokens.shape) < 0.3] = config.mask_token_id
  mask = np.ones_like(tokens, bool)
  for row, pad in ((1, 5), (2, 11)):
    tokens[row, :pad] = config.pad_token_id
    mask[row, :pad] = False
  return tokens, mask


@pytest.mark.parametrize("config", [
    models.llada_tiny(),
    models.llada_sized(128, 2, vocab_size=512),  # head_dim 64, the benchmark layout
])
def test_logits_equal_make_denoise(config):
  params = models.init_params(config, seed=3)
  tokens, mask = _batch(config, 20)
  want = np.asarray(models.make_denoise(config)(params, tokens, mask))
  model = llada_torch.from_jax_params(config, params)
  with torch.no_grad():
    got = model(torch.from_numpy(tokens).long(), torch.from_numpy(mask)).numpy()
  assert got.dtype == np.float32 and got.shape == want.shape == (3, 20, config.vocab_size)
  err = np.abs(got - want)[mask].max()
  scale = np.abs(want[mask]).max()
  assert err <= TOLERANCE * scale, (err, scale)
  # Unpadded rows take the mask-free attention path; it must agree as well.
  with torch.no_grad():
    full = model(torch.from_numpy(tokens[:1]).long(), torch.ones(1, 20, dtype=torch.bool))
  np.testing.assert_allclose(full.numpy(), want[:1], atol=TOLERANCE * scale)


def test_state_dict_holds_every_weight_in_torch_layout():
  config = models.llada_tiny()
  params = models.init_params(config, seed=1)
  state = llada_torch.state_dict_from_jax(params, config)
  kernel = np.asarray(params["layers"][1]["mlp"]["down_proj"]["kernel"])  # [F, D]
  np.testing.assert_array_equal(state["blocks.1.ff_out.weight"].numpy(), kernel.T)
  assert len(state) == 3 + 9 * config.num_layers
  assert sum(t.numel() for t in state.values()) == models.param_count(params)
