"""The unbiased pass@k estimator (Chen et al., 2021), per problem and averaged over problems.

From n samples of which c are correct, pass@k = 1 - C(n - c, k) / C(n, k): the probability that a
random k-subset of the n samples holds at least one correct one. It is computed as the product
1 - prod_{i = n - c + 1}^{n} (1 - k / i), which never forms the large binomials.
"""

from collections.abc import Iterable, Mapping, Sequence

import numpy as np


def _check_counts(n: int, c: int, k: int) -> None:
  for name, value in (("n", n), ("c", c), ("k", k)):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
      raise TypeError(f"{name} must be an integer, got {value!r}")
  if n < 1:
    raise ValueError(f"need at least one sample per problem, got n={n}")
  if not 0 <= c <= n:
    raise ValueError(f"the number correct must be in [0, n={n}], got c={c}")
  if not 1 <= k <= n:
    raise ValueError(f"k must be in [1, n={n}] (k > n cannot be estimated from n samples), "
                     f"got k={k}")


def pass_at_k(n: int, c: int, k: int) -> float:
  """The unbiased estimate of pass@k for one problem with `c` of `n` samples correct."""
  _check_counts(n, c, k)
  if n - c < k:  # every k-subset contains a correct sample
    return 1.0
  return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1, dtype=np.float64)))


def pass_at_k_curves(correct_PN: np.ndarray) -> np.ndarray:
  """The unbiased pass@k for every k = 0..n at once, per problem: [problems, n + 1] (pass@0 = 0).

  The chance that a random k-subset holds no correct sample, C(n - c, k) / C(n, k), is the
  running product of (n - c - i) / (n - i) over i < k, so one cumulative product gives all k.
  """
  table = np.asarray(correct_PN)
  if table.ndim != 2 or table.shape[1] == 0:
    raise ValueError(f"expected a [problems, samples] table, got shape {table.shape}")
  n = table.shape[1]
  wrong_P = (n - table.astype(bool).sum(axis=1)).astype(np.float64)
  i_K = np.arange(n, dtype=np.float64)
  ratio_PK = np.maximum(wrong_P[:, None] - i_K, 0.0) / (n - i_K)
  all_wrong_PK = np.concatenate([np.ones((len(table), 1)), np.cumprod(ratio_PK, axis=1)], axis=1)
  return 1.0 - all_wrong_PK


def default_ks(n: int) -> list[int]:
  """1, 2, 4, ... up to n, with n itself always included (n = 6 gives [1, 2, 4, 6])."""
  if n < 1:
    raise ValueError(f"n must be >= 1, got {n}")
  ks = [1 << i for i in range(n.bit_length()) if 1 << i <= n]
  return ks if ks[-1] == n else ks + [n]


def mean_pass_at_k(correct: Sequence[Sequence[bool]] | np.ndarray,
                   ks: Iterable[int] | None = None) -> dict[int, float]:
  """pass@k averaged over problems, from a [problems, samples] table of correctness flags.

  Every problem must have the same number of samples n; `ks` defaults to `default_ks(n)`.
  """
  table = np.asarray(correct)
  if table.ndim != 2 or table.shape[0] == 0 or table.shape[1] == 0:
    raise ValueError(f"expected a non-empty [problems, samples] table, got shape {table.shape}")
  if table.dtype != np.bool_:
    if not np.isin(table, (0, 1)).all():
      raise ValueError("correctness flags must be booleans (or 0/1)")
    table = table.astype(bool)
  n = table.shape[1]
  return mean_pass_at_k_from_counts([n] * table.shape[0], table.sum(axis=1).tolist(), ks)


def mean_pass_at_k_from_counts(num_samples: Sequence[int], num_correct: Sequence[int],
                               ks: Iterable[int] | None = None) -> dict[int, float]:
  """pass@k averaged over problems given per-problem sample and correct counts.

  Problems may have different n; every k must then be <= the smallest n.
  """
  if len(num_samples) != len(num_correct):
    raise ValueError(f"{len(num_samples)} sample counts but {len(num_correct)} correct counts")
  if not num_samples:
    raise ValueError("no problems")
  ks = default_ks(min(num_samples)) if ks is None else sorted(set(ks))
  if not ks:
    raise ValueError("no k given")
  return {k: float(np.mean([pass_at_k(n, c, k) for n, c in zip(num_samples, num_correct)]))
          for k in ks}


def format_pass_at_k(results: Mapping[int, float]) -> str:
  """One line such as `pass@1 41.2%  pass@2 52.0%`."""
  return "  ".join(f"pass@{k} {100 * value:.1f}%" for k, value in sorted(results.items()))
