"""The PyTorch LLaDA loop (the sampling benchmark's baseline) decodes what the compiled loop does."""

import jax
import numpy as np
import pytest
import torch

from dllm_jax import models
from dllm_jax import sampling as S
from tests.torch_ref import llada_generate_torch, llada_torch

CONFIG = models.llada_tiny()
PARAMS = models.init_params(CONFIG, seed=5)


def _prompts(lengths, seed=0):
  """Left-padded prompts (tokens 0..199, never special) and their masks."""
  rng = np.random.default_rng(seed)
  P = max(lengths)
  tokens = np.full((len(lengths), P), CONFIG.pad_token_id, np.int32)
  mask = np.zeros((len(lengths), P), bool)
  for row, n in enumerate(lengths):
    tokens[row, P - n:] = rng.integers(0, 200, n)
    mask[row, P - n:] = True
  return tokens, mask


@pytest.mark.parametrize("gen_length,block_length,steps,cfg_scale", [
    (24, 8, 9, 0.0),    # 3 blocks of 8 masks over 3 steps: 3, 3, 2
    (16, 16, 4, 1.0),   # full diffusion, 4 tokens per step, classifier-free guidance
])
def test_greedy_low_confidence_matches_compiled_loop(gen_length, block_length, steps, cfg_scale):
  prompt, mask = _prompts([6, 3, 9])
  sampler = S.Sampler.for_model(CONFIG, gen_length=gen_length, block_length=block_length,
                                steps=steps, remasking=S.LowConfidence(), temperature=0.0,
                                cfg_scale=cfg_scale)
  out = S.generate(sampler, models.make_denoise(CONFIG), PARAMS, prompt, mask,
                   jax.random.key(0))
  model = llada_torch.from_jax_params(CONFIG, PARAMS)
  got = llada_generate_torch.generate(
      model, torch.from_numpy(prompt).long(), torch.from_numpy(mask), steps=steps,
      gen_length=gen_length, block_length=block_length, temperature=0.0, cfg_scale=cfg_scale,
      remasking="low_confidence", mask_id=CONFIG.mask_token_id)
  np.testing.assert_array_equal(got.numpy(), np.asarray(out.tokens_BL))
  assert not (got[:, prompt.shape[1]:] == CONFIG.mask_token_id).any()


def test_transfer_schedule_and_sampling_modes():
  counts = llada_generate_torch.get_num_transfer_tokens(torch.ones(2, 8, dtype=torch.bool), 3)
  assert counts.tolist() == [[3, 3, 2], [3, 3, 2]]
  # Random remasking at temperature > 0 still fills every position, inside the prompt's vocab.
  prompt, mask = _prompts([4, 2])
  model = llada_torch.from_jax_params(CONFIG, PARAMS)
  got = llada_generate_torch.generate(
      model, torch.from_numpy(prompt).long(), torch.from_numpy(mask), steps=4, gen_length=8,
      block_length=4, temperature=0.7, remasking="random", mask_id=CONFIG.mask_token_id,
      generator=torch.Generator().manual_seed(0))
  assert got.shape == (2, prompt.shape[1] + 8)
  assert not (got[:, prompt.shape[1]:] == CONFIG.mask_token_id).any()
  np.testing.assert_array_equal(got[:, :prompt.shape[1]].numpy(), prompt)


def test_without_mask_suppression_the_official_loop_commits_mask_tokens():
  """LLaDA's own loop leaves the mask token's logit in; on this random model, sampling at
  temperature 1, it then commits [MASK] tokens, which the library never does (README,
  "Experiments"). With the mask suppressed on both sides the tokens agree exactly (above)."""
  rng = np.random.default_rng(0)
  prompt = torch.from_numpy(rng.integers(0, 200, (4, 6))).long()
  model = llada_torch.from_jax_params(CONFIG, PARAMS)
  torch.manual_seed(0)
  got = llada_generate_torch.generate(
      model, prompt, torch.ones(4, 6, dtype=torch.bool), steps=24, gen_length=24, block_length=8,
      temperature=1.0, remasking="random", mask_id=CONFIG.mask_token_id, forbid_mask=False)
  committed = (got[:, 6:] == CONFIG.mask_token_id).sum().item()
  print(f"[MASK] tokens committed without suppression: {committed} of {got[:, 6:].numel()}")
  assert committed > 0
  sampler = S.Sampler.for_model(CONFIG, gen_length=24, block_length=8, steps=24,
                                remasking=S.Random(), temperature=1.0)
  ours = S.generate(sampler, models.make_denoise(CONFIG), PARAMS, prompt.numpy(),
                    np.ones((4, 6), bool), jax.random.key(0))
  assert not (np.asarray(ours.generated_BG) == CONFIG.mask_token_id).any()
