"""The honest comparison: bootstrap SEs by hand, mixtures by brute force, compute matching and the
hull verdict on constructed cases."""

import itertools
import math

import numpy as np
import pytest

from dllm_jax.eval import compare, metrics, pass_at_k


def test_pass_at_k_curves_equal_the_estimator():
  rng = np.random.default_rng(0)
  correct = rng.random((7, 9)) < rng.random((7, 1))
  curves = pass_at_k.pass_at_k_curves(correct)
  assert curves.shape == (7, 10) and np.all(curves[:, 0] == 0)
  for p, row in enumerate(correct):
    for k in range(1, 10):
      assert curves[p, k] == pytest.approx(pass_at_k.pass_at_k(9, int(row.sum()), k), abs=1e-12)


def test_bootstrap_se_equals_the_exact_bootstrap_by_hand():
  values = np.array([0.0, 0.5, 1.0])
  # Every one of the 3^3 resamples once: the exact bootstrap distribution of the mean.
  every = compare.Bootstrap(np.array(list(itertools.product(range(3), repeat=3))))
  mean, se = every.mean_se(values)
  # By hand: the variance of the mean of 3 draws with replacement is var(values, ddof=0) / 3 =
  # ((0.5^2 + 0 + 0.5^2) / 3) / 3 = 1/18.
  assert mean == 0.5 and se == pytest.approx(math.sqrt(1 / 18), abs=1e-12)
  # Random resamples approach it (the SE of an SE from B draws is about se / sqrt(2B)).
  drawn = compare.Bootstrap.draw(3, num_resamples=20000, seed=1)
  assert drawn.mean_se(values)[1] == pytest.approx(math.sqrt(1 / 18), rel=0.02)


def _brute_force_mixture(a, b, weight, k):
  """Average over the allocation of j samples to `a`, then over every j-subset of a's samples
  and (k - j)-subset of b's, of "some sample is correct"."""
  total = 0.0
  for j, prob in compare.stratified_allocation(k, weight):
    hits = [any(a[i] for i in sa) or any(b[i] for i in sb)
            for sa in itertools.combinations(range(len(a)), j)
            for sb in itertools.combinations(range(len(b)), k - j)]
    total += prob * np.mean(hits)
  return total


def test_mixture_pass_at_k_matches_brute_force():
  rng = np.random.default_rng(2)
  a = compare.Samples("a", rng.random((5, 6)) < 0.3, nfe=7)
  b = compare.Samples("b", rng.random((5, 5)) < 0.5, nfe=7)
  for weight in (0.25, 0.5, 0.8):
    table = compare.mixture_curves(compare.Mixture(a, b, weight), max_k=11)
    for k in range(12):
      feasible = all(j <= 6 and k - j <= 5 for j, _ in compare.stratified_allocation(k, weight))
      if not feasible:
        assert np.isnan(table[:, k]).all(), (weight, k)
        continue
      for p in range(5):
        expected = _brute_force_mixture(a.correct_PN[p], b.correct_PN[p], weight, k)
        assert table[p, k] == pytest.approx(expected, abs=1e-12), (weight, k, p)
  # Pass@1 of a mixture is the weighted Pass@1.
  mix = compare.mixture_curves(compare.Mixture(a, b, 0.25), 1)[:, 1]
  np.testing.assert_allclose(mix, 0.25 * a.correct_PN.mean(1) + 0.75 * b.correct_PN.mean(1))


def test_compute_matching():
  correct = np.array([[1, 0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0, 0]], bool)
  cheap = compare.Samples("cheap", correct, nfe=2)
  # A claim at k = 2 samples of 5 forwards each spends 10: the cheap baseline gets 5 samples.
  assert compare.matched_k(2, 5, cheap) == 5
  curves = compare.pass_curves(cheap)
  values, bounded = compare.pass_at(curves, 5)
  assert not bounded and values[0] == pytest.approx(5 / 8) and values[1] == 0
  # 2.5 samples: draw 2 or 3 at even odds: (2/8 + 3/8) / 2.
  values, bounded = compare.pass_at(curves, compare.matched_k(1, 5, cheap))
  assert values[0] == pytest.approx((2 / 8 + 3 / 8) / 2) and not bounded
  # Beyond the 8 samples drawn: a lower bound, Pass@8.
  values, bounded = compare.pass_at(curves, compare.matched_k(4, 5, cheap))
  assert bounded and values[0] == 1.0
  # A baseline costing more than the claim gets a fraction of a sample: run it with that chance.
  values, _ = compare.pass_at(curves, compare.matched_k(1, 1, cheap))
  assert values[0] == pytest.approx(0.5 * 1 / 8)


def test_hull_and_margin_on_constructed_points():
  xs, ys = np.array([0.2, 0.4, 0.3]), np.array([0.9, 0.6, 0.5])  # (0.3, 0.5) is inside
  hull = compare.Frontier(xs, ys)
  assert hull.height(0.1) == pytest.approx(0.9) and hull.height(0.3) == pytest.approx(0.75)
  assert hull.height(0.41) == -np.inf
  # Above the chord at x = 0.3 by 0.05 vertically; along the diagonal the margin t solves
  # 0.8 - t = 0.9 - 1.5 (0.3 - t - 0.2), t = 0.02.
  assert hull.margin(0.3, 0.8) == pytest.approx(0.02, abs=1e-9)
  assert hull.margin(0.3, 0.75) == pytest.approx(0.0, abs=1e-9)
  assert hull.margin(0.3, 0.5) < 0
  assert hull.margin(0.5, 0.0) == pytest.approx(0.1, abs=1e-9)  # beyond every Pass@1, by 0.1


def _samples(label, pass1, passk_target, problems=400, n=4, seed=0, nfe=1.0, baseline=False):
  """Problems of two kinds, so that Pass@1 and Pass@4 can be set apart: a share q of problems
  always solved, the rest solved with chance r per sample."""
  # Pass@1 = q + (1-q) r; Pass@4 ~ q + (1-q)(1-(1-r)^4). Solve for (q, r) by a grid search.
  q, r = np.meshgrid(np.linspace(0, 1, 201), np.linspace(0, 1, 201))
  error = ((q + (1 - q) * r - pass1) ** 2
           + (q + (1 - q) * (1 - (1 - r) ** n) - passk_target) ** 2)
  q, r = q.flat[np.argmin(error)], r.flat[np.argmin(error)]
  rng = np.random.default_rng(seed)
  always = rng.random(problems) < q
  correct = always[:, None] | (rng.random((problems, n)) < r)
  return compare.Samples(label, correct, nfe=nfe, baseline=baseline)


def test_verdicts_hold_and_fail_on_constructed_cases():
  exploit = _samples("exploit", 0.6, 0.65, seed=1, baseline=True)
  explore = _samples("explore", 0.3, 0.85, seed=2, baseline=True)
  bootstrap = compare.Bootstrap.draw(400, num_resamples=200, seed=0)
  # Well above both and every mixture: holds.
  better = _samples("better", 0.62, 0.9, seed=3)
  verdict, _ = compare.hull_verdict(better, [exploit, explore], bootstrap)
  assert verdict.holds and verdict.estimate > 0.02 and "[holds]" in verdict.line()
  # In between the two (like a mixture): does not hold, and says by how much it falls short.
  middle = _samples("middle", 0.45, 0.72, seed=4)
  verdict, _ = compare.hull_verdict(middle, [exploit, explore], bootstrap)
  assert not verdict.holds and verdict.estimate < 0 and "[does NOT hold]" in verdict.line()
  # The same "better" sampler at 4x the cost: the baselines get 16 samples but only 4 were drawn,
  # so their points are lower bounds and the verdict cannot be "holds".
  costly = compare.Samples("costly", better.correct_PN, nfe=4.0)
  verdict, points = compare.hull_verdict(costly, [exploit, explore], bootstrap)
  assert all(p.bounded for p in points) and not verdict.holds and verdict.undecided
  # A box test would pass "middle" (Pass@1 above explore's, Pass@4 above exploit's); the hull
  # does not, because the mixtures of the two baselines reach it.
  assert middle.correct_PN.mean() > explore.correct_PN.mean()


def test_paired_difference_uses_the_pairing():
  rng = np.random.default_rng(5)
  base = rng.random(300)
  bootstrap = compare.Bootstrap.draw(300, num_resamples=500, seed=0)
  # A constant small gain on noisy per-problem values: paired, the SE of the difference is 0.
  verdict = compare.paired_difference("a > b", base + 0.01, base, bootstrap)
  assert verdict.holds and verdict.se == pytest.approx(0, abs=1e-12)
  assert not compare.paired_difference("b > a", base, base + 0.01, bootstrap).holds


def test_answer_entropy():
  assert metrics.answer_entropy(["a", "a", "a"]) == 0
  assert metrics.answer_entropy(["a", "b", "a", "b"]) == pytest.approx(math.log(2))
  assert metrics.answer_entropy(["a", None, None, "b"]) == pytest.approx(
      -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25)))
  with pytest.raises(ValueError):
    metrics.answer_entropy([])


def test_table_has_ses_nfe_and_budgets():
  a = compare.Samples("a", np.array([[1, 0], [0, 0]], bool), nfe=7,
                      answers_PN=np.array([["x", "y"], ["x", "x"]], object), baseline=True)
  bootstrap = compare.Bootstrap(np.array(list(itertools.product(range(2), repeat=2))))
  table = compare.pass_table([a], bootstrap, budgets=[14, 28])
  # Pass@1 0.25, exact bootstrap SE = sqrt(var([0.5, 0]) / 2) = 0.25 / sqrt(2).
  assert "| a | 7.0 | 0.250 +- 0.177 | 0.500 +- 0.354 | 1.500 +- 0.354 |" in table
  assert table.rstrip().endswith("| 0.500 +- 0.354 | >=0.500 +- 0.354 |")


def test_cost_verdict_against_the_accuracy_nfe_hull():
  rng = np.random.default_rng(3)
  problems = 500
  bootstrap = compare.Bootstrap.draw(problems, num_resamples=200, seed=0)
  cheap = (rng.random(problems) < 0.5, np.full(problems, 4.0))
  costly = (rng.random(problems) < 0.9, np.full(problems, 16.0))
  baselines = {"cheap": cheap, "costly": costly}
  # At 10 NFE the hull (a coin between cheap and costly) reaches 0.5 + 0.4 * 6 / 12 = 0.7.
  better = rng.random(problems) < 0.85
  verdict = compare.cost_verdict("better", better, np.full(problems, 10.0), baselines, bootstrap)
  expected = better.mean() - (cheap[0].mean() + (costly[0].mean() - cheap[0].mean()) * 0.5)
  assert verdict.estimate == pytest.approx(expected) and verdict.holds
  worse = rng.random(problems) < 0.6
  verdict = compare.cost_verdict("worse", worse, np.full(problems, 10.0), baselines, bootstrap)
  assert verdict.estimate < 0 and not verdict.holds
  # Cheaper than every baseline: compared with a coin between answering nothing and "cheap".
  verdict = compare.cost_verdict("tiny", cheap[0], np.full(problems, 2.0), baselines, bootstrap)
  assert verdict.estimate == pytest.approx(cheap[0].mean() / 2)
