"""pass@k: the product form against brute-force enumeration of k-subsets, and input validation."""

import itertools
import math

import numpy as np
import pytest

from dllm_jax.eval import pass_at_k as pk


def _brute_force(n: int, c: int, k: int) -> float:
  """The fraction of k-subsets of n samples (the first c correct) holding a correct sample."""
  samples = [True] * c + [False] * (n - c)
  subsets = list(itertools.combinations(range(n), k))
  return sum(any(samples[i] for i in subset) for subset in subsets) / len(subsets)


@pytest.mark.parametrize("n", range(1, 11))
def test_matches_brute_force_enumeration(n):
  for c in range(n + 1):
    for k in range(1, n + 1):
      assert pk.pass_at_k(n, c, k) == pytest.approx(_brute_force(n, c, k), abs=1e-12), (n, c, k)


def test_matches_binomial_formula_for_large_n():
  for n, c, k in [(200, 3, 1), (200, 3, 10), (200, 150, 100), (1000, 1, 500), (64, 0, 64)]:
    exact = 1 - math.comb(n - c, k) / math.comb(n, k)
    assert pk.pass_at_k(n, c, k) == pytest.approx(exact, rel=1e-12, abs=1e-15)


def test_special_values():
  assert pk.pass_at_k(5, 0, 3) == 0.0
  assert pk.pass_at_k(5, 5, 1) == 1.0
  assert pk.pass_at_k(5, 3, 3) == 1.0  # only 2 wrong samples: every 3-subset has a right one
  assert pk.pass_at_k(10, 3, 1) == pytest.approx(0.3)


def test_default_ks():
  assert pk.default_ks(1) == [1]
  assert pk.default_ks(8) == [1, 2, 4, 8]
  assert pk.default_ks(6) == [1, 2, 4, 6]
  assert pk.default_ks(16) == [1, 2, 4, 8, 16]
  with pytest.raises(ValueError):
    pk.default_ks(0)


def test_mean_over_problems():
  table = np.array([[1, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]], dtype=bool)
  result = pk.mean_pass_at_k(table)
  assert sorted(result) == [1, 2, 4]
  for k, value in result.items():
    per_problem = [_brute_force(4, int(row.sum()), k) for row in table]
    assert value == pytest.approx(np.mean(per_problem))
  assert result[1] == pytest.approx((0.25 + 1 + 0) / 3)
  assert pk.mean_pass_at_k([[True, False]], ks=[2]) == {2: 1.0}
  counts = pk.mean_pass_at_k_from_counts([4, 8], [1, 2], ks=[1, 4])
  assert counts[1] == pytest.approx((0.25 + 0.25) / 2)
  assert counts[4] == pytest.approx((1.0 + _brute_force(8, 2, 4)) / 2)
  assert pk.format_pass_at_k({1: 0.5, 2: 0.75}) == "pass@1 50.0%  pass@2 75.0%"


@pytest.mark.parametrize("n,c,k,error", [
    (4, 2, 5, ValueError),  # k > n
    (4, 2, 0, ValueError),
    (4, 5, 1, ValueError),  # c > n
    (4, -1, 1, ValueError),
    (0, 0, 1, ValueError),
    (4.0, 2, 1, TypeError),
    (4, 2, True, TypeError),
])
def test_invalid_counts_raise(n, c, k, error):
  with pytest.raises(error):
    pk.pass_at_k(n, c, k)


def test_invalid_tables_raise():
  with pytest.raises(ValueError, match="k must be in"):
    pk.mean_pass_at_k([[True, False]], ks=[4])
  with pytest.raises(ValueError):
    pk.mean_pass_at_k(np.zeros((0, 4), dtype=bool))
  with pytest.raises(ValueError):
    pk.mean_pass_at_k([True, False])  # not [problems, samples]
  with pytest.raises(ValueError):
    pk.mean_pass_at_k([[2, 0]])
  with pytest.raises(ValueError):
    pk.mean_pass_at_k_from_counts([4, 4], [1])
  with pytest.raises(ValueError, match="k must be in"):
    pk.mean_pass_at_k_from_counts([4, 2], [1, 1], ks=[4])
