"""The block cache (Fast-dLLM's prefix / dual key-value cache) in the compiled loop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dllm_jax import models
from dllm_jax import sampling as S

CASES = {family: (config, models.init_params(config, seed=2), models.make_denoise(config))
         for family, config in (("llada", models.llada_tiny()), ("dream", models.dream_tiny()))}


def _prompts(config, lengths=(6, 3), seed=0):
  rng = np.random.default_rng(seed)
  P = max(lengths)
  tokens = np.full((len(lengths), P), config.pad_token_id, np.int32)
  for row, n in enumerate(lengths):
    tokens[row, P - n:] = rng.integers(0, 200, n)
  return tokens, tokens != config.pad_token_id


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_window_over_a_fresh_cache_equals_the_full_forward(family):
  config, params, denoise = CASES[family]
  tokens, mask = _prompts(config, (12, 8))
  full, cache = denoise.with_cache(params, tokens, mask)
  for start, width in ((4, 4), (1, 8), (8, 4)):
    window = denoise.window(params, cache, tokens, mask, start, width)
    np.testing.assert_allclose(window, full[:, start:start + width], atol=1e-5)


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_logits_window_equals_the_full_forward_sliced(family):
  """The uncached loop's entry point: the LM head over a window only (Dream's shift included,
  down to position 0)."""
  config, params, denoise = CASES[family]
  tokens, mask = _prompts(config, (12, 8))
  full = denoise(params, tokens, mask)
  for start, width in ((0, 4), (1, 8), (8, 4)):
    window = denoise.logits_window(params, tokens, mask, start, width)
    np.testing.assert_allclose(window, full[:, start:start + width], atol=1e-5)


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_loop_gives_the_same_samples_without_logits_window(family):
  """A denoiser with only the plain contract (full logits, sliced by the loop) decodes alike."""
  config, params, denoise = CASES[family]
  prompt, prompt_mask = _prompts(config)
  plain = jax.tree_util.Partial(lambda p, t, m: denoise(p, t, m))
  assert not hasattr(plain, "logits_window")
  sampler = S.Sampler.for_model(config, gen_length=16, block_length=4, steps=8,
                                remasking=S.LowConfidence(), temperature=0.7)
  key = jax.random.key(3)
  windowed = S.generate(sampler, denoise, params, prompt, prompt_mask, key)
  full = S.generate(sampler, plain, params, prompt, prompt_mask, key)
  np.testing.assert_array_equal(windowed.tokens_BL, full.tokens_BL)
  np.testing.assert_allclose(windowed.logprob_BG, full.logprob_BG, atol=1e-5)


@pytest.mark.parametrize("family", ["llada", "dream"])
@pytest.mark.parametrize("rule,temperature,cfg", [(S.LowConfidence(), 0.0, 0.0),
                                                  (S.Random(), 0.9, 0.0),
                                                  (S.LowConfidence(), 0.5, 1.0),
                                                  (S.Threshold(0.02), 0.0, 0.0)])
def test_refreshing_every_step_is_exactly_uncached_decoding(family, rule, temperature, cfg):
  config, params, denoise = CASES[family]
  steps = None if isinstance(rule, S.Threshold) else 8
  sampler = S.Sampler.for_model(config, gen_length=16, block_length=4, steps=steps,
                                remasking=rule, temperature=temperature, cfg_scale=cfg)
  prompt, mask = _prompts(config)
  plain = S.generate(sampler, denoise, params, prompt, mask, jax.random.key(1))
  cached = S.generate(sampler.replace(cache=S.BlockCache(refresh_every=1)), denoise, params,
                      prompt, mask, jax.random.key(1))
  np.testing.assert_array_equal(cached.tokens_BL, plain.tokens_BL)
  np.testing.assert_array_equal(cached.nfe_B, plain.nfe_B)


def test_cache_is_refreshed_once_per_block():
  config, params, denoise = CASES["llada"]
  calls = []

  class Counting:  # the model, recording which path each evaluation took
    max_length = config.max_length

    def __call__(self, *args):
      return denoise(*args)

    def with_cache(self, *args):
      jax.debug.callback(lambda: calls.append("full"), ordered=True)
      return denoise.with_cache(*args)

    def window(self, *args):
      jax.debug.callback(lambda: calls.append("window"), ordered=True)
      return denoise.window(*args)

  sampler = S.Sampler.for_model(config, gen_length=16, block_length=4, steps=12,
                                cache=S.BlockCache())
  prompt, mask = _prompts(config)
  out = S.generate(sampler, Counting(), params, prompt, mask, jax.random.key(0))
  jax.block_until_ready(out)
  assert calls == ["full", "window", "window"] * 4
  assert not (np.asarray(out.generated_BG) == config.mask_token_id).any()


def test_block_cache_agreement_with_uncached_decoding():
  """The cache is an approximation; report how often it changes a token (greedy decoding)."""
  config, params, denoise = CASES["llada"]
  prompt, mask = _prompts(config, (6, 3, 5, 4), seed=3)
  rates = {}
  for block_length in (32, 8, 4):
    sampler = S.Sampler.for_model(config, gen_length=32, block_length=block_length, steps=32)
    plain = S.generate(sampler, denoise, params, prompt, mask, jax.random.key(0))
    cached = S.generate(sampler.replace(cache=S.BlockCache()), denoise, params, prompt, mask,
                        jax.random.key(0))
    rates[block_length] = float((np.asarray(plain.generated_BG)
                                 == np.asarray(cached.generated_BG)).mean())
  print("token agreement of cached vs uncached decoding by block length:", rates)
  assert all(0 < rate <= 1 for rate in rates.values())


def test_cache_errors():
  config, params, denoise = CASES["dream"]
  with pytest.raises(ValueError, match="IMH scores candidates with full forward passes"):
    S.Sampler.for_model(config, gen_length=8, remasking=S.IMH(), cache=S.BlockCache())
  with pytest.raises(ValueError, match=r"refresh_every must be >= 1"):
    S.BlockCache(refresh_every=0)
  sampler = S.Sampler.for_model(config, gen_length=8, block_length=4, cache=S.BlockCache())
  with pytest.raises(ValueError, match="needs a denoiser with a `with_cache` method"):
    S.generate(sampler, lambda p, t, m: denoise(p, t, m), params, *_prompts(config),
               jax.random.key(0))
  empty = jnp.zeros((1, 0), jnp.int32)
  with pytest.raises(ValueError, match="shifted logits .* needs a prompt"):
    S.generate(sampler, denoise, params, empty, empty.astype(bool), jax.random.key(0))
