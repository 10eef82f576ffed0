"""Aggregating runs of `runner`: pass@k tables per benchmark x sampler, and plots.

A run is an output directory of `runner.run`: its `config.json` and its own results files
(`runner.read_results`: other files there, such as a backup copy, are ignored, and each
(problem, sample) counts once). Samples beyond the run's `n_samples` and records of problems that
are not the run's are left out (the latter with a warning); a run with problems missing or short
of samples gets a warning. Its label is the directory name, with as
many parent directories as it takes to tell the runs of one report apart.

Every figure has its bootstrap standard error over problems (`compare`), NFE stands beside it,
and diversity is measured on the answers: distinct answers and the plug-in entropy of the answer
distribution per problem. `verdicts` judges runs against baseline runs of the same problems
(the hull of the baselines and their mixtures at compute-matched k, DESIGN §15).
"""

from __future__ import annotations

import collections
import dataclasses
import pathlib
import re
from typing import Any, Sequence

import numpy as np

from dllm_jax.eval import compare, metrics, pass_at_k, runner


@dataclasses.dataclass
class RunSummary:
  label: str
  benchmark: str
  problems: int
  samples: int                 # samples per problem (the smallest count over problems)
  pass_at: dict[int, float]    # k -> mean pass@k (unbiased)
  pass_at_se: dict[int, float]  # k -> its bootstrap standard error over problems
  mean_nfe: float
  seconds_per_sample: float
  distinct_answers: float      # mean distinct final answers per problem
  answer_entropy: float        # mean plug-in entropy (nats) of the answers per problem
  answer_entropy_se: float
  neg_logprob_per_token: float  # mean -log p of committed tokens: not an entropy of the outputs
  warnings: list[str] = dataclasses.field(default_factory=list)  # partial run, and the like


BOOTSTRAP_RESAMPLES = 1000


def summarize(run_dir: str | pathlib.Path) -> RunSummary:
  run_dir = pathlib.Path(run_dir)
  config = runner.read_run_config(run_dir)
  n_config = config.get("n_samples")
  expected = config.get("problems")
  records = [r for r in runner.read_results(run_dir)
             if n_config is None or r["sample"] < n_config]
  warnings = []
  if expected is not None:
    in_run = set(expected)
    strays = [r["problem_id"] for r in records if r["problem_id"] not in in_run]
    if strays:
      warnings.append(f"ignored {len(strays)} records of problems that are not in this run "
                      f"(first: {strays[0]}); they were appended from elsewhere")
      records = [r for r in records if r["problem_id"] in in_run]
  if not records:
    raise ValueError(f"{run_dir} has no results yet")
  by_problem: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
  for record in records:
    by_problem[record["problem_id"]].append(record)
  if expected is not None:
    missing = [p for p in expected if p not in by_problem]
    if missing:
      warnings.append(f"partial run: {len(missing)} of {len(expected)} problems have no samples "
                      f"(first: {missing[0]}); resume it with the same command")
  if n_config is not None:
    short = sorted(p for p, rs in by_problem.items() if len(rs) < n_config)
    if short:
      warnings.append(f"partial run: {len(short)} problems have fewer than n_samples={n_config} "
                      f"samples; pass@k uses k <= {min(len(by_problem[p]) for p in short)}")
  n = min(len(rs) for rs in by_problem.values())
  counts = [len(rs) for rs in by_problem.values()]
  correct = [sum(r["correct"] for r in rs) for rs in by_problem.values()]
  ks = pass_at_k.default_ks(n)
  bootstrap = compare.Bootstrap.draw(len(by_problem), BOOTSTRAP_RESAMPLES, seed=0)
  per_problem = {k: np.array([pass_at_k.pass_at_k(m, c, k) for m, c in zip(counts, correct)])
                 for k in ks}
  answers = [[r["answer"] for r in sorted(rs, key=lambda r: r["sample"])[:n]]
             for rs in by_problem.values()]
  entropy, entropy_se = bootstrap.mean_se(np.array([metrics.answer_entropy(a) for a in answers]))
  return RunSummary(
      label=run_dir.name, benchmark=config.get("benchmark", "?"), problems=len(by_problem),
      samples=n, pass_at={k: float(v.mean()) for k, v in per_problem.items()},
      pass_at_se={k: bootstrap.mean_se(v)[1] for k, v in per_problem.items()},
      mean_nfe=float(np.mean([r["nfe"] for r in records])),
      seconds_per_sample=float(np.mean([r["seconds"] for r in records])),
      distinct_answers=metrics.mean_distinct_answers(answers),
      answer_entropy=entropy, answer_entropy_se=entropy_se,
      neg_logprob_per_token=float(np.mean([r["neg_logprob"] for r in records])),
      warnings=warnings)


def summarize_runs(run_dirs: Sequence[str | pathlib.Path]) -> list[RunSummary]:
  """`summarize` of each run, labelled uniquely (as many trailing path parts as that takes)."""
  paths = [pathlib.Path(d).absolute() for d in run_dirs]
  if len(set(paths)) < len(paths):
    raise ValueError("the same run directory is listed twice in --runs")
  summaries = [summarize(d) for d in run_dirs]
  depth = 1
  while len({p.parts[-depth:] for p in paths}) < len(paths):
    depth += 1
  for summary, path in zip(summaries, paths):
    summary.label = "/".join(path.parts[-depth:])
  return summaries


def markdown(summaries: Sequence[RunSummary]) -> str:
  """One table per benchmark: a row per run, pass@k columns, then NFE, time and diversity."""
  out = []
  for benchmark in sorted({s.benchmark for s in summaries}):
    rows = [s for s in summaries if s.benchmark == benchmark]
    ks = sorted({k for s in rows for k in s.pass_at})
    header = (["run", "problems x n", "NFE"] + [f"pass@{k}" for k in ks] +
              ["s/sample", "distinct answers", "answer entropy (nats)", "-log p / token"])
    lines = [f"### {benchmark}", "", "| " + " | ".join(header) + " |",
             "|" + "---|" * len(header)]
    for s in rows:
      cells = ([s.label, f"{s.problems} x {s.samples}", f"{s.mean_nfe:.1f}"] +
               [compare.fmt(s.pass_at[k], s.pass_at_se[k]) if k in s.pass_at else ""
                for k in ks] +
               [f"{s.seconds_per_sample:.3f}", f"{s.distinct_answers:.2f}",
                compare.fmt(s.answer_entropy, s.answer_entropy_se),
                f"{s.neg_logprob_per_token:.3f}"])
      lines.append("| " + " | ".join(cells) + " |")
    notes = [f"- **{s.label}**: {w}" for s in rows for w in s.warnings]
    out.append("\n".join(lines + ([""] + notes if notes else [])))
  return "\n\n".join(out) + "\n"


def run_samples(run_dir: str | pathlib.Path, problem_ids: Sequence[str], n: int,
                baseline: bool, label: str) -> compare.Samples:
  """A run's first n samples of each listed problem, for `compare`."""
  by_problem: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
  for record in runner.read_results(run_dir):
    by_problem[record["problem_id"]].append(record)
  rows = [sorted(by_problem[p], key=lambda r: r["sample"])[:n] for p in problem_ids]
  correct = np.array([[r["correct"] for r in rs] for rs in rows], bool)
  answers = np.empty(correct.shape, dtype=object)
  for i, rs in enumerate(rows):
    answers[i, :] = [r["answer"] for r in rs]
  nfe = float(np.mean([r["nfe"] for rs in rows for r in rs]))
  return compare.Samples(label, correct, nfe, answers, baseline)


def verdicts(run_dirs: Sequence[str | pathlib.Path], labels: Sequence[str],
             baselines: Sequence[str]) -> list[compare.Verdict]:
  """Each run against the hull of the baseline runs (labels in `baselines`) other than itself,
  on the problems every run has, at k = the smallest sample count, compute matched."""
  unknown = sorted(set(baselines) - set(labels))
  if unknown:
    raise ValueError(f"--baselines names {unknown[0]!r}, not one of the runs ({', '.join(labels)})")
  if not baselines:
    return []
  ids, counts = None, []
  for run_dir in run_dirs:
    by_problem = collections.Counter(r["problem_id"] for r in runner.read_results(run_dir))
    ids = set(by_problem) if ids is None else ids & set(by_problem)
    counts.append(by_problem)
  problem_ids = sorted(ids or ())
  if not problem_ids:
    raise ValueError("the runs share no problem: verdicts need paired runs of the same problems")
  n = min(c[p] for c in counts for p in problem_ids)
  samples = [run_samples(d, problem_ids, n, label in baselines, label)
             for d, label in zip(run_dirs, labels)]
  bootstrap = compare.Bootstrap.draw(len(problem_ids), BOOTSTRAP_RESAMPLES, seed=0)
  base = [s for s in samples if s.baseline]
  return [compare.hull_verdict(s, base, bootstrap)[0] for s in samples
          if not (s.baseline and len(base) < 2)]


def plot(summaries: Sequence[RunSummary], out_dir: str | pathlib.Path) -> list[pathlib.Path]:
  """Per benchmark: pass@k against k, and the Pass@1 vs Pass@k(max) trade-off."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  written = []
  for benchmark in sorted({s.benchmark for s in summaries}):
    rows = [s for s in summaries if s.benchmark == benchmark]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for s in rows:
      ks = sorted(s.pass_at)
      left.errorbar(ks, [s.pass_at[k] for k in ks], yerr=[s.pass_at_se[k] for k in ks],
                    marker="o", capsize=2, label=f"{s.label} ({s.mean_nfe:.0f} NFE)")
      right.errorbar(s.pass_at[1], s.pass_at[max(ks)], xerr=s.pass_at_se[1],
                     yerr=s.pass_at_se[max(ks)], marker="o", capsize=2, label=s.label)
      right.annotate(f"{s.label} (k={max(ks)})", (s.pass_at[1], s.pass_at[max(ks)]), fontsize=8)
    left.set(xscale="log", xlabel="k", ylabel="pass@k", title=f"{benchmark}: pass@k")
    left.set_xscale("log", base=2)
    left.legend(fontsize=8)
    right.set(xlabel="Pass@1", ylabel="Pass@k (largest k)", title="quality vs exploration")
    fig.tight_layout()
    path = out_dir / (re.sub(r"[^A-Za-z0-9_.-]+", "_", benchmark).strip("_") + "_pass_at_k.png")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    written.append(path)
  return written
