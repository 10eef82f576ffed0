"""The main demo at reduced size, through its command line: well-formed table, JSON and plot."""

import json
import subprocess
import sys

import pytest

from dllm_jax.tasks import countdown_demo, draws
from tests.conftest import REPO_ROOT


def test_shipped_model_is_in_the_package():
  model = countdown_demo.load_builtin()
  assert model.config.vocab_size == model.tokenizer.vocab_size
  assert (countdown_demo.BUILTIN / "train_log.txt").is_file()
  size = sum(p.stat().st_size for p in countdown_demo.BUILTIN.rglob("*") if p.is_file())
  assert size < 25 * 2**20


@pytest.mark.slow
def test_demo_at_reduced_size(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "experiments.demo", "--problems=8", "--samples=4",
       "--batch_rows=16", "--num_candidates=2", "--bootstrap_resamples=50", f"--out={tmp_path}"],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  out = result.stdout
  gen = countdown_demo.countdown_data.gen_length(countdown_demo.load_builtin().task)
  nfe = {"random T=1": gen, "low-confidence T=1": gen, "random T=1/2": gen, "TPP T=1": gen,
         "EGI T=1.5 then 1": gen, "IMH alpha=2 K=2": 1 + 2 * gen}
  assert ("| sampler | NFE | Pass@1 | Pass@2 | Pass@4 | distinct answers | "
          "answer entropy (nats) |") in out
  for label, cost in nfe.items():
    assert f"| {label} | {cost:.1f} | " in out, label
  # Five paired claims of the dilemma and of Jeon et al., then every sampler against the hull.
  verdicts = [line for line in out.splitlines() if line.startswith("[")]
  assert len(verdicts) == 5 + len(nfe), verdicts
  assert all(v.split("]")[0] in ("[holds", "[does NOT hold", "[undecided") for v in verdicts)
  assert sum("lies above the baselines' hull" in v for v in verdicts) == len(nfe)
  assert " +- " in verdicts[0]
  assert "192/192 samples" not in out and "192/192 samples]" in result.stderr  # progress: stderr
  results = json.loads((tmp_path / "results.json").read_text())
  runs = {run["label"]: run for run in results["samplers"]}
  assert {label: run["nfe"] for label, run in runs.items()} == nfe
  for run in runs.values():
    assert run["samples"] == 4 and set(run["pass_at"]) == {"1", "2", "4", "3"}
    values = [run["pass_at"][k][0] for k in ("1", "2", "3", "4")]
    assert all(0 <= v <= 1 for v in values) and values == sorted(values)
    assert all(run["pass_at"][k][1] >= 0 for k in run["pass_at"])  # the SEs
  assert (tmp_path / "table.md").read_text() in out
  assert (tmp_path / "tradeoff.png").stat().st_size > 10_000
  assert len((tmp_path / "verdicts.md").read_text().splitlines()) == len(verdicts)


def test_the_eta_counts_imh_rows_at_their_cost():
  """IMH's rows cost about K times a baseline's: an ETA that counted rows alone said 25 s at 124 s
  elapsed of a run that took 201 s."""
  model = countdown_demo.load_builtin()
  samplers = {**countdown_demo.baseline_samplers(model), **countdown_demo.imh_samplers(model, 2.0, 8)}
  costs = [draws.forward_passes_per_row(s) for s in samplers.values()]
  gen = countdown_demo.countdown_data.gen_length(model.task)
  assert costs == [gen] * 5 + [1 + 8 * gen]  # the NFE the demo measures (test above)
  now = [0.0]
  progress = draws.Progress(clock=lambda: now[0])
  for cost in costs:
    progress.add(100, cost)
  for label, cost in list(zip(samplers, costs))[:5]:  # time in proportion to forward passes
    now[0] += cost
    progress.update(100, label, cost)
  assert progress.eta() == pytest.approx(costs[-1])  # what the IMH rows will take
