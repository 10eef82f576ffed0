"""The main demo at reduced size, through its command line: well-formed table, JSON and plot."""

import json
import subprocess
import sys

from dllm_jax.tasks import countdown_demo
from tests.conftest import REPO_ROOT


def test_shipped_model_is_in_the_package():
  model = countdown_demo.load_builtin()
  assert model.config.vocab_size == model.tokenizer.vocab_size
  assert (countdown_demo.BUILTIN / "train_log.txt").is_file()
  size = sum(p.stat().st_size for p in countdown_demo.BUILTIN.rglob("*") if p.is_file())
  assert size < 25 * 2**20


def test_demo_at_reduced_size(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "experiments.demo", "--problems=8", "--samples=4",
       "--batch_rows=16", "--num_candidates=2", f"--out={tmp_path}"],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  out = result.stdout
  for label in ("random T=1", "low-confidence T=1", "IMH alpha=2 K=2"):
    assert f"| {label} | 8 x 4 |" in out
  assert "| run | problems x n | pass@1 | pass@2 | pass@4 | NFE |" in out
  assert out.count("[holds]") + out.count("[does NOT hold]") == 3
  assert "32/32 samples" not in out and "96/96 samples" in result.stderr  # progress on stderr
  results = json.loads((tmp_path / "results.json").read_text())
  assert [run["samples"] for run in results["runs"]] == [4, 4, 4]
  nfe = {run["label"]: run["mean_nfe"] for run in results["runs"]}
  gen = countdown_demo.countdown_data.gen_length(countdown_demo.load_builtin().task)
  assert nfe == {"random T=1": gen, "low-confidence T=1": gen, "IMH alpha=2 K=2": 1 + 2 * gen}
  for run in results["runs"]:
    assert set(run["pass_at"]) == {"1", "2", "4"}
    values = [run["pass_at"][k] for k in ("1", "2", "4")]
    assert all(0 <= v <= 1 for v in values) and values == sorted(values)
  assert (tmp_path / "table.md").read_text() in out
  assert (tmp_path / "countdown_held-out_pass_at_k.png").stat().st_size > 10_000


def test_demo_with_position_first_rules(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "experiments.demo", "--problems=4", "--samples=2",
       "--batch_rows=8", "--num_candidates=2", "--position_first", f"--out={tmp_path}"],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  for label in ("TPP T=1", "EGI T=1.5 then 1"):
    assert f"| {label} | 4 x 2 |" in result.stdout
  assert result.stdout.count("[holds]") + result.stdout.count("[does NOT hold]") == 5
  results = json.loads((tmp_path / "results.json").read_text())
  gen = countdown_demo.countdown_data.gen_length(countdown_demo.load_builtin().task)
  assert [run["mean_nfe"] for run in results["runs"][3:]] == [gen, gen]


def test_the_eta_counts_imh_rows_at_their_cost():
  """IMH's rows cost about K times a baseline's: an ETA that counts rows alone said 25 s at 124 s
  elapsed of a run that took 201 s."""
  import pytest  # pylint: disable=import-outside-toplevel
  model = countdown_demo.load_builtin()
  samplers = countdown_demo.default_samplers(model, 1.0, 2.0, 8)
  costs = [countdown_demo.forward_passes_per_row(s) for s in samplers.values()]
  gen = countdown_demo.countdown_data.gen_length(model.task)
  assert costs == [gen, gen, 1 + 8 * gen]  # the NFE the demo measures (test above)
  now = [0.0]
  progress = countdown_demo._Progress(  # pylint: disable=protected-access
      300, sum(100 * c for c in costs), clock=lambda: now[0])
  for label, cost in zip(samplers, costs[:2]):  # time in proportion to forward passes
    now[0] += cost
    progress.update(100, label, cost)
  assert progress.eta() == pytest.approx(costs[2])  # what the IMH rows will take
