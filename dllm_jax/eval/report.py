"""Aggregating runs of `runner`: pass@k tables per benchmark x sampler, and plots.

A run is an output directory of `runner.run`: its `config.json` and its own results files
(`runner.read_results`: other files there, such as a backup copy, are ignored, and each
(problem, sample) counts once). Samples beyond the run's `n_samples` and records of problems that
are not the run's are left out (the latter with a warning); a run with problems missing or short
of samples gets a warning. Its label is the directory name, with as
many parent directories as it takes to tell the runs of one report apart.
"""

from __future__ import annotations

import collections
import dataclasses
import pathlib
import re
from typing import Any, Sequence

import numpy as np

from dllm_jax.eval import metrics, pass_at_k, runner


@dataclasses.dataclass
class RunSummary:
  label: str
  benchmark: str
  problems: int
  samples: int                 # samples per problem (the smallest count over problems)
  pass_at: dict[int, float]    # k -> mean pass@k (unbiased)
  mean_nfe: float
  seconds_per_sample: float
  distinct_answers: float      # mean distinct final answers per problem
  entropy_estimate: float      # mean negative log-prob of committed tokens (nats per token)
  warnings: list[str] = dataclasses.field(default_factory=list)  # partial run, and the like


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
  return RunSummary(
      label=run_dir.name, benchmark=config.get("benchmark", "?"), problems=len(by_problem),
      samples=n, pass_at=pass_at_k.mean_pass_at_k_from_counts(counts, correct, ks),
      mean_nfe=float(np.mean([r["nfe"] for r in records])),
      seconds_per_sample=float(np.mean([r["seconds"] for r in records])),
      distinct_answers=metrics.mean_distinct_answers(
          [[r["answer"] for r in rs] for rs in by_problem.values()]),
      entropy_estimate=float(np.mean([r["neg_logprob"] for r in records])),
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
    header = (["run", "problems x n"] + [f"pass@{k}" for k in ks] +
              ["NFE", "s/sample", "distinct answers", "-log p / token"])
    lines = [f"### {benchmark}", "", "| " + " | ".join(header) + " |",
             "|" + "---|" * len(header)]
    for s in rows:
      cells = ([s.label, f"{s.problems} x {s.samples}"] +
               [f"{s.pass_at[k]:.3f}" if k in s.pass_at else "" for k in ks] +
               [f"{s.mean_nfe:.0f}", f"{s.seconds_per_sample:.3f}",
                f"{s.distinct_answers:.2f}", f"{s.entropy_estimate:.3f}"])
      lines.append("| " + " | ".join(cells) + " |")
    notes = [f"- **{s.label}**: {w}" for s in rows for w in s.warnings]
    out.append("\n".join(lines + ([""] + notes if notes else [])))
  return "\n\n".join(out) + "\n"


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
      left.plot(ks, [s.pass_at[k] for k in ks], marker="o", label=s.label)
      right.scatter(s.pass_at[1], s.pass_at[max(ks)], label=s.label)
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
