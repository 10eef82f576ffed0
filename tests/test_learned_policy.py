"""The learned unmasking policy: its network, and the compiled loop against a plain Python loop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dllm_jax import models
from dllm_jax import sampling as S
from dllm_jax.sampling import learned_policy, policy

CONFIG = models.llada_tiny()
PARAMS = models.init_params(CONFIG, seed=7)
DENOISE = models.make_denoise(CONFIG)
NET = policy.PolicyConfig()
# The network under jit (a pure function of its params), so the plain loop below stays quick.
POLICY_LOGITS = jax.jit(policy.policy_logits, static_argnums=0)


def SHARP_DENOISE(params, tokens, mask):
  """The tiny model with 8x logits: top-1 probabilities spread over (0, 1)."""
  return 8.0 * DENOISE(params, tokens, mask)


def _trained_like_policy(seed=0):
  """A policy whose adaLN is not zero (as after training): every input matters."""
  params = policy.init_policy(NET, seed)
  rng = np.random.default_rng(seed)
  params["modulation"]["kernel"] = jnp.asarray(rng.normal(0, 0.3, (128, 768)), jnp.float32)
  params["head"]["bias"] = jnp.asarray([0.5], jnp.float32)
  return params


def test_network_size_and_smart_init():
  params = policy.init_policy(NET)
  assert policy.param_count(params) == 330_753  # "about 300K"
  c = jax.random.uniform(jax.random.key(0), (2, 8))
  m = jnp.array([[1, 1, 0, 1, 0, 1, 1, 0], [0] * 8], bool)
  logits = POLICY_LOGITS(NET, params, c, m, jnp.array([0.0, 0.5]))
  # Zero adaLN: the block is the identity, so the mask bit and the step count do not matter yet.
  same = POLICY_LOGITS(NET, params, c, ~m, jnp.array([0.9, 0.1]))
  np.testing.assert_allclose(logits, same, atol=1e-6)
  assert np.all(np.asarray(jax.nn.sigmoid(logits)) < 0.3)  # negative output bias
  trained = _trained_like_policy()
  a = POLICY_LOGITS(NET, trained, c, m, jnp.array([0.0, 0.5]))
  b = POLICY_LOGITS(NET, trained, c, ~m, jnp.array([0.9, 0.1]))
  assert np.abs(np.asarray(a - b)).max() > 1e-2


def _python_loop(rule, sampler, denoise, params, policy_params, prompt, rng):
  """The LearnedPolicy decode as a plain loop, one row at a time where rows differ."""
  denoise = jax.jit(denoise)
  B, P = prompt.shape
  G, W, mask_id = sampler.gen_length, sampler.block_len, sampler.mask_token_id
  x = np.concatenate([prompt, np.full((B, G), mask_id)], 1).astype(np.int32)
  attention = np.ones_like(x, bool)
  row_keys = jax.random.split(rng, B)
  row_steps = np.zeros(B, int)
  commit_step = np.full((B, G), -1)
  logprobs = np.zeros((B, sampler.total_steps))
  step = 0
  while (x[:, P:] == mask_id).any() and step < sampler.total_steps:
    masked = x[:, P:] == mask_id
    block = min(g // W for g in range(G) if masked[:, g].any())
    logits = np.array(denoise(params, x, attention), np.float32)[:, P + block * W:
                                                                   P + (block + 1) * W]
    logits[..., mask_id] = -np.inf
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    for b in range(B):
      eligible = masked[b, block * W:(block + 1) * W]
      if not eligible.any():
        continue
      key_token, _, key_select = jax.random.split(jax.random.fold_in(row_keys[b], row_steps[b]),
                                                  3)
      if sampler.temperature:
        gumbel = np.asarray(jax.random.gumbel(key_token, (G, logits.shape[-1]), np.float32))
        x0 = np.argmax(logits[b] / np.float32(sampler.temperature)
                       + gumbel[block * W:(block + 1) * W], -1)
      else:
        x0 = np.argmax(logits[b], -1)
      z = np.asarray(POLICY_LOGITS(NET, policy_params, probs[b].max(-1)[None],
                                          eligible[None], jnp.array([row_steps[b] / G])))[0]
      u = np.asarray(jax.random.uniform(key_select, (G,), jnp.float32))[block * W:
                                                                        (block + 1) * W]
      p = 1 / (1 + np.exp(-z / rule.temperature))
      action = eligible & (u < p)
      logprobs[b, step] = np.where(action, np.log(p), np.log1p(-p))[eligible].sum()
      commit = action if action.any() else (np.arange(W) == np.argmax(np.where(eligible, z,
                                                                               -np.inf)))
      for w in np.flatnonzero(commit):
        x[b, P + block * W + w] = x0[w]
        commit_step[b, block * W + w] = step
      row_steps[b] += 1
    step += 1
  return x, commit_step, logprobs, row_steps, step


@pytest.mark.parametrize("block_length,temperature,policy_temperature", [
    (None, 0.0, 1.0), (4, 0.0, 0.5), (4, 0.8, 1.0)])
def test_compiled_loop_equals_python_loop(block_length, temperature, policy_temperature):
  rule = S.LearnedPolicy(temperature=policy_temperature)
  sampler = S.Sampler.for_model(CONFIG, gen_length=12, block_length=block_length,
                                remasking=rule, temperature=temperature)
  policy_params = _trained_like_policy(1)
  prompt = np.random.default_rng(0).integers(0, 200, (3, 5)).astype(np.int32)
  rng = jax.random.key(4)
  out = S.generate(sampler, SHARP_DENOISE, PARAMS, prompt, np.ones_like(prompt, bool), rng,
                   policy_params=policy_params)
  tokens, commit_step, logprobs, row_steps, steps = _python_loop(
      rule, sampler, SHARP_DENOISE, PARAMS, policy_params, prompt, rng)
  np.testing.assert_array_equal(out.tokens_BL, tokens)
  np.testing.assert_array_equal(out.commit_step_BG, commit_step)
  np.testing.assert_allclose(out.policy_trace.logprob_BS, logprobs, atol=1e-4)
  assert int(out.steps) == steps
  # NFE equals the steps each row took (one forward pass per active step).
  np.testing.assert_array_equal(out.nfe_B, row_steps)
  np.testing.assert_array_equal(out.policy_trace.active_BS.sum(1), row_steps)
  assert len(set(np.asarray(out.commit_step_BG).ravel())) == steps  # every step commits
  # Some step commits several positions, some only one: the choice is the policy's.
  per_step = [np.sum(np.asarray(out.commit_step_BG)[0] == s) for s in range(steps)]
  assert max(per_step) > 1 or min(per_step) == 1
  # The trace lets training recompute every action's log-probability without the dLLM.
  again = learned_policy.trace_log_probs(rule, policy_params, out.policy_trace)
  np.testing.assert_allclose(again, out.policy_trace.logprob_BS, atol=1e-5)


def test_policy_params_are_jit_arguments():
  sampler = S.Sampler.for_model(CONFIG, gen_length=8, remasking=S.LearnedPolicy())
  prompt = jnp.ones((2, 3), jnp.int32)
  run = lambda p: S.generate(sampler, DENOISE, PARAMS, prompt, jnp.ones((2, 3), bool),
                             jax.random.key(0), policy_params=p)
  first = run(policy.init_policy(NET, 0))
  size = S.generate._cache_size()
  eager = run(_trained_like_policy(2))
  assert S.generate._cache_size() == size  # new weights, no new compilation
  assert int(first.steps) != int(eager.steps)  # and they do change the decode


def test_bad_inputs_are_named():
  prompt = jnp.ones((1, 3), jnp.int32)
  mask = jnp.ones((1, 3), bool)
  learned = S.Sampler.for_model(CONFIG, gen_length=8, remasking=S.LearnedPolicy())
  with pytest.raises(ValueError, match="policy_params go with remasking=LearnedPolicy"):
    S.generate(learned, DENOISE, PARAMS, prompt, mask, jax.random.key(0))
  with pytest.raises(ValueError, match="policy_params go with remasking=LearnedPolicy"):
    S.generate(learned.replace(remasking=S.Random()), DENOISE, PARAMS, prompt, mask,
               jax.random.key(0), policy_params=policy.init_policy(NET))
  with pytest.raises(ValueError, match="LearnedPolicy runs each block until it is complete"):
    S.Sampler.for_model(CONFIG, gen_length=8, steps=8, remasking=S.LearnedPolicy())
  with pytest.raises(ValueError, match="temperature must be > 0"):
    S.LearnedPolicy(temperature=0.0)
