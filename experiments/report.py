r"""Pass@k tables and plots for runs of experiments/run.py.

  python -m experiments.report --runs=runs/math500_lowconf,runs/math500_imh --out=report/
  python -m experiments.report --runs=runs/a/random,runs/a/lowconf,runs/a/imh \
      --baselines=random,lowconf --out=report/

Prints a markdown table per benchmark (one row per run directory: Pass@k +- bootstrap SE over
problems, NFE, distinct answers, answer entropy) and writes report.md and PNG plots (pass@k vs k;
Pass@1 vs Pass@k) into --out. With --baselines (run labels as the table prints them), each run
gets a verdict: whether it lies above the hull of the baseline runs and their mixtures at
compute-matched k by more than 2 SE (DESIGN §15); the runs must share their problems.
"""

import pathlib
import sys

from absl import app, flags

from dllm_jax import user_errors
from dllm_jax.eval import report

_RUNS = flags.DEFINE_list("runs", None, "Run directories (output_dir of experiments/run.py).",
                          required=True)
_OUT = flags.DEFINE_string("out", None, "Where to write report.md and the plots.", required=True)
_BASELINES = flags.DEFINE_list("baselines", [], "Labels of the runs that are free baselines "
                               "(random, low-confidence, tempered, TPP, EGI, ...).")


def _report() -> None:
  out = pathlib.Path(_OUT.value)
  if out.exists() and not out.is_dir():
    raise NotADirectoryError(f"--out={out} is a file; name a directory for report.md and the "
                             "plots")
  summaries = report.summarize_runs(_RUNS.value)
  for s in summaries:
    for warning in s.warnings:
      print(f"warning: {s.label}: {warning}", file=sys.stderr)
  text = report.markdown(summaries)
  try:
    lines = [v.line() for v in report.verdicts(_RUNS.value, [s.label for s in summaries],
                                               _BASELINES.value)]
  except ValueError as error:
    sys.exit(f"error: {error}")
  if lines:
    text += "\n" + "\n".join(f"- {line}" for line in lines) + "\n"
  print(text)
  out.mkdir(parents=True, exist_ok=True)
  (out / "report.md").write_text(text)
  for path in report.plot(summaries, out):
    print(f"wrote {path}")


def main(argv):
  del argv
  user_errors.exit_on_user_error(_report, "--out")


if __name__ == "__main__":
  app.run(main)
