"""Comparing samplers honestly (DESIGN §15): Pass@k curves with paired bootstrap standard errors,
NFE beside every number, compute-matched Pass@k, the free baselines and their mixtures, and a
verdict per claim against the baselines' upper hull.

Conventions, each a choice made once here:
- Pass@k is the unbiased estimator (`pass_at_k`) for k = 1..n, averaged over problems. Standard
  errors come from a paired bootstrap over problems: every sampler (and every difference or hull
  margin) is recomputed on the same resampled problem lists, and the SE is the standard deviation
  of the replicates (ddof 0, so that enumerating all resamples gives the exact bootstrap SE).
- Compute matching: a sampler costing N forward passes per sample, drawing k samples, spends k N;
  a baseline costing n per sample gets k' = k N / n samples for the same spend. A fractional k'
  is a baseline that draws floor(k') or ceil(k') samples at random with mean k' (its cost equals
  the claim's in expectation), so its Pass is the linear interpolation between the two. Beyond
  the samples that were drawn, Pass@k' is bounded below by Pass@(largest drawn) and the point is
  marked `bounded`: a claim that clears a bounded hull is "undecided", never "holds".
- Pass@1 (the x axis) is single-sample quality and is not compute matched: more samples do not
  make one answer better without a verifier.
- A mixture of baselines A and B at weight w draws a stratified share of the k samples from A:
  floor(w k) or ceil(w k) (mean w k), the rest from B. Its Pass@k per problem is exact from the
  two samplers' samples: the chance that no sample is correct is
  sum_j P(j) C(nA - cA, j) / C(nA, j) * C(nB - cB, k - j) / C(nB, k - j), an unbiased product
  of independent unbiased estimates. Stratifying is the most favourable split (the all-wrong chance
  is convex in j), so these baselines are as strong as mixing gets.
- The hull: the region a baseline strategy reaches, i.e. every point some convex combination of
  baseline points (a per-problem coin choosing whole batches) dominates in both Pass@1 and
  compute-matched Pass@k. A sampler's margin is the diagonal distance to that region: the largest
  t such that (Pass@1 - t, Pass@k - t) is still outside (negative: inside, by how much). It is
  never larger than the vertical gap to the hull. "Holds" means margin > 2 SE of the margin.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from dllm_jax.eval import metrics, pass_at_k

MIXTURE_WEIGHTS = (0.25, 0.5, 0.75)


@dataclasses.dataclass(frozen=True, eq=False)
class Samples:
  """One sampler's draws on a fixed, ordered list of problems (the same list for every sampler
  of a comparison: the bootstrap pairs them by row)."""

  label: str
  correct_PN: np.ndarray                 # bool [problems, samples]
  nfe: float                             # mean forward passes per sample
  answers_PN: np.ndarray | None = None   # [problems, samples] hashable answers, None: no answer
  baseline: bool = False                 # a free baseline (it builds the hull)

  def __post_init__(self):
    correct = np.asarray(self.correct_PN)
    if correct.ndim != 2 or 0 in correct.shape:
      raise ValueError(f"{self.label}: correct_PN must be a non-empty [problems, samples] table, "
                       f"got shape {correct.shape}")
    object.__setattr__(self, "correct_PN", correct.astype(bool))
    if self.answers_PN is not None and np.shape(self.answers_PN) != correct.shape:
      raise ValueError(f"{self.label}: answers_PN has shape {np.shape(self.answers_PN)}, "
                       f"correct_PN {correct.shape}")
    if not self.nfe > 0:
      raise ValueError(f"{self.label}: nfe must be > 0, got {self.nfe}")

  @property
  def num_problems(self) -> int:
    return self.correct_PN.shape[0]

  @property
  def num_samples(self) -> int:
    return self.correct_PN.shape[1]


@dataclasses.dataclass(frozen=True, eq=False)
class Mixture:
  """Baselines `first` and `second` mixed: a stratified share `weight` of the samples from
  `first` (see the module docstring)."""

  first: Samples
  second: Samples
  weight: float

  @property
  def label(self) -> str:
    return f"mix {self.weight:g} {self.first.label} + {1 - self.weight:g} {self.second.label}"

  @property
  def nfe(self) -> float:
    return self.weight * self.first.nfe + (1 - self.weight) * self.second.nfe


Source = Samples | Mixture


# ---------------------------------------------------------------------------------------------
# Pass@k per problem: integer, fractional and mixed.

def pass_curves(samples: Samples) -> np.ndarray:
  """Pass@k per problem for k = 0..n: [problems, n + 1]."""
  return pass_at_k.pass_at_k_curves(samples.correct_PN)


def stratified_allocation(k: int, weight: float) -> list[tuple[int, float]]:
  """(j, probability) pairs: j of k samples from the first sampler, j in {floor, ceil}(w k)."""
  share = weight * k
  low = math.floor(share + 1e-12)
  frac = share - low
  if frac < 1e-12:
    return [(low, 1.0)]
  return [(low, 1.0 - frac), (low + 1, frac)]


def mixture_curves(mixture: Mixture, max_k: int) -> np.ndarray:
  """Pass@k per problem of a mixture for k = 0..max_k: [problems, max_k + 1]; NaN where a k
  needs more samples of either sampler than were drawn."""
  wrong_a = 1.0 - pass_curves(mixture.first)
  wrong_b = 1.0 - pass_curves(mixture.second)
  na, nb = mixture.first.num_samples, mixture.second.num_samples
  out = np.full((mixture.first.num_problems, max_k + 1), np.nan)
  for k in range(max_k + 1):
    allocation = stratified_allocation(k, mixture.weight)
    if all(j <= na and k - j <= nb for j, _ in allocation):
      out[:, k] = 1.0 - sum(p * wrong_a[:, j] * wrong_b[:, k - j] for j, p in allocation)
  return out


def curves(source: Source, max_k: int | None = None) -> np.ndarray:
  """Pass@k per problem for k = 0, 1, ...: as far as the samples allow (NaN after)."""
  if isinstance(source, Mixture):
    limit = source.first.num_samples + source.second.num_samples
    return mixture_curves(source, limit if max_k is None else max_k)
  return pass_curves(source)


def pass_at(curves_PK: np.ndarray, k: float) -> tuple[np.ndarray, bool]:
  """Pass@k per problem at a possibly fractional k >= 0 (linear between floor and ceil, see the
  module docstring), and whether it is only a lower bound (k beyond the samples drawn)."""
  if k < 0:
    raise ValueError(f"k must be >= 0, got {k}")
  available = np.flatnonzero(~np.isnan(curves_PK).any(axis=0))
  largest = int(available.max())
  if k > largest:
    return curves_PK[:, largest], True
  low = math.floor(k)
  frac = k - low
  if frac < 1e-12:
    return curves_PK[:, low], False
  return (1 - frac) * curves_PK[:, low] + frac * curves_PK[:, low + 1], False


def matched_k(k: float, nfe: float, source: Source) -> float:
  """The number of samples `source` draws for the forward passes of k samples at `nfe` each."""
  return k * nfe / source.nfe


# ---------------------------------------------------------------------------------------------
# Diversity per problem (on the first n samples, so that samplers compare at equal n).

def distinct_answers_P(samples: Samples, n: int | None = None) -> np.ndarray:
  if samples.answers_PN is None:
    raise ValueError(f"{samples.label}: no answers recorded")
  rows = samples.answers_PN[:, :n]
  return np.array([metrics.distinct_answers(list(row)) for row in rows], np.float64)


def answer_entropy_P(samples: Samples, n: int | None = None) -> np.ndarray:
  if samples.answers_PN is None:
    raise ValueError(f"{samples.label}: no answers recorded")
  return np.array([metrics.answer_entropy(list(row)) for row in samples.answers_PN[:, :n]])


# ---------------------------------------------------------------------------------------------
# The paired bootstrap.

@dataclasses.dataclass(frozen=True, eq=False)
class Bootstrap:
  """Resampled problem lists [replicates, problems], shared by every statistic of a comparison."""

  indices_BP: np.ndarray

  @classmethod
  def draw(cls, num_problems: int, num_resamples: int = 1000, seed: int = 0) -> "Bootstrap":
    if num_problems < 1 or num_resamples < 2:
      raise ValueError(f"need >= 1 problem and >= 2 resamples, got {num_problems}, "
                       f"{num_resamples}")
    rng = np.random.default_rng(seed)
    return cls(rng.integers(0, num_problems, size=(num_resamples, num_problems)))

  def replicates(self, values_P: np.ndarray) -> np.ndarray:
    """The mean of `values_P` on each resample: [replicates]."""
    values_P = np.asarray(values_P, np.float64)
    if values_P.shape != self.indices_BP.shape[1:]:
      raise ValueError(f"expected {self.indices_BP.shape[1]} per-problem values, got "
                       f"{values_P.shape}")
    return values_P[self.indices_BP].mean(axis=1)

  def mean_se(self, values_P: np.ndarray) -> tuple[float, float]:
    return float(np.mean(values_P)), float(self.replicates(values_P).std())


# ---------------------------------------------------------------------------------------------
# The baselines' hull in the (Pass@1, Pass@k) plane, both higher-is-better.

def upper_hull(xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Vertices of the upper concave hull of the points, by increasing x (monotone chain)."""
  order = np.lexsort((ys, xs))
  hull: list[tuple[float, float]] = []
  for x, y in zip(np.asarray(xs, np.float64)[order], np.asarray(ys, np.float64)[order]):
    while hull and hull[-1][0] == x:  # same x: keep the higher (sorted last)
      hull.pop()
    while len(hull) >= 2:
      (x1, y1), (x2, y2) = hull[-2], hull[-1]
      if (x2 - x1) * (y - y1) - (y2 - y1) * (x - x1) >= 0:  # hull[-1] on or below the chord
        hull.pop()
      else:
        break
    hull.append((float(x), float(y)))
  points = np.array(hull)
  return points[:, 0], points[:, 1]


class Frontier:
  """The region the points dominate: (a, b) with b <= the highest Pass@k that a convex
  combination of the points reaches at Pass@1 >= a."""

  def __init__(self, xs: np.ndarray, ys: np.ndarray):
    hull_x, hull_y = upper_hull(xs, ys)
    peak = int(np.argmax(hull_y))
    self.x, self.y = hull_x[peak:], hull_y[peak:]  # the non-increasing part, from the peak on

  def height(self, a: float) -> float:
    """The hull's Pass@k at Pass@1 a (-inf beyond every point's Pass@1)."""
    if a > self.x[-1] + 1e-15:
      return -np.inf
    return float(np.interp(a, self.x, self.y))  # flat at the peak's height left of it

  def margin(self, x: float, y: float) -> float:
    """The diagonal margin of (x, y) (module docstring): positive outside, negative inside."""
    low = -2.0 - abs(x) - abs(y) - float(np.abs(self.y).max())  # outside at t = low
    high = 2.0 + abs(x) + abs(y) + float(np.abs(self.x).max())  # inside at t = high
    for _ in range(60):
      mid = 0.5 * (low + high)
      if y - mid <= self.height(x - mid) + 1e-15:
        high = mid
      else:
        low = mid
    return 0.5 * (low + high)


# ---------------------------------------------------------------------------------------------
# Verdicts.

@dataclasses.dataclass(frozen=True)
class Verdict:
  claim: str
  estimate: float       # the margin or difference
  se: float
  holds: bool           # estimate > 2 SE, and nothing in it is only a bound
  undecided: bool = False  # a baseline point is a lower bound and the claim clears it
  detail: str = ""

  def line(self) -> str:
    """One line: the status, the claim, the estimate +- SE and how far it is from holding."""
    status = "holds" if self.holds else "undecided" if self.undecided else "does NOT hold"
    if self.holds:
      how = f"{self.estimate:+.3f} +- {self.se:.3f} (> 2 SE)"
    elif self.estimate <= 0:
      how = f"{self.estimate:+.3f} +- {self.se:.3f}: the wrong side, by {abs(self.estimate):.3f}"
    else:
      how = (f"{self.estimate:+.3f} +- {self.se:.3f}: within 2 SE ({2 * self.se:.3f}), short by "
             f"{2 * self.se - self.estimate:.3f}")
    return f"[{status}] {self.claim}: {how}" + (f" ({self.detail})" if self.detail else "")


def paired_difference(claim: str, a_P: np.ndarray, b_P: np.ndarray,
                      bootstrap: Bootstrap) -> Verdict:
  """The claim "mean a > mean b", judged on the paired difference."""
  diff, se = bootstrap.mean_se(np.asarray(a_P, np.float64) - np.asarray(b_P, np.float64))
  return Verdict(claim, float(diff), float(se), holds=bool(diff > 2 * se))


def baseline_sources(baselines: Sequence[Samples],
                     weights: Sequence[float] = MIXTURE_WEIGHTS) -> list[Source]:
  """Every baseline, and every pair of them mixed at each weight."""
  sources: list[Source] = list(baselines)
  for i, first in enumerate(baselines):
    for second in baselines[i + 1:]:
      sources += [Mixture(first, second, w) for w in weights]
  return sources


@dataclasses.dataclass(frozen=True)
class HullPoint:
  label: str
  nfe: float
  k: float              # samples drawn for the compute-matched budget
  pass1_P: np.ndarray
  passk_P: np.ndarray
  bounded: bool


def hull_points(sources: Sequence[Source], k: int, nfe: float) -> list[HullPoint]:
  """Each source at Pass@1 and at Pass@k' for the budget of k samples at `nfe` each."""
  points = []
  for source in sources:
    k_matched = matched_k(k, nfe, source)
    table = curves(source, max_k=math.ceil(k_matched) + 1)
    passk, bounded = pass_at(table, k_matched)
    points.append(HullPoint(source.label, source.nfe, k_matched, table[:, 1], passk, bounded))
  return points


def hull_verdict(claimed: Samples, baselines: Sequence[Samples], bootstrap: Bootstrap,
                 k: int | None = None, weights: Sequence[float] = MIXTURE_WEIGHTS
                 ) -> tuple[Verdict, list[HullPoint]]:
  """Whether `claimed` (at Pass@1 and Pass@k, k = its sample count by default) lies above the
  hull of the baselines and their mixtures at compute-matched k, beyond 2 SE of the margin."""
  k = claimed.num_samples if k is None else k
  if not 1 <= k <= claimed.num_samples:
    raise ValueError(f"{claimed.label}: k must be in [1, {claimed.num_samples}], got {k}")
  others = [b for b in baselines if b is not claimed]
  if not others:
    raise ValueError(f"{claimed.label}: no baselines to compare with")
  table = pass_curves(claimed)
  x_P, y_P = table[:, 1], table[:, k]
  points = hull_points(baseline_sources(others, weights), k, claimed.nfe)
  xs_QP = np.stack([p.pass1_P for p in points])
  ys_QP = np.stack([p.passk_P for p in points])
  margin = Frontier(xs_QP.mean(1), ys_QP.mean(1)).margin(x_P.mean(), y_P.mean())
  idx = bootstrap.indices_BP
  replicates = [Frontier(xs_QP[:, i].mean(1), ys_QP[:, i].mean(1)).margin(x_P[i].mean(),
                                                                          y_P[i].mean())
                for i in idx]
  se = float(np.std(replicates))
  bounded = [p for p in points if p.bounded]
  clears = bool(margin > 2 * se)
  height = Frontier(xs_QP.mean(1), ys_QP.mean(1)).height(x_P.mean())
  vertical = (f"the hull's Pass@k at its Pass@1: {height:.3f}" if np.isfinite(height)
              else "no baseline mixture reaches its Pass@1")
  detail = (f"Pass@1 {x_P.mean():.3f}, Pass@{k} {y_P.mean():.3f} at {claimed.nfe:.1f} NFE; "
            f"{vertical}; baselines at {k} x {claimed.nfe:.1f} forwards, e.g. "
            f"{points[0].label} Pass@{points[0].k:.1f}")
  if bounded:
    detail += (f"; {len(bounded)} hull points are lower bounds (e.g. {bounded[0].label} needs "
               f"{bounded[0].k:.1f} samples): draw more baseline samples to decide")
  claim = f"{claimed.label} lies above the baselines' hull (diagonal margin)"
  return Verdict(claim, float(margin), se, holds=clears and not bounded,
                 undecided=clears and bool(bounded), detail=detail), points


def cost_verdict(label: str, correct_P: np.ndarray, cost_P: np.ndarray,
                 baselines: dict[str, tuple[np.ndarray, np.ndarray]],
                 bootstrap: Bootstrap) -> Verdict:
  """Accuracy against cost (one sample per problem, e.g. greedy decoding at some NFE): whether
  `label`'s accuracy lies above the baselines' hull at its own mean cost by more than 2 SE.

  A per-problem coin between two baselines reaches every convex combination of their (mean cost,
  accuracy) points, and answering nothing is free (cost 0, accuracy 0), so the hull is the upper
  concave envelope of those points. The gap is vertical: accuracy at equal mean cost. Pairing:
  every decoder's per-problem correctness and cost are resampled together."""
  def gap(index):
    costs = np.array([0.0] + [c[index].mean() for _, c in baselines.values()])
    accs = np.array([0.0] + [a[index].mean() for a, _ in baselines.values()])
    # x = -cost (higher is better) so that `Frontier` applies: the hull's best accuracy at a mean
    # cost <= the claim's.
    return correct_P[index].mean() - Frontier(-costs, accs).height(-cost_P[index].mean())

  correct_P, cost_P = np.asarray(correct_P, np.float64), np.asarray(cost_P, np.float64)
  everything = np.arange(len(correct_P))
  estimate = gap(everything)
  se = float(np.std([gap(index) for index in bootstrap.indices_BP]))
  return Verdict(f"{label} lies above the baselines' accuracy-NFE hull", float(estimate), se,
                 holds=bool(estimate > 2 * se),
                 detail=f"accuracy {correct_P.mean():.3f} at {cost_P.mean():.2f} NFE")


# ---------------------------------------------------------------------------------------------
# Tables.

def fmt(mean: float, se: float, bounded: bool = False) -> str:
  return f"{'>=' if bounded else ''}{mean:.3f} +- {se:.3f}"


def pass_table(samples: Sequence[Samples], bootstrap: Bootstrap, n: int | None = None,
               budgets: Sequence[float] = ()) -> str:
  """Markdown: per sampler NFE, Pass@k (k = 1, 2, 4, .., n) +- SE, distinct answers and answer
  entropy on the first n samples (+- SE), and Pass at each budget of forward passes per problem
  (each sampler at k = budget / its NFE; `>=`: a lower bound, more samples were needed)."""
  n = min(s.num_samples for s in samples) if n is None else n
  ks = pass_at_k.default_ks(n)
  header = (["sampler", "NFE"] + [f"Pass@{k}" for k in ks] + ["distinct answers",
            "answer entropy (nats)"] + [f"Pass at {b:g} forwards" for b in budgets])
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for s in samples:
    table = pass_curves(s)
    cells = [s.label, f"{s.nfe:.1f}"] + [fmt(*bootstrap.mean_se(table[:, k])) for k in ks]
    if s.answers_PN is not None:
      cells += [fmt(*bootstrap.mean_se(distinct_answers_P(s, n))),
                fmt(*bootstrap.mean_se(answer_entropy_P(s, n)))]
    else:
      cells += ["", ""]
    for budget in budgets:
      values, bounded = pass_at(table, budget / s.nfe)
      cells.append(fmt(*bootstrap.mean_se(values), bounded))
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def summary_record(s: Samples, bootstrap: Bootstrap, n: int) -> dict:
  """JSON-ready numbers of one sampler: Pass@k for k = 1..n with SEs, NFE and diversity."""
  table = pass_curves(s)
  record = {"label": s.label, "baseline": s.baseline, "nfe": s.nfe, "problems": s.num_problems,
            "samples": s.num_samples,
            "pass_at": {k: bootstrap.mean_se(table[:, k]) for k in range(1, n + 1)}}
  if s.answers_PN is not None:
    record["distinct_answers"] = bootstrap.mean_se(distinct_answers_P(s, n))
    record["answer_entropy"] = bootstrap.mean_se(answer_entropy_P(s, n))
  return record
