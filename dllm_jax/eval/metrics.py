"""Per-sample metrics reported beside pass@k: answer diversity (distinct answers and the plug-in
entropy of the answer distribution), mean -log p of committed tokens, NFE and time.

All functions take host values (Python sequences, NumPy or JAX arrays) and return Python floats or
NumPy arrays; they are for summaries after sampling, not for use inside `jit`.
"""

import collections
from collections.abc import Callable, Hashable, Sequence

import numpy as np


def distinct_answers(answers: Sequence[Hashable | None],
                     key: Callable[[Hashable], Hashable] | None = None) -> int:
  """How many different final answers one problem's samples gave.

  `None` (no answer could be extracted) is not an answer and is not counted. `key` maps an answer
  to what counts as "the same", e.g. `math_grader.normalize_answer`. With k > 1 samples, a count
  of 1 on every problem is the sign of a sampler that silently became greedy.
  """
  key = key or (lambda answer: answer)
  return len({key(answer) for answer in answers if answer is not None})


def mean_distinct_answers(answers_per_problem: Sequence[Sequence[Hashable | None]],
                          key: Callable[[Hashable], Hashable] | None = None) -> float:
  """`distinct_answers` averaged over problems."""
  if not answers_per_problem:
    raise ValueError("no problems")
  return float(np.mean([distinct_answers(answers, key) for answers in answers_per_problem]))


def answer_entropy(answers: Sequence[Hashable | None],
                   key: Callable[[Hashable], Hashable] | None = None) -> float:
  """The plug-in entropy (nats) of one problem's answers: -sum_a f_a log f_a, f_a the share of
  samples that gave answer a. `None` (no answer) counts as one more answer value, so a sampler
  that often gives none is not rewarded with a low entropy.

  Biased low for few samples (it is at most log n), so compare samplers at the same n.
  """
  if not answers:
    raise ValueError("no answers")
  key = key or (lambda answer: answer)
  counts = np.array(list(collections.Counter(
      None if a is None else key(a) for a in answers).values()), np.float64)
  shares = counts / counts.sum()
  return float(-(shares * np.log(shares)).sum())


def mean_negative_log_prob(log_probs, mask) -> np.ndarray:
  """Per sample, the mean of -log p over committed tokens (what the model gave each token when
  it was committed). This is not an entropy of the output distribution: a sampler that commits
  the locally likely token has a low value whatever the diversity of its answers.

  `log_probs` holds the log-probability the model gave each token it committed (shape
  [..., length]); `mask` is True (or 1) where a token was committed by the sampler, False for the
  prompt and padding. Samples with no committed token give NaN.
  """
  log_probs = np.asarray(log_probs, dtype=np.float64)
  mask = np.asarray(mask)
  if log_probs.shape != mask.shape:
    raise ValueError(f"log_probs shape {log_probs.shape} != mask shape {mask.shape}")
  if log_probs.ndim == 0:
    raise ValueError("expected arrays with a token axis")
  weights = mask.astype(np.float64)
  if np.any((weights != 0) & (weights != 1)):
    raise ValueError("mask must hold booleans or 0/1")
  if np.any(log_probs[weights > 0] > 1e-2):  # a little slack for low-precision rounding
    raise ValueError("log-probabilities must be <= 0 (were probabilities passed?)")
  counts = weights.sum(axis=-1)
  totals = -(np.where(weights > 0, log_probs, 0.0)).sum(axis=-1)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(counts > 0, totals / np.maximum(counts, 1), np.nan)


def summarize(values) -> dict[str, float]:
  """count, mean, std, min, median, p90 and max of per-sample values (NFE, seconds, ...); NaNs
  are left out."""
  array = np.asarray(values, dtype=np.float64).ravel()
  array = array[~np.isnan(array)]
  if array.size == 0:
    return {"count": 0, **{name: float("nan") for name in
                           ("mean", "std", "min", "median", "p90", "max")}}
  return {
      "count": int(array.size),
      "mean": float(array.mean()),
      "std": float(array.std()),
      "min": float(array.min()),
      "median": float(np.median(array)),
      "p90": float(np.percentile(array, 90)),
      "max": float(array.max()),
  }


def nfe_and_time_summary(nfe_per_sample, seconds_per_sample) -> dict[str, dict[str, float]]:
  """Summaries of the number of function (model) evaluations and the wall time per sample."""
  nfe = np.asarray(nfe_per_sample, dtype=np.float64).ravel()
  seconds = np.asarray(seconds_per_sample, dtype=np.float64).ravel()
  if nfe.shape != seconds.shape:
    raise ValueError(f"{nfe.size} NFE values but {seconds.size} times")
  if np.any(nfe < 0) or np.any(seconds < 0):
    raise ValueError("NFE and times must be >= 0")
  return {"nfe": summarize(nfe), "seconds": summarize(seconds)}
