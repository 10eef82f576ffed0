"""LLaDA2.1's S (speed) and Q (quality) presets: their thresholds, and decoding with them equals
the official generate (`llada2_torch.generate`, checked against the official files) at
temperature 0 on a tiny model, prompt by prompt, from a left-padded batch."""


import jax
import numpy as np
import pytest
import torch

from dllm_jax.models import make_denoise
from dllm_jax.sampling import block_diffusion as bd
from tests import llada2_fixtures as lf
from tests.torch_ref import llada2_torch

PROMPTS = [[9, 41, 77, 3, 120, 8], [66, 2, 31], [14, 5, 88, 23, 70, 101, 12, 45, 9]]
MASK, PAD, EOS = 150, 151, 159  # EOS: an id the model never picks here, so every block decodes


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  cfg = lf.llada2_hf_config()
  tensors = lf.llada2_tensors(cfg, seed=5)
  tensors["lm_head.weight"] = tensors["lm_head.weight"] * 6.0  # confident enough to commit >1
  config, params = lf.jax_params(cfg, tensors, tmp_path_factory.mktemp("cfg"))
  model = llada2_torch.LLaDA2(cfg)
  model.load_state_dict({k: torch.from_numpy(v) for k, v in tensors.items()})
  return config, params, model.eval()


@pytest.mark.parametrize("preset,threshold,editing", [
    (bd.BlockDiffusion.llada21_speed, 0.5, 0.0), (bd.BlockDiffusion.llada21_quality, 0.7, 0.5)])
def test_preset_values_and_tokens_equal_the_official_generate(tiny, preset, threshold, editing):
  config, params, model = tiny
  decoder = preset(12, block_length=4, steps=4, max_post_steps=3)
  assert (decoder.threshold, decoder.editing_threshold) == (threshold, editing)
  assert (decoder.block_length, decoder.steps, decoder.max_post_steps) == (4, 4, 3)
  P = max(map(len, PROMPTS))
  tokens = np.full((len(PROMPTS), P), PAD, np.int32)
  mask = np.zeros_like(tokens, bool)
  for b, p in enumerate(PROMPTS):
    tokens[b, P - len(p):], mask[b, P - len(p):] = p, True
  out = bd.generate_blocks(decoder, make_denoise(config), params, tokens, mask, mask_id=MASK,
                           eos_id=EOS, pad_id=PAD)
  for b, prompt in enumerate(PROMPTS):
    want, _ = llada2_torch.generate(model, prompt, gen_length=12, block_length=4, steps=4,
                                    mask_id=MASK, eos_id=EOS, threshold=threshold,
                                    editing_threshold=editing, max_post_steps=3)
    assert out.tokens[b].tolist()[:len(want)] == want, (b, out.tokens[b], want)
    assert len(want) == 12  # no EOS: the whole generation is compared
