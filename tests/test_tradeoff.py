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


def test_capped_baselines_are_bounds_and_rollout_cost_is_exact():
  """A task's `max_baseline_samples` caps the baselines' draws; their compute-matched points past
  it are lower bounds, so the verdict cannot be "holds". The ETA's cost of a RolloutIMH row is
  its measured NFE (one token per step)."""
  from dllm_jax import sampling  # pylint: disable=import-outside-toplevel
  from dllm_jax.tasks import builtin, draws  # pylint: disable=import-outside-toplevel
  model = builtin.load_builtin(tradeoff.TASKS["countdown"].model_path)
  base = sampling.Sampler.for_model(model.config, gen_length=model.gen_length)
  rollout = tradeoff.CLAIMED["RolloutIMH alpha=2 K=2 R=1"](base)
  problems = tradeoff.problems_for(model, 3, seed=0)
  comparison = tradeoff.compare_samplers(
      model, problems, {label: tradeoff.BASELINES[label](base)
                        for label in ("random T=1", "random T=1/2")},
      {"rollout": rollout}, samples=2, batch_rows=16, bootstrap_resamples=50,
      max_baseline_samples=4)
  claimed = comparison.draws["rollout"].samples
  steps = base.total_steps
  assert claimed.nfe == draws.forward_passes_per_row(rollout) == (
      1 + 2 * steps + 2 * (steps - 1) * (steps - 2) // 2)
  # Matching would ask ceil(2 x 45 / 7) = 13 samples of each baseline; the cap gives 4.
  assert all(comparison.draws[b].samples.num_samples == 4 for b in ("random T=1", "random T=1/2"))
  points = [p for p in comparison.points["rollout"] if not p.label.startswith("mix ")]
  assert points and all(p.bounded and p.k == pytest.approx(2 * claimed.nfe / 7) for p in points)
  assert not comparison.verdicts["rollout"].holds
