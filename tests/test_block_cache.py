"""The block cache (Fast-dLLM's dual and prefix key-value caches) in the compiled loop."""

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
def test_suffix_window_reads_the_cache_only_before_the_block(family):
  """The prefix mode's window over a fresh cache equals the full forward, for any window that
  ends at L and holds the block; cached entries from the block on (from the position before it
  with shifted logits) are never read, the ones before it are."""
  config, params, denoise = CASES[family]
  tokens, mask = _prompts(config, (12, 8))
  L, shift = tokens.shape[1], int(config.shift_logits)
  full, cache = denoise.with_cache(params, tokens, mask)
  noise = lambda kv, keep: jax.tree.map(
      lambda x: jnp.where(jnp.arange(L)[None, :, None, None] < keep, x, x + 1.0), kv)
  for start, width, suffix in ((4, 4, 8), (4, 4, 10), (8, 2, 4), (2, 3, 10)):
    window = denoise.suffix_window(params, cache, tokens, mask, start, width, suffix)
    np.testing.assert_allclose(window, full[:, start:start + width], atol=1e-5)
    stale_after = noise(cache, start - shift)  # only entries the suffix recomputes change
    np.testing.assert_allclose(
        denoise.suffix_window(params, stale_after, tokens, mask, start, width, suffix), window,
        atol=1e-5)
    stale_before = [(k - 1.0, v) for k, v in cache]  # the prefix is read
    assert not np.allclose(
        denoise.suffix_window(params, stale_before, tokens, mask, start, width, suffix), window,
        atol=1e-3)


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


SETTINGS = [(S.LowConfidence(), 0.0, 0.0), (S.Random(), 0.9, 0.0), (S.LowConfidence(), 0.5, 1.0),
            (S.Threshold(0.02), 0.0, 0.0), (S.Entropy(), 0.0, 0.0)]


def _sampler(config, rule, temperature, cfg, gen_length=16, block_length=4, **fields):
  steps = None if isinstance(rule, S.Threshold) else gen_length // 2
  return S.Sampler.for_model(config, gen_length=gen_length, block_length=block_length,
                             steps=steps, remasking=rule, temperature=temperature, cfg_scale=cfg,
                             **fields)


@pytest.mark.parametrize("family", ["llada", "dream"])
@pytest.mark.parametrize("mode", ["dual", "prefix"])
@pytest.mark.parametrize("rule,temperature,cfg", SETTINGS[:4])
def test_refreshing_every_step_is_exactly_uncached_decoding(family, mode, rule, temperature, cfg):
  config, params, denoise = CASES[family]
  sampler = _sampler(config, rule, temperature, cfg)
  prompt, mask = _prompts(config)
  plain = S.generate(sampler, denoise, params, prompt, mask, jax.random.key(1))
  cached = S.generate(sampler.replace(cache=S.BlockCache(mode, refresh_every=1)), denoise,
                      params, prompt, mask, jax.random.key(1))
  np.testing.assert_array_equal(cached.tokens_BL, plain.tokens_BL)
  np.testing.assert_array_equal(cached.nfe_B, plain.nfe_B)


@pytest.mark.parametrize("family", ["llada", "dream"])
@pytest.mark.parametrize("rule,temperature,cfg", SETTINGS)
def test_with_one_block_prefix_and_dual_caches_coincide(family, rule, temperature, cfg):
  """With one block (block_length = gen_length) the block is the whole suffix: both modes
  recompute the generated region (and, with shifted logits, the position before it) against
  the prompt's cached keys and values, so they give the same tokens for every rule."""
  config, params, denoise = CASES[family]
  sampler = _sampler(config, rule, temperature, cfg, block_length=16)
  prompt, mask = _prompts(config)
  dual, prefix = (S.generate(sampler.replace(cache=S.BlockCache(mode)), denoise, params, prompt,
                             mask, jax.random.key(4)) for mode in ("dual", "prefix"))
  np.testing.assert_array_equal(prefix.tokens_BL, dual.tokens_BL)
  np.testing.assert_allclose(prefix.logprob_BG, dual.logprob_BG, atol=1e-5)
  plain = S.generate(sampler, denoise, params, prompt, mask, jax.random.key(4))
  assert not np.allclose(plain.logprob_BG, dual.logprob_BG, atol=1e-4)  # a cache was used


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_prefix_cache_holds_a_fresh_forward_at_each_block_boundary(family):
  """Every step after a block's first reads keys and values of the prompt and finished blocks
  equal to those of a fresh forward over the canvas as it was when the block began (the
  finished blocks committed, masks from the block on)."""
  config, params, denoise = CASES[family]
  seen = []

  class Recording:  # the model, keeping what each suffix window was given
    max_length = config.max_length

    def __call__(self, *args):
      return denoise(*args)

    def with_cache(self, *args):
      return denoise.with_cache(*args)

    def suffix_window(self, params, cache, tokens, mask, start, width, suffix_length):
      jax.debug.callback(lambda *x: seen.append(jax.tree.map(np.asarray, x)), tokens, start,
                         cache, ordered=True)
      return denoise.suffix_window(params, cache, tokens, mask, start, width, suffix_length)

  sampler = _sampler(config, S.LowConfidence(), 0.0, 0.0, cache=S.BlockCache("prefix"))
  prompt, mask = _prompts(config)
  out = jax.block_until_ready(S.generate(sampler, Recording(), params, prompt, mask,
                                         jax.random.key(0)))
  P, shift = prompt.shape[1], int(config.shift_logits)
  attn_mask = np.concatenate([mask, np.ones((2, 16), bool)], axis=1)
  assert [int(start) for _, start, _ in seen] == [P + 4 * b for b in range(4)]  # 2 steps each
  for tokens, start, cache in seen:
    boundary = np.where(np.arange(tokens.shape[1]) < start, tokens, config.mask_token_id)
    _, fresh = denoise.with_cache(params, boundary, attn_mask)
    for (k, v), (k_fresh, v_fresh) in zip(cache, fresh):
      np.testing.assert_allclose(k[:, :start - shift], k_fresh[:, :start - shift], atol=1e-5)
      np.testing.assert_allclose(v[:, :start - shift], v_fresh[:, :start - shift], atol=1e-5)
  assert not (np.asarray(out.generated_BG) == config.mask_token_id).any()


@pytest.mark.parametrize("family", ["llada", "dream"])
@pytest.mark.parametrize("mode", ["dual", "prefix"])
def test_cached_rows_do_not_depend_on_batch_or_padding(family, mode):
  """A prompt decoded alone (no padding, its own key) gives the row it gets in a padded batch."""
  config, params, denoise = CASES[family]
  sampler = _sampler(config, S.LowConfidence(), 0.8, 0.0, cache=S.BlockCache(mode))
  prompt, mask = _prompts(config, (6, 2, 9), seed=5)
  keys = jax.random.split(jax.random.key(7), 3)
  batch = S.generate(sampler, denoise, params, prompt, mask, keys)
  for row in range(3):
    real = prompt[row:row + 1, mask[row]]
    alone = S.generate(sampler, denoise, params, real, np.ones(real.shape, bool),
                       keys[row:row + 1])
    np.testing.assert_array_equal(alone.generated_BG[0], batch.generated_BG[row])


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_prefix_window_widths_do_not_change_the_samples(family):
  """The window that ends at L only wastes positions: one window per block (exact suffix),
  the default powers of two, and one window of the whole region decode alike."""
  config, params, denoise = CASES[family]
  sampler = _sampler(config, S.LowConfidence(), 0.7, 0.0)
  prompt, mask = _prompts(config)
  outs = [S.generate(sampler.replace(cache=S.BlockCache("prefix", suffix_blocks=widths)),
                     denoise, params, prompt, mask, jax.random.key(2))
          for widths in ((1, 2, 3, 4), None, (4,))]
  for out in outs[1:]:
    np.testing.assert_array_equal(out.tokens_BL, outs[0].tokens_BL)
    np.testing.assert_allclose(out.logprob_BG, outs[0].logprob_BG, atol=1e-5)


def test_cache_is_refreshed_once_per_block():
  """Dual: the block's window at every later step. Prefix: the narrowest window of a power of
  two blocks that holds the blocks left (4 blocks: 4, 4, 2, 1 blocks of 4 tokens)."""
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

    def suffix_window(self, *args):
      jax.debug.callback(lambda: calls.append(args[-1]), ordered=True)
      return denoise.suffix_window(*args)

  prompt, mask = _prompts(config)
  expected = {"dual": ["full", "window", "window"] * 4,
              "prefix": [x for n in (16, 16, 8, 4) for x in ("full", n, n)]}
  for mode in ("dual", "prefix"):
    calls.clear()
    sampler = S.Sampler.for_model(config, gen_length=16, block_length=4, steps=12,
                                  cache=S.BlockCache(mode))
    out = jax.block_until_ready(S.generate(sampler, Counting(), params, prompt, mask,
                                           jax.random.key(0)))
    assert calls == expected[mode], mode
    assert not (np.asarray(out.generated_BG) == config.mask_token_id).any()


def test_block_cache_agreement_with_uncached_decoding():
  """The caches are approximations; report how often each changes a token (greedy decoding).
  With one block the modes coincide; with several, the prefix cache (nothing after the block
  goes stale) should agree at least as often as the dual cache."""
  config, params, denoise = CASES["llada"]
  prompt, mask = _prompts(config, (6, 3, 5, 4), seed=3)
  rates = {}
  for block_length in (32, 8, 4):
    sampler = S.Sampler.for_model(config, gen_length=32, block_length=block_length, steps=32)
    plain = np.asarray(S.generate(sampler, denoise, params, prompt, mask,
                                  jax.random.key(0)).generated_BG)
    for mode in ("dual", "prefix"):
      cached = S.generate(sampler.replace(cache=S.BlockCache(mode)), denoise, params, prompt,
                          mask, jax.random.key(0))
      rates[mode, block_length] = float((plain == np.asarray(cached.generated_BG)).mean())
  print("token agreement of cached vs uncached decoding by (mode, block length):", rates)
  assert all(0 < rate <= 1 for rate in rates.values())
  assert rates["dual", 32] == rates["prefix", 32]
  assert rates["prefix", 8] >= rates["dual", 8] and rates["prefix", 4] >= rates["dual", 4]


def test_cache_errors():
  config, params, denoise = CASES["dream"]
  with pytest.raises(ValueError, match="IMH scores with full forward passes; it takes no cache"):
    S.Sampler.for_model(config, gen_length=8, remasking=S.IMH(), cache=S.BlockCache())
  with pytest.raises(ValueError, match=r"refresh_every must be >= 1"):
    S.BlockCache(refresh_every=0)
  with pytest.raises(ValueError, match=r"mode must be one of \('dual', 'prefix'\)"):
    S.BlockCache("suffix")
  with pytest.raises(ValueError, match=r"suffix_blocks .* use it with mode='prefix'"):
    S.BlockCache(suffix_blocks=(1, 2))
  with pytest.raises(ValueError, match=r"suffix_blocks must be widths >= 1"):
    S.BlockCache("prefix", suffix_blocks=(0, 4))
  assert S.BlockCache("prefix").suffix_widths(6) == (1, 2, 4, 6)
  assert S.BlockCache("prefix", suffix_blocks=(3, 9)).suffix_widths(6) == (3, 6)
  sampler = S.Sampler.for_model(config, gen_length=8, block_length=4, cache=S.BlockCache())
  with pytest.raises(ValueError, match="needs a denoiser with a `with_cache` method"):
    S.generate(sampler, lambda p, t, m: denoise(p, t, m), params, *_prompts(config),
               jax.random.key(0))

  class DualOnly:  # a denoiser with the dual cache's methods only
    with_cache, window = denoise.with_cache, denoise.window

  with pytest.raises(ValueError, match="prefix block cache needs .* `suffix_window` method"):
    S.generate(sampler.replace(cache=S.BlockCache("prefix")), DualOnly(), params,
               *_prompts(config), jax.random.key(0))
  empty = jnp.zeros((1, 0), jnp.int32)
  with pytest.raises(ValueError, match="shifted logits .* needs a prompt"):
    S.generate(sampler, denoise, params, empty, empty.astype(bool), jax.random.key(0))
