"""Block diffusion decoding at temperature > 0 and with the other unmasking rules, against exact
output laws on the oracle denoiser (DESIGN.md §7), and the exact block cache under sampling.

The oracle sees a 2-token prompt (one whole block, prefilled) and returns the exact conditionals
of a random joint P over the V^4 generated tokens, decoded in two blocks of 2. Under block-causal
decoding the later block is all-mask while a block decodes, so these conditionals are what a
block-causal model would give. A deviation of N samples is flagged only beyond
`tv_sampling_bound` (exceeded by chance with probability < 1e-6); each law is also checked to
differ from the nearest alternative by more than twice that bound (the test has power).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dllm_jax import sampling as S
from dllm_jax.models import make_denoise
from dllm_jax.sampling import block_diffusion as bd
from dllm_jax.sampling import oracle
from dllm_jax.sampling.policy import policy_logits
from dllm_jax.sampling.oracle_exact import (_marginals, exact_distributions,
                                            position_first_distribution, total_variation,
                                            tv_sampling_bound)
from tests import llada2_fixtures as lf

V, G, P, BLOCK, N = 3, 4, 2, 2, 50_000
MASK, EOS = V, V + 1  # EOS never appears: every block is decoded
ORACLE = oracle.make_oracle_denoise(V, G)  # built outside any trace (it holds arrays)


@dataclasses.dataclass(frozen=True)
class BlockOracle:
  """The oracle as a block-cache denoiser: logits of the generated part from the exact
  conditionals (prompt positions get zeros; they are never committed), a dummy cache."""

  @property
  def config(self):
    return types.SimpleNamespace(attention_block=BLOCK)

  def _logits(self, log_p, tokens_BL):
    rows, length = tokens_BL.shape
    if length != P + G:  # the prefill of the prompt's block: its logits are unused
      return jnp.zeros((rows, length, V + 1))
    gen = ORACLE(log_p, tokens_BL[:, P:], None)
    return jnp.concatenate([jnp.zeros((rows, P, V + 1)), gen], axis=1)

  def with_cache(self, log_p, tokens_BL, mask_BL, start, width):
    logits = jax.lax.dynamic_slice_in_dim(self._logits(log_p, tokens_BL), start, width, 1)
    zeros = jnp.zeros((*tokens_BL.shape, 1, 1))
    return logits, [(zeros, zeros)]

  def window_with_cache(self, log_p, cache, tokens_BL, mask_BL, start, width):
    return self.with_cache(log_p, tokens_BL, mask_BL, start, width)[0], cache


def _joint(seed):
  log_p = oracle.random_joint(jax.random.key(seed), V, G, concentration=0.3)
  p = np.exp(np.asarray(log_p, np.float64))
  return log_p, p / p.sum()


def _empirical(decoder, log_p, seed=0, policy_params=None):
  prompt = np.zeros((N, P), np.int32)
  out = bd.generate_blocks(decoder, BlockOracle(), log_p, prompt, mask_id=MASK, eos_id=EOS,
                           pad_id=0, rng=jax.random.key(seed), policy_params=policy_params)
  assert (out.tokens < V).all()
  return np.bincount(oracle.sequence_index(out.tokens, V), minlength=V ** G) / N


def _tempered(m_V, temperature, top_k=None):
  if temperature == 0:
    return (m_V == m_V.max()).astype(float)
  q = np.where(m_V > 0, m_V, 0.0) ** (1 / temperature)
  if top_k is not None:
    q = np.where(m_V >= np.sort(m_V)[-top_k], q, 0.0)
  return q / q.sum()


def sample_then_select_law(p, temperature, schedule, tempered_score, threshold=None, top_k=None):
  """Exact law of: at every step draw all masked positions of the block at `temperature`
  (`top_k` filtered), score each by its draw's probability (tempered and filtered, or the
  plain p_i), commit the scores above `threshold` if there are >= the step's count of them,
  else that count, best first (ties: lower index). Also the smallest gap between compared
  scores over reachable draws (float32 rounding could flip a smaller one)."""
  sequences = oracle.all_sequences(V, G)
  law, gaps = np.zeros(V ** G), [np.inf]

  def walk(state, s, prob):
    masked = [i for i, t in enumerate(state) if t is None]
    if not masked:
      law[oracle.sequence_index(np.array([state]), V)[0]] += prob
      return
    block = masked[0] // BLOCK
    eligible = [i for i in masked if i // BLOCK == block]
    m = _marginals(p, sequences, V, state)
    q = {i: _tempered(m[i], temperature, top_k) for i in eligible}
    n = min(schedule[s], len(eligible))
    for values in itertools.product(range(V), repeat=len(eligible)):
      pr = np.prod([q[i][v] for i, v in zip(eligible, values)])
      if pr == 0:
        continue
      c = [q[i][v] if tempered_score else m[i][v] for i, v in zip(eligible, values)]
      order = sorted(range(len(c)), key=lambda j: (-c[j], j))
      high = [j for j in range(len(c)) if threshold is not None and c[j] > threshold]
      if threshold is not None:
        gaps.append(min(abs(x - threshold) for x in c))
      if len(high) >= schedule[s] and threshold is not None:
        chosen = high
      else:
        chosen = order[:n]
        if n < len(c):
          gaps.append(c[order[n - 1]] - c[order[n]])
      new = list(state)
      for j in chosen:
        new[eligible[j]] = values[j]
      done = all(new[i] is not None for i in eligible)
      walk(tuple(new), 0 if done else s + 1, prob * pr)

  walk((None,) * G, 0, 1.0)
  return law, min(gaps)


def _check(q, exact, alternative):
  tv, bound = total_variation(q, exact), tv_sampling_bound(exact, N)
  gap = total_variation(exact, alternative)
  print(f"TV(samples, exact) = {tv:.4f} (bound {bound:.4f}); TV(exact, alternative) = {gap:.4f}")
  assert tv <= bound
  assert gap > 2 * bound


def test_official_rule_samples_its_exact_law():
  """The default rule at T > 0: draws from the tempered (filtered) distribution, confidence =
  the draw's probability under it, threshold with the scheduled fallback (several tokens per
  step when more than one exceeds the threshold)."""
  temperature, threshold, top_k = 1.3, 0.4, 2
  log_p, p = _joint(3)
  exact, gap = sample_then_select_law(p, temperature, [1, 1], True, threshold, top_k)
  assert gap > 1e-4
  decoder = bd.BlockDiffusion(gen_length=G, block_length=BLOCK, steps=2, threshold=threshold,
                              temperature=temperature, top_k=top_k)
  # Alternative: the confidence read from the untempered, unfiltered distribution.
  alternative, _ = sample_then_select_law(p, temperature, [1, 1], False, threshold, top_k)
  _check(_empirical(decoder, log_p, seed=1), exact, alternative)


def test_random_order_at_temperature_one_samples_p():
  log_p, p = _joint(0)
  exact = exact_distributions(p, V, G, 1.0, [1], BLOCK)[1]
  assert total_variation(exact, p) < 1e-9
  decoder = bd.BlockDiffusion(gen_length=G, block_length=BLOCK, steps=2, remasking=S.Random(),
                              temperature=1.0)
  _check(_empirical(decoder, log_p, seed=2), exact,
         sample_then_select_law(p, 1.0, [1, 1], False)[0])


@pytest.mark.parametrize("name", ["low_confidence", "tpp", "egi"])
def test_rules_inside_blocks_sample_their_exact_laws(name):
  log_p, p = _joint(1)
  tpp = lambda t, first=None: position_first_distribution(p, V, G, t, BLOCK, first)
  if name == "low_confidence":
    rule, t = S.LowConfidence(), 0.8
    exact, gap = sample_then_select_law(p, t, [1, 1], False)
    assert gap > 1e-4
    alternative = tpp(t)[0]
  elif name == "tpp":
    rule, t = S.RankThenSample(), 0.6
    (exact, gap), alternative = tpp(t), sample_then_select_law(p, t, [1, 1], False)[0]
    assert gap > 1e-4
  else:
    rule, t = S.EGI(first_temperature=1.5), 0.0
    (exact, gap), alternative = tpp(t, 1.5), tpp(t)[0]
    assert gap > 1e-4
  decoder = bd.BlockDiffusion(gen_length=G, block_length=BLOCK, steps=2, remasking=rule,
                              temperature=t)
  _check(_empirical(decoder, log_p, seed=3), exact, alternative)


def test_imh_inside_blocks_samples_its_exact_law():
  """IMH with the mean-field weight summed over the block's masks left (later blocks are not
  computed by the block decoder), one token per step, K = 4 candidates at alpha = 3."""
  log_p, p = _joint(2)
  laws = exact_distributions(p, V, G, 3.0, [1, 4], BLOCK, block_suffix=True)
  decoder = bd.BlockDiffusion(gen_length=G, block_length=BLOCK, steps=2,
                              remasking=S.IMH(alpha=3.0, num_candidates=4))
  _check(_empirical(decoder, log_p, seed=6), laws[4], laws[1])


def learned_policy_law(p, rule, params, temperature):
  """Exact law of the learned policy inside blocks: per step every masked position of the block
  is unmasked with probability sigmoid(z_i / tau) (z from the network on the window's top-1
  probabilities, mask bits and steps taken / G), the best z when none is; the values at the
  temperature. Also the smallest gap between the fallback's two candidates."""
  sequences = oracle.all_sequences(V, G)
  law, gaps = np.zeros(V ** G), [np.inf]
  network = jax.jit(functools.partial(policy_logits, rule.network))

  @functools.lru_cache(maxsize=None)
  def logits(state, steps, window):
    m = _marginals(p, sequences, V, state)
    z = network(params, jnp.asarray([[m[i].max() for i in window]], jnp.float32),
                jnp.asarray([[state[i] is None for i in window]]),
                jnp.asarray([steps / G], jnp.float32))
    return m, np.asarray(z, np.float64)[0]

  def walk(state, steps, prob):
    masked = [i for i, t in enumerate(state) if t is None]
    if not masked:
      law[oracle.sequence_index(np.array([state]), V)[0]] += prob
      return
    window = tuple(range(masked[0] // BLOCK * BLOCK, (masked[0] // BLOCK + 1) * BLOCK))
    m, z = logits(state, steps, window)
    eligible = [j for j, i in enumerate(window) if state[i] is None]
    keep = 1 / (1 + np.exp(-z / rule.temperature))
    for bits in itertools.product([False, True], repeat=len(eligible)):
      pa = np.prod([keep[j] if b else 1 - keep[j] for j, b in zip(eligible, bits)])
      chosen = [j for j, b in zip(eligible, bits) if b]
      if not chosen:
        order = sorted(eligible, key=lambda j: (-z[j], j))
        chosen = order[:1]
        if len(order) > 1:
          gaps.append(z[order[0]] - z[order[1]])
      for values in itertools.product(range(V), repeat=len(chosen)):
        pv = np.prod([_tempered(m[window[j]], temperature)[v] for j, v in zip(chosen, values)])
        new = list(state)
        for j, v in zip(chosen, values):
          new[window[j]] = v
        walk(tuple(new), steps + 1, prob * pa * pv)

  walk((None,) * G, 0, 1.0)
  return law, min(gaps)


def test_learned_policy_inside_blocks_samples_its_exact_law():
  log_p, p = _joint(2)
  rule = S.LearnedPolicy(S.PolicyConfig(width=8, num_heads=2, mlp_width=16, time_features=8))
  params = S.init_policy(rule.network, seed=0)
  # Random weights everywhere (the smart init's zero adaLN would make z ignore its inputs).
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(5), len(leaves))
  params = jax.tree.unflatten(tree, [x + 0.7 * jax.random.normal(k, x.shape, x.dtype)
                                     for x, k in zip(leaves, keys)])
  exact, gap = learned_policy_law(p, rule, params, 0.8)
  assert gap > 1e-4
  decoder = bd.BlockDiffusion(gen_length=G, block_length=BLOCK, steps=2, remasking=rule,
                              temperature=0.8)
  _check(_empirical(decoder, log_p, seed=4, policy_params=params), exact,
         exact_distributions(p, V, G, 1 / 0.8, [1], BLOCK)[1])


def _tiny_llada2():
  cfg = lf.llada2_hf_config(layers=2, experts=4, groups=2, topk_group=1)
  tensors = lf.llada2_tensors(cfg, seed=4)
  tensors["lm_head.weight"] = tensors["lm_head.weight"] * 3.0
  return cfg, tensors


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  cfg, tensors = _tiny_llada2()
  return lf.jax_params(cfg, tensors, tmp_path_factory.mktemp("cfg"))


def test_imh_keeps_the_cache_exact(tiny):
  """IMH, whose candidates are extra window passes against the cache, keeps the cache exact
  (it equals a fresh forward of the final canvas), and the uncached loop (the canvas recomputed
  at every pass) draws the same tokens from the same keys. (The other rules and the sampling
  default share the loop of the T = 0 default, whose cache is tested in
  tests/torch_ref/test_llada2_generate.py: only the committed positions differ.)"""
  config, params = tiny
  denoise = make_denoise(config)
  prompts = [[5, 17, 99, 3, 42, 8, 61], [11, 7]]
  tokens = np.full((2, 7), 151, np.int32)
  mask = np.zeros_like(tokens, bool)
  for b, prompt in enumerate(prompts):
    tokens[b, 7 - len(prompt):], mask[b, 7 - len(prompt):] = prompt, True
  keys = jax.random.split(jax.random.key(7), 2)
  decoder = bd.BlockDiffusion(gen_length=8, block_length=4, steps=4,
                              remasking=S.IMH(alpha=2.0, num_candidates=3))
  run = lambda d, t, m, k: bd.generate_blocks(d, denoise, params, t, m, mask_id=150, eos_id=159,
                                              pad_id=151, rng=k)
  out = run(decoder, tokens, mask, keys)
  assert (out.tokens != 150).all()
  _, fresh = denoise.with_cache(params, out.canvas, out.layout.valid)
  valid = out.layout.valid
  for (k, v), (fk, fv) in zip(out.cache, fresh):
    np.testing.assert_allclose(np.asarray(k)[valid], np.asarray(fk)[valid], atol=2e-5)
    np.testing.assert_allclose(np.asarray(v)[valid], np.asarray(fv)[valid], atol=2e-5)
  plain = run(dataclasses.replace(decoder, exact_cache=False), tokens, mask, keys)
  np.testing.assert_array_equal(plain.tokens, out.tokens)
  assert out.forward_passes == plain.forward_passes
  # Power: another key changes the sample.
  assert (run(decoder, tokens, mask, jax.random.split(jax.random.key(8), 2)).tokens
          != out.tokens).any()


def test_bad_settings_are_refused():
  with pytest.raises(ValueError, match="SMC is not supported inside blocks"):
    bd.BlockDiffusion(gen_length=4, remasking=S.SMC())
  with pytest.raises(ValueError, match="leave temperature, top_p and top_k unset"):
    bd.BlockDiffusion(gen_length=4, remasking=S.IMH(), temperature=0.5)
  with pytest.raises(ValueError, match="editing_threshold works with the default rule only"):
    bd.BlockDiffusion(gen_length=4, remasking=S.Random(), editing_threshold=0.5)
  with pytest.raises(ValueError, match="remasking must be None"):
    bd.BlockDiffusion(gen_length=4, remasking="random")
  with pytest.raises(ValueError, match="temperature must be >= 0"):
    bd.BlockDiffusion(gen_length=4, temperature=-1.0)
  log_p, _ = _joint(0)
  with pytest.raises(ValueError, match="pass rng="):
    bd.generate_blocks(bd.BlockDiffusion(gen_length=G, block_length=BLOCK, temperature=0.5),
                       BlockOracle(), log_p, np.zeros((1, P), np.int32), mask_id=MASK,
                       eos_id=EOS, pad_id=0)
