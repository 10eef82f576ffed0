"""The quality-exploration trade-off of every sampler on the built-in tasks, measured honestly
(DESIGN §15; `dllm_jax.eval.compare` says how): `python -m experiments.tradeoff [--quick]`.

Per task, on held-out problems only (nothing is tuned on them: every sampler setting below is
fixed in advance), each sampler draws n samples per problem; the free baselines draw as many as
the most expensive sampler's compute buys them (n x its NFE / theirs), so that compute-matched
Pass@k is measured rather than bounded. Written per task: table.md (Pass@k +- SE, NFE, distinct
answers and answer entropy on the first n samples, Pass at equal forward passes), verdicts.md
(per sampler: above the hull of the other baselines and their mixtures, by how much),
results.json and tradeoff.png (Pass@1 against Pass@n with error bars and the baselines' hull,
one panel per claimed sampler at its compute-matched k, plus one at equal samples).

To add a sampler: one entry in BASELINES (a free baseline, part of the hull) or CLAIMED (judged
against the hull). To add a task: one entry in TASKS (a built-in model with `encode_prompts` and
`verify`, see `builtin.BuiltinModel`). QUICK names the subset `--quick` runs.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import time
from typing import Any, Callable, Sequence

import numpy as np

from dllm_jax import sampling
from dllm_jax.eval import compare
from dllm_jax.tasks import builtin, draws

SamplerFactory = Callable[[sampling.Sampler], sampling.Sampler]


def _random(t: float) -> SamplerFactory:
  return lambda base: base.replace(remasking=sampling.Random(), temperature=t)


def _imh(alpha: float, k: int) -> SamplerFactory:
  return lambda base: base.replace(remasking=sampling.IMH(alpha=alpha, num_candidates=k),
                                   temperature=None)


# The free baselines of DESIGN §15 (their pairwise mixtures are added by `compare`).
BASELINES: dict[str, SamplerFactory] = {
    "random T=1": _random(1.0),
    "low-confidence T=1": lambda base: base.replace(remasking=sampling.LowConfidence(),
                                                    temperature=1.0),
    "random T=1/2": _random(0.5),
    "TPP T=1": lambda base: base.replace(remasking=sampling.RankThenSample(), temperature=1.0),
    "EGI T=1.5 then 1": lambda base: base.replace(
        remasking=sampling.EGI(first_temperature=1.5), temperature=1.0),
}

# The samplers that claim a better trade-off. IMH with K = 1 is per-token tempering at 1/alpha
# (plus one forward pass): the reference for what the K candidates add.
CLAIMED: dict[str, SamplerFactory] = {
    "IMH alpha=2 K=1": _imh(2.0, 1),
    "IMH alpha=2 K=2": _imh(2.0, 2),
    "IMH alpha=2 K=4": _imh(2.0, 4),
    # Sequence-level samplers that go past the mean-field floor on exact laws (README, "IMH and
    # its target"): rollout estimates of the suffix mass, and sequential Monte Carlo.
    "RolloutIMH alpha=2 K=2 R=1": lambda base: base.replace(
        remasking=sampling.RolloutIMH(alpha=2.0, num_candidates=2, num_rollouts=1),
        temperature=None),
    "SMC alpha=2 P=4": lambda base: base.replace(
        remasking=sampling.SMC(alpha=2.0, num_particles=4), temperature=None),
    # The same weights over the low-confidence order: on grid paths the order alone moves
    # Pass@1 from 0.25 (random) to 0.86 (low-confidence).
    "SMC alpha=2 P=4 conf. order": lambda base: base.replace(
        remasking=sampling.SMC(alpha=2.0, num_particles=4, positions=sampling.LowConfidence()),
        temperature=None),
}
# Also measurable, left out of the default run for time (each is one line above): K = 8 (57 NFE,
# the demo's) makes the baselines draw 131 samples per problem instead of 67; alpha = 3 needs the
# baseline "random T=1/3": _random(1 / 3).


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  model_path: pathlib.Path
  heldout_problems: int | None = None          # None: every held-out problem
  sampler_fields: dict[str, Any] = dataclasses.field(default_factory=dict)  # block_length, ...
  # At most this many samples per problem for each baseline (None: what compute matching asks);
  # beyond it a baseline's compute-matched Pass@k is a lower bound, and a claim that clears a
  # bounded hull is "undecided", never "holds" (`compare.hull_verdict`).
  max_baseline_samples: int | None = None


TASKS: dict[str, TaskSpec] = {
    "countdown": TaskSpec(builtin.COUNTDOWN),   # all 221 held-out problems, one token per step
    # Dead ends (grid_path.py). RolloutIMH costs 345 NFE a sample here: matching it would take
    # 291 samples per baseline, so its hull points are bounds at 80.
    "grid_path": TaskSpec(builtin.GRID_PATH, heldout_problems=100, max_baseline_samples=80),
}


@dataclasses.dataclass(frozen=True)
class Settings:
  samples: int = 16                       # n per problem for every sampler
  problems: int | None = None             # None: the task's own count
  batch_rows: int = 800
  bootstrap_resamples: int = 1000
  baselines: Sequence[str] = tuple(BASELINES)
  claimed: Sequence[str] = tuple(CLAIMED)


QUICK = Settings(samples=4, problems=12, batch_rows=64, bootstrap_resamples=200,
                 baselines=("random T=1", "low-confidence T=1", "random T=1/2"),
                 claimed=("IMH alpha=2 K=2",))


@dataclasses.dataclass
class Comparison:
  title: str
  samples: int                                 # n: the Pass@k axis and the diversity sample
  draws: dict[str, draws.Draw]
  bootstrap: compare.Bootstrap
  verdicts: dict[str, compare.Verdict]
  points: dict[str, list[compare.HullPoint]]   # the hull points each verdict used

  @property
  def all_samples(self) -> list[compare.Samples]:
    return [d.samples for d in self.draws.values()]

  def budgets(self) -> list[float]:
    nfes = [s.nfe for s in self.all_samples]
    return sorted({self.samples * min(nfes), self.samples * max(nfes)})

  def table(self) -> str:
    return compare.pass_table(self.all_samples, self.bootstrap, self.samples, self.budgets())

  def verdict_lines(self) -> list[str]:
    return [v.line() for v in self.verdicts.values()]


def problems_for(model: builtin.BuiltinModel, count: int | None, seed: int) -> list:
  if count is None:
    count = len(model.task.problems("heldout"))
  return model.task.sample_problems("heldout", count, seed=seed)


def compare_samplers(model: builtin.BuiltinModel, problems: Sequence,
                     baselines: dict[str, sampling.Sampler],
                     claimed: dict[str, sampling.Sampler], samples: int,
                     baseline_samples: int | None = None, batch_rows: int = 800, seed: int = 0,
                     bootstrap_resamples: int = 1000, title: str = "",
                     max_baseline_samples: int | None = None) -> Comparison:
  """Draws every sampler (claimed first, n samples; baselines as many as compute matching at
  the costliest claimed sampler needs, at most `max_baseline_samples`, unless
  `baseline_samples` is given), then judges each sampler against the hull of the baselines
  other than itself."""
  if not baselines:
    raise ValueError("need at least one baseline")
  progress = draws.Progress()
  cost = draws.forward_passes_per_row
  for sampler in claimed.values():
    progress.add(len(problems) * samples, cost(sampler))
  cap = lambda n: n if max_baseline_samples is None else max(samples, min(n, max_baseline_samples))
  expected = baseline_samples or cap(max(  # what compute matching will ask, for the ETA
      [samples] + [math.ceil(samples * cost(s) / min(cost(b) for b in baselines.values()))
                   for s in claimed.values()]))
  planned = [(len(problems) * expected, cost(b)) for b in baselines.values()]
  for rows, per_row in planned:
    progress.add(rows, per_row)
  results: dict[str, draws.Draw] = {}
  for index, (label, sampler) in enumerate(claimed.items()):
    results[label] = draws.draw(model, sampler, problems, samples, batch_rows, seed + 1 + index,
                                label, baseline=False, progress=progress)
  if baseline_samples is None:
    costliest = max([d.samples.nfe for d in results.values()], default=0.0)
    cheapest = min(s.total_steps for s in baselines.values())
    baseline_samples = cap(max(samples, math.ceil(samples * costliest / cheapest - 1e-9)))
  for rows, per_row in planned:  # the measured NFE set the baselines' samples: re-plan
    progress.add(len(problems) * baseline_samples - rows, per_row)
  for index, (label, sampler) in enumerate(baselines.items()):
    results[label] = draws.draw(model, sampler, problems, baseline_samples, batch_rows,
                                seed + 101 + index, label, baseline=True, progress=progress)
  return judge(results, samples, bootstrap_resamples, seed, title)


def judge(results: dict[str, draws.Draw], samples: int, bootstrap_resamples: int, seed: int,
          title: str) -> Comparison:
  """Each sampler against the hull of the baselines other than itself, at k = `samples`."""
  any_draw = next(iter(results.values())).samples
  bootstrap = compare.Bootstrap.draw(any_draw.num_problems, bootstrap_resamples, seed)
  base = [d.samples for d in results.values() if d.samples.baseline]
  verdicts, points = {}, {}
  for label, result in results.items():
    if result.samples.baseline and len(base) < 2:
      continue  # a lone baseline has nothing to be judged against
    verdicts[label], points[label] = compare.hull_verdict(result.samples, base, bootstrap,
                                                          k=samples)
  return Comparison(title, samples, results, bootstrap, verdicts, points)


def plot(comparison: Comparison, path: pathlib.Path) -> pathlib.Path:
  """Pass@1 against Pass@n with +-1 SE bars: all samplers at equal samples, then one panel per
  claimed sampler with the baselines (and mixtures, grey) at its compute-matched k and the hull."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  n, boot = comparison.samples, comparison.bootstrap
  claimed = [s for s in comparison.all_samples if not s.baseline]
  panels = 1 + len(claimed)
  cols = min(3, panels)
  rows = math.ceil(panels / cols)
  fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.4 * rows), squeeze=False)
  flat = axes.ravel()

  def point(ax, x_P, y_P, label, **style):
    (x, sx), (y, sy) = boot.mean_se(x_P), boot.mean_se(y_P)
    ax.errorbar(x, y, xerr=sx, yerr=sy, capsize=2, label=label, **{"marker": "o", **style})

  ax = flat[0]
  for s in comparison.all_samples:
    table = compare.pass_curves(s)
    point(ax, table[:, 1], table[:, n], f"{s.label} ({s.nfe:.0f} NFE)",
          marker="o" if s.baseline else "*", markersize=5 if s.baseline else 10)
  ax.set(title=f"{comparison.title}: equal samples (k = {n})", xlabel="Pass@1",
         ylabel=f"Pass@{n}")
  ax.legend(fontsize=6)
  for ax, s in zip(flat[1:], claimed):
    hull_points = comparison.points[s.label]
    xs = np.array([p.pass1_P.mean() for p in hull_points])
    ys = np.array([p.passk_P.mean() for p in hull_points])
    mixture = np.array([p.label.startswith("mix ") for p in hull_points])
    ax.scatter(xs[mixture], ys[mixture], s=6, color="0.7", label="mixtures of two baselines")
    for p in (p for p in hull_points if not p.label.startswith("mix ")):
      point(ax, p.pass1_P, p.passk_P, f"{p.label} @{p.k:.1f}" + (" (bound)" if p.bounded else ""),
            markersize=4)
    frontier = compare.Frontier(xs, ys)
    hx = np.concatenate([[xs.min() - 0.02], frontier.x, [frontier.x[-1]]])
    hy = np.concatenate([[frontier.y[0]], frontier.y, [ys.min() - 0.02]])
    ax.plot(hx, hy, "k--", lw=1, label="baselines' hull")
    table = compare.pass_curves(s)
    point(ax, table[:, 1], table[:, n], f"{s.label} @{n}", marker="*", markersize=12,
          color="black")
    verdict = comparison.verdicts[s.label]
    ax.set(title=f"{s.label} ({s.nfe:.0f} NFE): margin {verdict.estimate:+.3f} +- "
                 f"{verdict.se:.3f}", xlabel="Pass@1",
           ylabel=f"Pass@k at {n} x {s.nfe:.0f} forwards")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=5)
  for ax in flat[panels:]:
    ax.axis("off")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def write(comparison: Comparison, out_dir: pathlib.Path, extra_lines: Sequence[str] = (),
          extra: dict[str, Any] | None = None) -> dict[str, Any]:
  """table.md, verdicts.md, results.json and tradeoff.png in `out_dir`."""
  out_dir.mkdir(parents=True, exist_ok=True)
  table, lines = comparison.table(), [*extra_lines, *comparison.verdict_lines()]
  (out_dir / "table.md").write_text(table)
  (out_dir / "verdicts.md").write_text("\n".join(f"- {line}" for line in lines) + "\n")
  results = {
      "title": comparison.title, "samples": comparison.samples,
      "bootstrap_resamples": len(comparison.bootstrap.indices_BP),
      "samplers": [dict(compare.summary_record(d.samples, comparison.bootstrap,
                                               comparison.samples), seconds=d.seconds,
                        neg_logprob_per_token=d.neg_logprob_per_token)
                   for d in comparison.draws.values()],
      "verdicts": {label: dataclasses.asdict(v) for label, v in comparison.verdicts.items()},
      **(extra or {})}
  (out_dir / "results.json").write_text(json.dumps(results, indent=2))
  plot(comparison, out_dir / "tradeoff.png")
  save_draws(comparison, out_dir / "draws.npz")
  return results


def save_draws(comparison: Comparison, path: pathlib.Path) -> None:
  """Every sampler's correctness and answers, so that tables and verdicts can be recomputed
  (`load_draws`) without decoding again."""
  arrays = {}
  for i, d in enumerate(comparison.draws.values()):
    s = d.samples
    arrays[f"{i}_correct"] = s.correct_PN
    arrays[f"{i}_answers"] = np.array(["" if a is None else a for a in s.answers_PN.ravel()],
                                      dtype=str).reshape(s.correct_PN.shape)
    arrays[f"{i}_answered"] = np.array([a is not None for a in s.answers_PN.ravel()]
                                       ).reshape(s.correct_PN.shape)
    arrays[f"{i}_meta"] = np.array(json.dumps(
        {"label": s.label, "nfe": s.nfe, "baseline": s.baseline, "seconds": d.seconds,
         "neg_logprob_per_token": d.neg_logprob_per_token}))
  np.savez_compressed(path, samples=np.array(comparison.samples), title=np.array(comparison.title),
                      **arrays)


def load_draws(path: str | pathlib.Path, bootstrap_resamples: int = 1000,
               seed: int = 0) -> Comparison:
  """A comparison recomputed from `save_draws`'s file."""
  data = np.load(path)
  results = {}
  for i in range(sum(name.endswith("_meta") for name in data.files)):
    meta = json.loads(str(data[f"{i}_meta"]))
    answers = data[f"{i}_answers"].astype(object)
    answers[~data[f"{i}_answered"]] = None
    samples = compare.Samples(meta["label"], data[f"{i}_correct"], meta["nfe"], answers,
                              meta["baseline"])
    results[meta["label"]] = draws.Draw(samples, meta["seconds"], meta["neg_logprob_per_token"])
  return judge(results, int(data["samples"]), bootstrap_resamples, seed, str(data["title"]))


def report(comparison: Comparison, out_dir: pathlib.Path, extra: dict[str, Any]) -> None:
  """Writes the comparison to `out_dir` and prints the table and the verdicts."""
  write(comparison, out_dir, extra=extra)
  baseline_n = max(s.num_samples for s in comparison.all_samples if s.baseline)
  print(f"\n## {comparison.title}, n = {comparison.samples} samples (baselines: {baseline_n})\n")
  print(comparison.table())
  print("\n".join(comparison.verdict_lines()))
  print(f"\nwrote {out_dir}")


def run(out_dir: str | pathlib.Path, tasks: Sequence[str] = tuple(TASKS), quick: bool = False,
        seed: int = 0, settings: Settings | None = None,
        from_draws: str | pathlib.Path | None = None) -> dict[str, Comparison]:
  """The comparison for each task: prints the table and the verdicts, writes them to
  `out_dir`/<task>/. `from_draws`: an earlier run's output directory, whose draws.npz are
  judged again instead of decoding."""
  settings = settings or (QUICK if quick else Settings())
  unknown = [t for t in tasks if t not in TASKS]
  if unknown:
    raise ValueError(f"unknown task {unknown[0]!r}; known: {', '.join(TASKS)}")
  out = {}
  for task in tasks:
    if from_draws:
      comparison = load_draws(pathlib.Path(from_draws) / task / "draws.npz",
                              settings.bootstrap_resamples, seed)
      report(comparison, pathlib.Path(out_dir) / task, {"seed": seed, "from_draws": from_draws})
      out[task] = comparison
      continue
    start = time.time()
    spec = TASKS[task]
    model = builtin.load_builtin(spec.model_path)
    problems = problems_for(model, settings.problems or spec.heldout_problems, seed)
    base = sampling.Sampler.for_model(model.config, gen_length=model.gen_length,
                                      **spec.sampler_fields)
    comparison = compare_samplers(
        model, problems, {label: BASELINES[label](base) for label in settings.baselines},
        {label: CLAIMED[label](base) for label in settings.claimed}, settings.samples,
        batch_rows=settings.batch_rows, seed=seed,
        bootstrap_resamples=settings.bootstrap_resamples,
        title=f"{task} ({len(problems)} held-out problems)",
        max_baseline_samples=spec.max_baseline_samples)
    seconds = time.time() - start
    report(comparison, pathlib.Path(out_dir) / task, {"seconds": seconds, "seed": seed})
    print(f"({seconds:.0f} s)")
    out[task] = comparison
  return out
