"""Per-sample metrics: distinct answers, the entropy estimate, NFE and time summaries."""

import numpy as np
import pytest

from dllm_jax.eval import metrics
from dllm_jax.eval.math_grader import normalize_answer


def test_distinct_answers():
  assert metrics.distinct_answers(["5", "5", "6", None]) == 2
  assert metrics.distinct_answers([None, None]) == 0
  assert metrics.distinct_answers(["025", "25", "25.", "26"], key=normalize_answer) == 2
  answers = [["1", "1"], ["1", "2"], [None, "3"]]
  assert metrics.mean_distinct_answers(answers) == pytest.approx(4 / 3)
  with pytest.raises(ValueError):
    metrics.mean_distinct_answers([])


def test_mean_negative_log_prob():
  log_probs = np.log(np.array([[0.5, 0.25, 1.0, 0.1], [0.5, 0.5, 0.5, 0.5], [0.9, 0.9, 0.9, 0.9]]))
  mask = np.array([[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]], dtype=bool)
  got = metrics.mean_negative_log_prob(log_probs, mask)
  assert got[0] == pytest.approx((np.log(2) + np.log(4)) / 2)
  assert got[1] == pytest.approx(np.log(2))
  assert np.isnan(got[2])
  # A leading batch axis is fine, and masked-out tokens may hold anything finite or not.
  noisy = np.where(mask, log_probs, -np.inf)
  np.testing.assert_allclose(metrics.mean_negative_log_prob(noisy[None], mask[None])[0], got)
  with pytest.raises(ValueError):
    metrics.mean_negative_log_prob(log_probs, mask[:, :2])
  with pytest.raises(ValueError):
    metrics.mean_negative_log_prob(np.exp(log_probs), mask)  # probabilities, not log-probs
  with pytest.raises(ValueError):
    metrics.mean_negative_log_prob(log_probs, mask * 2)


def test_nfe_and_time_summary():
  summary = metrics.nfe_and_time_summary([64, 32, 32, 128], [1.0, 0.5, 0.5, 2.0])
  assert summary["nfe"]["count"] == 4
  assert summary["nfe"]["mean"] == 64
  assert summary["nfe"]["median"] == 48
  assert summary["nfe"]["min"] == 32 and summary["nfe"]["max"] == 128
  assert summary["seconds"]["mean"] == pytest.approx(1.0)
  assert metrics.summarize([np.nan, 2.0])["count"] == 1
  assert metrics.summarize([])["count"] == 0
  with pytest.raises(ValueError):
    metrics.nfe_and_time_summary([1, 2], [1.0])
  with pytest.raises(ValueError):
    metrics.nfe_and_time_summary([-1], [1.0])
