"""`experiments.tradeoff --quick`, in-process: every sampler in the table with SEs and NFE,
a verdict per sampler, the figures consistent with the draws, and the saved draws reload."""

import json

import numpy as np
import pytest

from dllm_jax.tasks import tradeoff


def test_quick_tradeoff(tmp_path, capsys):
  comparison = tradeoff.run(tmp_path, tasks=("countdown",), quick=True)["countdown"]
  printed = capsys.readouterr().out
  settings = tradeoff.QUICK
  labels = [*settings.claimed, *settings.baselines]
  assert list(comparison.draws) == labels
  gen = comparison.draws["random T=1"].samples
  for label in labels:
    samples = comparison.draws[label].samples
    assert samples.num_problems == settings.problems
    # The table's Pass@1 is the mean correctness, with its SE and the sampler's NFE beside it.
    row = next(line for line in printed.splitlines() if line.startswith(f"| {label} |"))
    assert f"| {samples.nfe:.1f} | {samples.correct_PN.mean():.3f} +- " in row
    assert row.count("+-") == 3 + 2 + 2  # Pass@1,2,4; diversity x2; two budgets
  # IMH K=2 costs 1 + 2 forwards per step; the baselines drew what compute matching needs.
  imh = comparison.draws["IMH alpha=2 K=2"].samples
  assert imh.nfe == 1 + 2 * 7 and imh.num_samples == 4
  assert gen.nfe == 7 and gen.num_samples == int(np.ceil(4 * 15 / 7))
  lines = [line for line in printed.splitlines() if line.startswith("[")]
  assert len(lines) == len(labels)
  assert all(line.split("]")[0] in ("[holds", "[does NOT hold", "[undecided") for line in lines)
  # Compute matched and not bounded: IMH's verdict used Pass@(4 x 15 / 7) of each baseline.
  points = {p.label: p for p in comparison.points["IMH alpha=2 K=2"]}
  assert points["random T=1"].k == pytest.approx(60 / 7) and not points["random T=1"].bounded
  for name in ("table.md", "verdicts.md", "results.json", "tradeoff.png", "draws.npz"):
    assert (tmp_path / "countdown" / name).stat().st_size > 100, name
  results = json.loads((tmp_path / "countdown" / "results.json").read_text())
  assert [r["label"] for r in results["samplers"]] == labels
  # The saved draws give back the same verdicts.
  again = tradeoff.load_draws(tmp_path / "countdown" / "draws.npz",
                              settings.bootstrap_resamples)
  assert again.verdict_lines() == comparison.verdict_lines()
  assert again.table() == comparison.table()
