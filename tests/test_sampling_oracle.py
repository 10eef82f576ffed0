"""Samplers checked against exact distributions, with the oracle denoiser of a random joint P
over V^L (V = 3, L = 4: 81 sequences). Empirical distributions come from N compiled samples; a
deviation is flagged only beyond `tv_sampling_bound` (exceeded by chance with probability < 1e-6).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dllm_jax import sampling as S
from dllm_jax.sampling import oracle
from dllm_jax.sampling.oracle_exact import (exact_distributions, total_variation,
                                            tv_sampling_bound)
from tests import optimized

V, L, N = 3, 4, 100_000
DENOISE = oracle.make_oracle_denoise(V, L)


def _joint(seed):
  log_p = oracle.random_joint(jax.random.key(seed), V, L, concentration=0.3)
  p = np.exp(np.asarray(log_p, np.float64))
  return log_p, p / p.sum()


def _empirical(sampler, log_p, seed=0):
  prompt = jnp.zeros((N, 0), jnp.int32)
  out = optimized.generate(sampler, DENOISE, log_p, prompt, prompt.astype(bool),
                           jax.random.key(seed))
  index = oracle.sequence_index(np.asarray(out.tokens_BL), V)
  return np.bincount(index, minlength=V ** L) / N, out


def _entropy(p):
  return float(-(p[p > 0] * np.log(p[p > 0])).sum())


@pytest.mark.parametrize("block_length", [None, 2, 1])
def test_random_remasking_at_temperature_one_samples_p(block_length):
  log_p, p = _joint(0)
  sampler = S.Sampler(gen_length=L, mask_token_id=V, block_length=block_length,
                      remasking=S.Random(), temperature=1.0)
  q, _ = _empirical(sampler, log_p)
  tv, bound = total_variation(q, p), tv_sampling_bound(p, N)
  print(f"random remasking, block {block_length}: TV(samples, P) = {tv:.4f} (bound {bound:.4f})")
  assert tv <= bound
  # The exact enumeration agrees: random order at alpha = 1 reproduces P.
  exact = exact_distributions(np.asarray(p), V, L, alpha=1.0, candidates=[1],
                              block_length=block_length)[1]
  assert total_variation(exact, p) < 1e-9


def test_the_tv_check_rejects_a_sampler_that_is_not_p():
  """Power of the check above: low-confidence remasking is far outside the bound."""
  log_p, p = _joint(0)
  q, _ = _empirical(S.Sampler(gen_length=L, mask_token_id=V, remasking=S.LowConfidence(),
                              temperature=1.0), log_p)
  assert total_variation(q, p) > 5 * tv_sampling_bound(p, N)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_low_confidence_lowers_entropy_and_raises_log_p(seed):
  log_p, p = _joint(seed)
  q, _ = _empirical(S.Sampler(gen_length=L, mask_token_id=V, remasking=S.LowConfidence(),
                              temperature=1.0), log_p)
  h_p, h_q = _entropy(p), _entropy(q)
  mean_log_p_model = float((p * np.log(p)).sum())
  mean_log_p_sampler = float((q * np.log(p)).sum())
  print(f"seed {seed}: H(P) {h_p:.3f} -> H(low-conf) {h_q:.3f}; "
        f"E log P {mean_log_p_model:.3f} -> {mean_log_p_sampler:.3f}")
  # Plug-in entropy of 100k draws over 81 outcomes is biased by < (81-1)/(2N) = 4e-4 nats.
  assert h_q < h_p - 0.1
  assert mean_log_p_sampler > mean_log_p_model + 0.1


@pytest.mark.parametrize("K", [1, 4, 16])
def test_compiled_imh_matches_its_exact_distribution(K):
  """The compiled IMH sampler has exactly the law that enumeration gives for its K and alpha."""
  log_p, p = _joint(1)
  alpha = 2.0
  exact = exact_distributions(p, V, L, alpha, [K])[K]
  q, out = _empirical(S.Sampler(gen_length=L, mask_token_id=V,
                                remasking=S.IMH(alpha=alpha, num_candidates=K)), log_p, seed=K)
  tv, bound = total_variation(q, exact), tv_sampling_bound(exact, N)
  print(f"IMH K={K}: TV(samples, exact) = {tv:.4f} (bound {bound:.4f})")
  assert tv <= bound
  assert np.all(np.asarray(out.nfe_B) == 1 + K * L)  # initial pass + K per step


def test_imh_with_one_candidate_is_locally_tempered_decoding():
  """K = 1: the IMH sampler and random remasking at temperature 1/alpha have the same law."""
  log_p, p = _joint(2)
  alpha = 2.0
  exact = exact_distributions(p, V, L, alpha, [1])[1]
  bound = tv_sampling_bound(exact, N)
  imh, _ = _empirical(S.Sampler(gen_length=L, mask_token_id=V,
                                remasking=S.IMH(alpha=alpha, num_candidates=1)), log_p, seed=3)
  tempered, _ = _empirical(S.Sampler(gen_length=L, mask_token_id=V, remasking=S.Random(),
                                     temperature=1 / alpha), log_p, seed=4)
  assert total_variation(imh, exact) <= bound
  assert total_variation(tempered, exact) <= bound
  p_alpha = p ** alpha / (p ** alpha).sum()
  assert total_variation(exact, p_alpha) > 2 * bound  # tempering alone is not the target


def test_imh_moves_toward_the_tempered_target():
  """Exact laws over 20 random joints: TV(IMH_K, P^alpha) falls with K and, from K = 8, is
  below per-token tempering at 1/alpha (= IMH with K = 1)."""
  alpha, ks = 2.0, [1, 2, 4, 8, 16]
  rows = []
  for seed in range(20):
    _, p = _joint(100 + seed)
    p_alpha = p ** alpha / (p ** alpha).sum()
    exact = exact_distributions(p, V, L, alpha, ks)
    rows.append([total_variation(exact[k], p_alpha) for k in ks])
  rows = np.array(rows)
  mean = rows.mean(0)
  print("K:          " + " ".join(f"{k:>7d}" for k in ks))
  print("mean TV:    " + " ".join(f"{t:7.4f}" for t in mean))
  print(f"joints where IMH K=8 beats tempering: {(rows[:, 3] < rows[:, 0]).sum()}/20, "
        f"K=16: {(rows[:, 4] < rows[:, 0]).sum()}/20")
  assert np.all(np.diff(mean[:4]) < 0)          # falls from K = 1 to 8
  assert mean[4] <= mean[3] + 1e-4              # and stays there (the chain has mixed)
  assert mean[3] < 0.8 * mean[0] and mean[4] < 0.8 * mean[0]
  assert (rows[:, 3] < rows[:, 0]).mean() >= 0.75
