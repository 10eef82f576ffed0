"""The compiled decode loop against a plain Python loop, and its invariants."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dllm_jax import models
from dllm_jax import sampling as S
from tests.reference_sampler import reference_generate

CONFIG = models.llada_tiny()
PARAMS = models.init_params(CONFIG, seed=7)
DENOISE = models.make_denoise(CONFIG)
PAD = CONFIG.pad_token_id


def SHARP_DENOISE(params, tokens, mask):
  """The tiny random model with 8x logits: peaked, varied distributions make ranking rules
  (tempered vs untempered confidence, ties) distinguishable."""
  return 8.0 * DENOISE(params, tokens, mask)


def _prompts(lengths, seed=0):
  """Left-padded prompts of the given lengths (tokens 0..199, never special)."""
  rng = np.random.default_rng(seed)
  P = max(lengths)
  tokens = np.full((len(lengths), P), PAD, np.int32)
  mask = np.zeros((len(lengths), P), bool)
  for row, n in enumerate(lengths):
    tokens[row, P - n:] = rng.integers(0, 200, n)
    mask[row, P - n:] = True
  return tokens, mask


@pytest.mark.parametrize("rule,temperature,block_length,steps,cfg", [
    (S.LowConfidence(), 0.0, None, 12, 0.0),
    (S.LowConfidence(), 0.8, 4, 6, 0.0),
    (S.Random(), 1.0, 6, 4, 0.0),
    (S.LowConfidence(), 0.5, 4, 12, 1.5),
    (S.Random(), 0.0, 12, 5, 0.0),  # 12 masks over 5 steps: 3, 3, 2, 2, 2
])
def test_compiled_loop_equals_python_loop(rule, temperature, block_length, steps, cfg):
  sampler = S.Sampler.for_model(CONFIG, gen_length=12, block_length=block_length, steps=steps,
                                remasking=rule, temperature=temperature, cfg_scale=cfg)
  prompt, mask = _prompts([5, 3, 7])
  rng = jax.random.key(11)
  out = S.generate(sampler, SHARP_DENOISE, PARAMS, prompt, mask, rng)
  want_tokens, want_steps, _ = reference_generate(sampler, SHARP_DENOISE, PARAMS, prompt, mask,
                                                  rng)
  np.testing.assert_array_equal(np.asarray(out.tokens_BL), want_tokens)
  np.testing.assert_array_equal(np.asarray(out.commit_step_BG), want_steps)
  assert int(out.steps) == sampler.total_steps
  np.testing.assert_array_equal(out.nfe_B, sampler.total_steps * (2 if cfg else 1))


def _recording_denoise():
  """The model, plus a host callback that records every canvas the loop evaluates."""
  seen = []

  def record(tokens):
    seen.append(np.asarray(tokens))

  def denoise(params, tokens, mask):
    jax.debug.callback(record, tokens, ordered=True)
    return DENOISE(params, tokens, mask)

  return denoise, seen


@pytest.mark.parametrize("rule", [S.LowConfidence(), S.Random(), S.MaskGitPlus(alg_temp=0.5),
                                  S.TopKMargin(), S.Entropy()])
def test_each_step_commits_the_schedule_inside_its_block(rule):
  sampler = S.Sampler.for_model(CONFIG, gen_length=16, block_length=8, steps=6, remasking=rule,
                                temperature=0.9)
  denoise, seen = _recording_denoise()
  prompt, mask = _prompts([4, 2])
  out = S.generate(sampler, denoise, PARAMS, prompt, mask, jax.random.key(3))
  jax.block_until_ready(out)
  canvases = seen + [np.asarray(out.tokens_BL)]
  assert len(canvases) == 7
  P, mask_id = prompt.shape[1], CONFIG.mask_token_id
  schedule = [3, 3, 2, 3, 3, 2]  # 8 masks over 3 steps per block
  for t in range(6):
    before, after = canvases[t][:, P:], canvases[t + 1][:, P:]
    changed = before != after
    assert np.all(before[changed] == mask_id), "a committed token changed"
    assert np.all(after[changed] != mask_id)
    np.testing.assert_array_equal(canvases[t][:, :P], prompt)
    block = t // 3
    inside = np.zeros(16, bool)
    inside[block * 8:(block + 1) * 8] = True
    assert not changed[:, ~inside].any(), f"step {t} committed outside block {block}"
    np.testing.assert_array_equal(changed.sum(1), schedule[t])
  assert not (canvases[-1] == mask_id).any()


def test_threshold_rule_commits_confident_positions_and_stops_early():
  """Fast-dLLM: every position >= threshold, at least one per step; the loop ends when done."""
  sampler = S.Sampler.for_model(CONFIG, gen_length=16, block_length=8,
                                remasking=S.Threshold(0.02), temperature=0.0)
  # A denoiser that is confident about every third position and unsure elsewhere.
  def denoise(params, tokens, mask):
    logits = DENOISE(params, tokens, mask)
    confident = (jnp.arange(tokens.shape[1]) % 3 == 0)[None, :, None]
    peak = jax.nn.one_hot(jnp.arange(tokens.shape[1]) % 200, logits.shape[-1]) * 20.0
    return jnp.where(confident, logits + peak, logits)

  prompt, mask = _prompts([4, 4])
  out = S.generate(sampler, denoise, PARAMS, prompt, mask, jax.random.key(0))
  steps = np.asarray(out.commit_step_BG)
  assert not (np.asarray(out.generated_BG) == CONFIG.mask_token_id).any()
  assert int(out.steps) < 16 and int(out.steps) == steps.max() + 1
  assert np.all(out.nfe_B == int(out.steps))
  confidence = np.asarray(out.confidence_BG)
  for row in range(2):
    for t in range(int(out.steps)):
      at_t = steps[row] == t
      assert at_t.sum() >= 1
      # All but the best of a step are above the threshold.
      assert (confidence[row][at_t] >= 0.02).sum() >= at_t.sum() - 1
  # Blocks are decoded in order.
  assert steps[:, :8].max() < steps[:, 8:].min()


def test_temperature_zero_is_deterministic():
  sampler = S.Sampler.for_model(CONFIG, gen_length=8, block_length=4, steps=8)
  prompt, mask = _prompts([5, 3])
  a = S.generate(sampler, DENOISE, PARAMS, prompt, mask, jax.random.key(1))
  b = S.generate(sampler, DENOISE, PARAMS, prompt, mask, jax.random.key(2))
  np.testing.assert_array_equal(a.tokens_BL, b.tokens_BL)
  hot = S.generate(sampler.replace(temperature=1.0), DENOISE, PARAMS, prompt, mask,
                   jax.random.key(2))
  assert not np.array_equal(hot.tokens_BL, a.tokens_BL)


@pytest.mark.parametrize("config", [models.llada_tiny(), models.dream_tiny()])
def test_prompt_alone_equals_prompt_in_padded_batch(config):
  params = models.init_params(config, seed=1)
  denoise = models.make_denoise(config)
  sampler = S.Sampler.for_model(config, gen_length=8, block_length=4, steps=8)
  rng = np.random.default_rng(5)
  prompts = [rng.integers(0, 200, n) for n in (6, 2, 9)]
  P = 9
  batch = np.full((3, P), config.pad_token_id, np.int32)
  for row, p in enumerate(prompts):
    batch[row, P - len(p):] = p
  out = S.generate(sampler, denoise, params, batch, batch != config.pad_token_id,
                   jax.random.key(0))
  for row, p in enumerate(prompts):
    alone = S.generate(sampler, denoise, params, p[None], np.ones((1, len(p)), bool),
                       jax.random.key(9))
    np.testing.assert_array_equal(out.generated_BG[row], alone.generated_BG[0])


def test_vmap_over_keys_gives_distinct_samples():
  sampler = S.Sampler.for_model(CONFIG, gen_length=8, steps=8, temperature=1.0)
  prompt, mask = _prompts([4])
  keys = jax.random.split(jax.random.key(0), 6)
  many = jax.vmap(lambda k: S.generate(sampler, DENOISE, PARAMS, prompt, mask, k))(keys)
  assert many.tokens_BL.shape == (6, 1, 12)
  assert len({tuple(t) for t in np.asarray(many.generated_BG[:, 0])}) == 6
  one = S.generate(sampler, DENOISE, PARAMS, prompt, mask, keys[3])
  np.testing.assert_array_equal(many.tokens_BL[3], one.tokens_BL)


def test_mask_and_forbidden_tokens_are_never_generated():
  def denoise(params, tokens, mask):  # a model that loves the mask and EOS tokens
    logits = DENOISE(params, tokens, mask)
    return logits.at[..., CONFIG.mask_token_id].add(50.0).at[..., CONFIG.eos_token_id].add(40.0)

  sampler = S.Sampler.for_model(CONFIG, gen_length=8, steps=8, temperature=1.0,
                                remasking=S.Random(), forbid_eos=True)
  prompt, mask = _prompts([3, 5])
  out = S.generate(sampler, denoise, PARAMS, prompt, mask, jax.random.key(0))
  generated = np.asarray(out.generated_BG)
  assert not np.isin(generated, [CONFIG.mask_token_id, CONFIG.eos_token_id]).any()
  allowed = S.generate(sampler.replace(forbid_eos=False), denoise, PARAMS, prompt, mask,
                       jax.random.key(0))
  assert (np.asarray(allowed.generated_BG) == CONFIG.eos_token_id).all()


def test_eos_confidence_inf_commits_eos_last():
  def denoise(params, tokens, mask):  # EOS is the confident choice at every position ...
    logits = DENOISE(params, tokens, mask)
    return logits.at[..., CONFIG.eos_token_id].add(30.0)

  sampler = S.Sampler.for_model(CONFIG, gen_length=8, steps=8, eos_confidence_inf=True)
  prompt, mask = _prompts([3])
  out = S.generate(sampler, denoise, PARAMS, prompt, mask, jax.random.key(0))
  # ... so every step still commits one position (EOS everywhere) in left-to-right order.
  np.testing.assert_array_equal(out.commit_step_BG[0], np.arange(8))
  plain = S.generate(sampler.replace(eos_confidence_inf=False), denoise, PARAMS, prompt, mask,
                     jax.random.key(0))
  np.testing.assert_array_equal(np.sort(plain.commit_step_BG[0]), np.arange(8))


def test_statistics():
  sampler = S.Sampler.for_model(CONFIG, gen_length=8, block_length=4, steps=4, temperature=0.7)
  prompt, mask = _prompts([5, 2])
  out = S.generate(sampler, DENOISE, PARAMS, prompt, mask, jax.random.key(4))
  logits = np.asarray(DENOISE(PARAMS, np.asarray(out.tokens_BL),
                              np.concatenate([mask, np.ones((2, 8), bool)], 1)))
  assert np.all(np.asarray(out.logprob_BG) < 0)
  assert np.all((np.asarray(out.confidence_BG) > 0) & (np.asarray(out.confidence_BG) <= 1))
  np.testing.assert_array_equal(np.sort(np.asarray(out.commit_step_BG), 1),
                                [[0, 0, 1, 1, 2, 2, 3, 3]] * 2)
  assert logits.shape == (2, 13, CONFIG.vocab_size)


@pytest.mark.parametrize("fields,message", [
    (dict(gen_length=10, block_length=4), r"gen_length \(10\) must be divisible by block_length"),
    (dict(gen_length=8, block_length=4, steps=5), r"steps \(5\) must be divisible by the number"),
    (dict(gen_length=8, block_length=16), r"block_length must be in \[1, gen_length=8\]"),
    (dict(gen_length=0), "gen_length must be >= 1"),
    (dict(gen_length=8, temperature=-1.0), "temperature must be >= 0"),
    (dict(gen_length=8, top_p=1.5), r"top_p must be in \(0, 1\]"),
    (dict(gen_length=8, remasking=S.Threshold(0.9), steps=8), "leave steps unset"),
    (dict(gen_length=8, remasking=S.IMH(alpha=2.0), temperature=0.5), "set IMH"),
    (dict(gen_length=8, remasking="low_confidence"), "remasking must be one of"),
    (dict(gen_length=8, cfg_scale=-1.0), "cfg_scale must be >= 0"),
])
def test_bad_sampler_configs(fields, message):
  with pytest.raises(ValueError, match=message):
    S.Sampler(mask_token_id=250, **fields)


@pytest.mark.parametrize("make,message", [
    (lambda: S.IMH(alpha=0.5), r"alpha must be >= 1"),
    (lambda: S.IMH(num_candidates=0), r"num_candidates \(K\) must be >= 1"),
    (lambda: S.Threshold(0.0), r"threshold must be in \(0, 1\]"),
    (lambda: S.MaskGitPlus(alg_temp=-1.0), "alg_temp must be >= 0"),
    (lambda: S.DreamSchedule(eps=0.0), r"eps must be in \(0, 1\)"),
])
def test_bad_rules(make, message):
  with pytest.raises(ValueError, match=message):
    make()


def test_prompt_beyond_context_is_rejected():
  sampler = S.Sampler.for_model(CONFIG, gen_length=64, steps=64)
  prompt = np.zeros((1, CONFIG.max_length - 32), np.int32)
  with pytest.raises(ValueError, match=r"prompt length 96 \+ gen_length 64 = 160 exceeds the "
                                       r"model's context of 128"):
    S.generate(sampler, DENOISE, PARAMS, prompt, np.ones_like(prompt, bool), jax.random.key(0))


def test_a_row_does_not_depend_on_its_batch():
  """With one key per row, a sample is the same alone or among other prompts (T > 0)."""
  sampler = S.Sampler.for_model(CONFIG, gen_length=8, block_length=4, steps=8,
                                remasking=S.Random(), temperature=1.0)
  prompt, mask = _prompts([5, 5, 5], seed=2)
  keys = jax.random.split(jax.random.key(5), 3)
  batch = S.generate(sampler, DENOISE, PARAMS, prompt, mask, keys)
  alone = S.generate(sampler, DENOISE, PARAMS, prompt[1:2], mask[1:2], keys[1:2])
  np.testing.assert_array_equal(batch.tokens_BL[1], alone.tokens_BL[0])
  assert not np.array_equal(batch.generated_BG[0], batch.generated_BG[1])


def test_threshold_blocks_advance_in_lockstep_and_rows_stay_batch_independent():
  """A row that finishes its block early waits (no commits, no evaluations counted), and its
  sample is the one it gets alone (T > 0)."""
  def denoise(params, tokens, mask):  # rows whose prompt starts with 7 are sure of everything
    logits = DENOISE(params, tokens, mask)
    peak = jax.nn.one_hot(jnp.arange(tokens.shape[1]) % 200, logits.shape[-1]) * 30.0
    return jnp.where((tokens[:, :1] == 7)[..., None], logits + peak, logits)

  sampler = S.Sampler.for_model(CONFIG, gen_length=8, block_length=4,
                                remasking=S.Threshold(0.5), temperature=0.7)
  prompt, mask = _prompts([4, 4], seed=1)
  prompt[0, 0] = 7
  keys = jax.random.split(jax.random.key(2), 2)
  out = S.generate(sampler, denoise, PARAMS, prompt, mask, keys)
  steps = np.asarray(out.commit_step_BG)
  assert (steps[0, :4] == 0).all() and (steps[0, 4:] == steps[1, :4].max() + 1).all()
  assert int(out.nfe_B[0]) == 2 and int(out.nfe_B[1]) == int(out.steps) > 2
  for row in range(2):
    alone = S.generate(sampler, denoise, PARAMS, prompt[row:row + 1], mask[row:row + 1],
                       keys[row:row + 1])
    np.testing.assert_array_equal(alone.tokens_BL[0], out.tokens_BL[row])
