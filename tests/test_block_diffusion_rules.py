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
                                            position_first_distribution,
                                            rollout_imh_distribution, smc_particle_law,
                                            total_variation,
                                            tv_sampling_bound)
from tests import llada2_fixtures as lf

V, G, P, BLOCK, N = 3, 4, 2, 2, 50_000
MASK, EOS = V, V + 1  # EOS never appears: every block is decoded


@dataclasses.dataclass(frozen=True)
class BlockOracle:
  """The oracle as a block-cache denoiser: logits of the generated part from the exact
  conditionals (prompt positions get zeros; they are never committed), a dummy cache. The
  prompt is a whole number of blocks (prefilled), the oracle's joint covers `gen` tokens."""

  vocab: int = V
  gen: int = G
  block: int = BLOCK
  prompt: int = P

  @property
  def config(self):
    return types.SimpleNamespace(attention_block=self.block)

  def _logits(self, log_p, tokens_BL):
    rows, length = tokens_BL.shape
    if length != self.prompt + self.gen:  # the prefill of the prompt's blocks: logits unused
      return jnp.zeros((rows, length, self.vocab + 1))
    gen = oracle.make_oracle_denoise(self.vocab, self.gen)(log_p, tokens_BL[:, self.prompt:],
                                                           None)
    return jnp.concatenate([jnp.zeros((rows, self.prompt, self.vocab + 1)), gen], axis=1)

  def with_cache(self, log_p, tokens_BL, mask_BL, start, width):
    logits = jax.lax.dynamic_slice_in_dim(self._logits(log_p, tokens_BL), start, width, 1)
    zeros = jnp.zeros((*tokens_BL.shape, 1, 1))
    return logits, [(zeros, zeros)]

  def window_with_cache(self, log_p, cache, tokens_BL, mask_BL, start, width):
    return self.with_cache(log_p, tokens_BL, mask_BL, start, width)[0], cache


def _joint(seed, vocab=V, gen=G):
  log_p = oracle.random_joint(jax.random.key(seed), vocab, gen, concentration=0.3)
  p = np.exp(np.asarray(log_p, np.float64))
  return log_p, p / p.sum()


def _empirical(decoder, log_p, seed=0, policy_params=None, denoiser=BlockOracle(), runs=N,
               out_nfe=None):
  """The law of `runs` samples; `out_nfe` (a list) receives each row's forward count."""
  vocab = denoiser.vocab
  oracle.make_oracle_denoise(vocab, denoiser.gen)  # built outside the trace (it holds arrays)
  prompt = np.zeros((runs, denoiser.prompt), np.int32)
  out = bd.generate_blocks(decoder, denoiser, log_p, prompt, mask_id=vocab, eos_id=vocab + 1,
                           pad_id=0, rng=jax.random.key(seed), policy_params=policy_params)
  assert (out.tokens < vocab).all()
  if out_nfe is not None:
    out_nfe.append((out.nfe_B, out.forward_passes))
  return np.bincount(oracle.sequence_index(out.tokens, vocab), minlength=vocab ** denoiser.gen
                     ) / runs


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


def _check(q, exact, alternative, runs=N):
  tv, bound = total_variation(q, exact), tv_sampling_bound(exact, runs)
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


def test_rollout_imh_in_one_block_samples_the_main_loops_law():
  """RolloutIMH with one block covering the whole generation (a 4-token prompt block, then one
  block of 4): the rollouts complete every mask left, so the law is the main loop's exact law
  (`rollout_imh_distribution`), not mean-field IMH's; each row's NFE is the block loop's cost,
  (1 + K)(G + 1) window passes (one per step, K candidates, and the closing step) plus
  K R (G - 1)(G - 2) / 2 rollout passes (one token per pass)."""
  K, R, runs = 4, 2, 20_000
  log_p, p = _joint(1)
  exact = rollout_imh_distribution(p, V, G, 2.0, [K], R)[K]
  decoder = bd.BlockDiffusion(gen_length=G, block_length=G, steps=G,
                              remasking=S.RolloutIMH(alpha=2.0, num_candidates=K, num_rollouts=R))
  nfe = []
  law = _empirical(decoder, log_p, seed=9, denoiser=BlockOracle(block=G, prompt=G), runs=runs,
                   out_nfe=nfe)
  _check(law, exact, exact_distributions(p, V, G, 2.0, [K])[K], runs)
  cost = (1 + K) * (G + 1) + K * R * (G - 1) * (G - 2) // 2
  assert np.all(nfe[0][0] == cost) and nfe[0][1] == cost


def test_rollout_imh_inside_blocks_completes_the_block_only():
  """Two blocks of 3 (V = 2): the rollouts complete the current block's masks only, so the law
  is `rollout_imh_distribution(..., block_suffix=True)`, far from the main loop's law with
  rollouts over every mask left (later blocks included)."""
  vocab, gen, block, K, R, runs = 2, 6, 3, 4, 2, 20_000
  log_p, p = _joint(2, vocab, gen)
  laws = {suffix: rollout_imh_distribution(p, vocab, gen, 2.0, [K], R, block_length=block,
                                           block_suffix=suffix)[K] for suffix in (True, False)}
  decoder = bd.BlockDiffusion(gen_length=gen, block_length=block, steps=block,
                              remasking=S.RolloutIMH(alpha=2.0, num_candidates=K, num_rollouts=R))
  law = _empirical(decoder, log_p, seed=10, denoiser=BlockOracle(vocab, gen, block, block),
                   runs=runs)
  _check(law, laws[True], laws[False], runs)


def test_smc_inside_blocks_samples_the_main_loops_law():
  """SMC in two blocks of 2, P = 4 particles per run carried across blocks (with their canvases
  and caches), alpha = 3, resampling below ESS 0.9 P: the drawn particle's law is that of the
  main loop's SMC with the same blocks (positions in the current block, weights carried),
  estimated by its numpy re-implementation (`smc_particle_law`, 200,000 runs; the bound adds
  both sampling errors); far from locally tempered decoding (P = 1, exact). NFE of a run: P
  passes per step, the closing steps included: P (G + blocks). (Measured once with one block
  of 4 too: TV 0.008, bound 0.044.)"""
  n, alpha, runs, blocks = 4, 3.0, 20_000, 2
  block = G // blocks
  log_p, p = _joint(2)
  reference = smc_particle_law(p, V, G, alpha, n, 200_000, ess_threshold=0.9, seed=1,
                               block_length=block)
  decoder = bd.BlockDiffusion(gen_length=G, block_length=block, steps=block,
                              remasking=S.SMC(alpha=alpha, num_particles=n, ess_threshold=0.9))
  nfe = []
  law = _empirical(decoder, log_p, seed=11, denoiser=BlockOracle(block=block, prompt=block),
                   runs=runs, out_nfe=nfe)
  tv = total_variation(law, reference)
  bound = tv_sampling_bound(reference, runs) + tv_sampling_bound(reference, 200_000)
  gap = total_variation(reference, exact_distributions(p, V, G, alpha, [1], block)[1])
  print(f"TV(samples, reference) = {tv:.4f} (bound {bound:.4f}); TV(reference, P = 1) = {gap:.4f}")
  assert tv <= bound and gap > 2 * bound
  assert np.all(nfe[0][0] == n * (G + blocks)) and nfe[0][1] == n * (G + blocks)


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


@pytest.mark.parametrize("name", ["rollout_imh", "smc"])
def test_rollout_imh_and_smc_keep_the_cache_exact(tiny, name):
  """RolloutIMH, whose candidates and their rollouts are extra window passes against the cache
  (IMH's candidate passes, then the rollouts'), and SMC, whose particles carry their own caches
  of finished blocks (gathered with them when resampled; ess_threshold 1 resamples at every
  uneven step), keep the cache exact (it equals a fresh forward of the final canvas), and the
  uncached loop (the canvas recomputed at every pass) draws the same tokens from the same keys
  with the same forward counts. (The other rules and the sampling
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
  rule = (S.RolloutIMH(alpha=2.0, num_candidates=3, num_rollouts=2) if name == "rollout_imh"
          else S.SMC(alpha=2.0, num_particles=3, ess_threshold=1.0))
  decoder = bd.BlockDiffusion(gen_length=8, block_length=4, steps=4, remasking=rule)
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
  np.testing.assert_array_equal(plain.nfe_B, out.nfe_B)
  # A row's count: per block with n masks (one token per step and per rollout pass) n steps and
  # the closing step of 1 + K passes, and K R (m - 1) rollout passes after each commit leaving
  # m >= 1 masks in the block; SMC: one pass per particle and step (no row stops at EOS here:
  # every block counts).
  assert (out.tokens != 159).all()
  K, R, lay = 3, 2, out.layout
  cost = ((lambda n: (1 + K) * (n + 1) + K * R * (n - 1) * (n - 2) // 2) if name == "rollout_imh"
          else lambda n: rule.num_particles * (n + 1))
  for b in range(2):
    masks = [len([j for j in range(k * 4, k * 4 + 4) if j >= lay.gen_start[b]])
             for k in range(lay.first_block, lay.num_blocks)]
    assert out.nfe_B[b] == sum(map(cost, masks)), (out.nfe_B, masks)
  # Power: another key changes the sample.
  assert (run(decoder, tokens, mask, jax.random.split(jax.random.key(8), 2)).tokens
          != out.tokens).any()


def test_bad_settings_are_refused():
  with pytest.raises(ValueError, match="SMC draws its values from p\\*\\*alpha"):
    bd.BlockDiffusion(gen_length=4, remasking=S.SMC(), top_k=3)
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
