"""Sequence-level samplers toward p^alpha (RolloutIMH, SMC) against exact laws on the oracle
denoiser (V = 3, L = 4, alpha = 2, one token per step; the joints of test_sampling_oracle.py).
Empirical laws are flagged only beyond `tv_sampling_bound` (exceeded by chance with probability
< 1e-6); SMC's weighted particles are checked for unbiasedness outcome by outcome (|z| < 5).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dllm_jax import sampling as S
from dllm_jax.sampling import oracle
from dllm_jax.sampling.by_name import rule_from_name
from dllm_jax.sampling.oracle_exact import (exact_distributions, imh_chain_law,
                                            rollout_imh_distribution, smc_particle_law,
                                            total_variation, tv_sampling_bound)

V, L, ALPHA = 3, 4, 2.0
DENOISE = oracle.make_oracle_denoise(V, L)


def _joint(seed):
  log_p = oracle.random_joint(jax.random.key(seed), V, L, concentration=0.3)
  p = np.exp(np.asarray(log_p, np.float64))
  return log_p, p / p.sum()


def _generate(rule, log_p, runs, seed):
  prompt = jnp.zeros((runs, 0), jnp.int32)
  return S.generate(S.Sampler(gen_length=L, mask_token_id=V, remasking=rule), DENOISE, log_p,
                    prompt, prompt.astype(bool), jax.random.key(seed))


def test_imh_chain_law_matches_the_matrix_power():
  rng = np.random.default_rng(0)
  proposal = rng.dirichlet(np.ones(6))
  weight = np.array([0.3, 0.5, 0.5, 1.2, 2.0, 0.1])  # with a tie
  kernel = proposal[None] * np.minimum(1.0, weight[None] / weight[:, None])
  np.fill_diagonal(kernel, 0.0)
  np.fill_diagonal(kernel, 1.0 - kernel.sum(1))
  for moves in (0, 1, 4):
    np.testing.assert_allclose(imh_chain_law(proposal, weight, moves),
                               proposal @ np.linalg.matrix_power(kernel, moves), atol=1e-14)


def test_rollouts_of_the_whole_suffix_in_one_pass_are_mean_field_imh():
  """rollout_tokens_per_step >= L: the rollout estimate is the mean-field weight itself."""
  _, p = _joint(101)
  mean_field = exact_distributions(p, V, L, ALPHA, [1, 4])
  rollout = rollout_imh_distribution(p, V, L, ALPHA, [1, 4], num_rollouts=2,
                                     rollout_tokens_per_step=L)
  for k in (1, 4):
    assert total_variation(mean_field[k], rollout[k]) < 1e-12


@pytest.mark.parametrize("rule", [
    S.RolloutIMH(alpha=ALPHA, num_candidates=4, num_rollouts=2),
    S.RolloutIMH(alpha=ALPHA, num_candidates=2, greedy=True, rollout_tokens_per_step=2)])
def test_compiled_rollout_imh_matches_its_exact_law(rule):
  log_p, p = _joint(1)
  runs, K, R = 20_000, rule.num_candidates, rule.num_rollouts
  exact = rollout_imh_distribution(p, V, L, ALPHA, [K], R, rule.rollout_tokens_per_step,
                                   rule.greedy)[K]
  out = _generate(rule, log_p, runs, seed=K)
  law = np.bincount(oracle.sequence_index(np.asarray(out.tokens_BL), V), minlength=V ** L) / runs
  tv, bound = total_variation(law, exact), tv_sampling_bound(exact, runs)
  print(f"{rule}: TV(samples, exact) = {tv:.4f} (bound {bound:.4f})")
  assert tv <= bound
  # Power: the mean-field IMH law with the same K is beyond the bound.
  assert total_variation(exact, exact_distributions(p, V, L, ALPHA, [K])[K]) > bound
  # NFE: 1 + K per step + K R (ceil(m / c) - 1) per step with m masks left after the commit.
  c = rule.rollout_tokens_per_step
  rollout_passes = sum(-(-m // c) - 1 for m in range(1, L))
  assert np.all(np.asarray(out.nfe_B) == 1 + K * L + K * R * rollout_passes)


def test_rollout_imh_goes_below_the_mean_field_floor():
  """Exact laws on the 20 joints where mean-field IMH stops at mean TV 0.0445 (K = 8, 16):
  one sampled rollout per candidate keeps falling with K (pseudo-marginal chain)."""
  ks = [1, 2, 4, 16]
  rows = []
  for seed in range(20):
    _, p = _joint(100 + seed)
    target = p ** ALPHA / (p ** ALPHA).sum()
    law = rollout_imh_distribution(p, V, L, ALPHA, ks, num_rollouts=1)
    rows.append([total_variation(law[k], target) for k in ks])
  mean = np.array(rows).mean(0)
  print("K: " + " ".join(f"{k:>8d}" for k in ks) + "\nTV " + " ".join(f"{t:8.5f}" for t in mean))
  assert abs(mean[0] - 0.0921) < 1e-3            # K = 1: per-token tempering
  assert np.all(np.diff(mean) < 0)
  assert mean[2] < 0.01 and mean[3] < 1e-4       # the mean-field floor is 0.0445


def test_smc_weighted_particles_are_unbiased_for_p_alpha():
  """SMC's unnormalised particle measure (evidence x normalised weights) is unbiased for
  p(x)^alpha for any P, with or without resampling: checked outcome by outcome, with a
  threshold that resamples in about half of the runs."""
  log_p, p = _joint(1)
  gamma = p ** ALPHA
  runs, n = 10_000, 3
  out = _generate(S.SMC(alpha=ALPHA, num_particles=n, ess_threshold=0.9), log_p, runs, seed=0)
  index = oracle.sequence_index(np.asarray(out.particles_BNL).reshape(runs * n, L), V)
  evidence = np.exp(np.asarray(out.log_evidence_B, np.float64))
  weights = np.exp(np.asarray(out.particle_log_weights_BN, np.float64))

  def max_z(contribution_BN):
    per_run = np.zeros((runs, V ** L))
    np.add.at(per_run, (np.repeat(np.arange(runs), n), index), contribution_BN.ravel())
    se = per_run.std(0) / np.sqrt(runs)
    seen = gamma > 1e-4
    return np.max(np.abs(per_run.mean(0) - gamma)[seen] / se[seen])

  z = max_z(evidence[:, None] * weights)
  print(f"max |z| over outcomes: {z:.2f}")
  assert z < 5
  # Power: with one shared evidence (its mean) for every run the check fails.
  assert max_z(evidence.mean() * weights) > 10
  assert 0.2 < np.mean(np.asarray(out.resamples_B) > 0) < 0.8
  assert np.all(np.asarray(out.nfe_B) == 1 + n * (L - 1))
  np.testing.assert_allclose(weights.sum(1), 1.0, rtol=1e-5)
  # The numpy re-implementation that measures the README's curve has the same law (each run's
  # weighted particles are a probability vector: `tv_sampling_bound` holds for their mean).
  compiled = np.bincount(index, weights=weights.ravel(), minlength=V ** L) / runs
  reference = smc_particle_law(p, V, L, ALPHA, n, 50_000, ess_threshold=0.9)
  bound = tv_sampling_bound(reference, runs) + tv_sampling_bound(reference, 50_000)
  assert total_variation(compiled, reference) <= bound
  # The drawn sample is one of the run's particles.
  drawn = oracle.sequence_index(np.asarray(out.tokens_BL), V)
  assert np.all(np.any(index.reshape(runs, n) == drawn[:, None], axis=1))


@pytest.mark.parametrize("rule,nfe", [
    # 2 (CFG) x [1 shared pass + 3 particles x 1 pass between the 2 steps]
    (S.SMC(alpha=ALPHA, num_particles=3), 2 * (1 + 3)),
    # 2 x [1 + 2 steps x K + K R rollouts x 1 pass (2 masks left after step 1, 1 per pass)]
    (S.RolloutIMH(alpha=ALPHA, num_candidates=2, num_rollouts=2), 2 * (1 + 2 * 2 + 4))])
def test_nfe_counts_every_pass_with_guidance_and_two_tokens_per_step(rule, nfe):
  log_p, _ = _joint(3)
  sampler = S.Sampler(gen_length=L, mask_token_id=V, block_length=2, steps=2, cfg_scale=1.0,
                      remasking=rule)
  prompt = jnp.zeros((4, 0), jnp.int32)
  out = S.generate(sampler, DENOISE, log_p, prompt, prompt.astype(bool), jax.random.key(0))
  assert np.all(np.asarray(out.nfe_B) == nfe)
  assert np.all(np.asarray(out.tokens_BL) < V)


def test_smc_reference_with_one_particle_is_locally_tempered_decoding():
  _, p = _joint(2)
  exact = exact_distributions(p, V, L, ALPHA, [1])[1]
  reference = smc_particle_law(p, V, L, ALPHA, 1, 50_000)
  assert total_variation(reference, exact) <= tv_sampling_bound(exact, 50_000)
  target = p ** ALPHA / (p ** ALPHA).sum()
  assert total_variation(exact, target) > 2 * tv_sampling_bound(exact, 50_000)  # power


def test_rules_by_name_and_bad_values():
  assert rule_from_name("smc", num_particles=4, alpha=3.0) == S.SMC(alpha=3.0, num_particles=4)
  assert rule_from_name("rollout_imh", num_rollouts=2, rollout_greedy=True) == S.RolloutIMH(
      num_rollouts=2, greedy=True)
  with pytest.raises(ValueError, match=r"'imh' does not take \['num_particles'\]"):
    rule_from_name("imh", num_particles=4)
  with pytest.raises(ValueError, match=r"'smc' does not take \['num_candidates'\]"):
    rule_from_name("smc", num_candidates=2)
  for make, message in [(lambda: S.SMC(num_particles=0), r"num_particles \(P\) must be >= 1"),
                        (lambda: S.SMC(ess_threshold=1.5), r"ess_threshold must be in \[0, 1\]"),
                        (lambda: S.RolloutIMH(num_rollouts=0), r"num_rollouts \(R\) must be"),
                        (lambda: S.RolloutIMH(rollout_tokens_per_step=0), "must be >= 1"),
                        (lambda: S.Sampler(gen_length=4, mask_token_id=3, remasking=S.SMC(),
                                           temperature=0.5), r"set SMC\(alpha=...\)"),
                        (lambda: S.StreamingSampler(gen_length=4, mask_token_id=3,
                                                    imh=S.RolloutIMH()), "imh must be IMH")]:
    with pytest.raises(ValueError, match=message):
      make()
