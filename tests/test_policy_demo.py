"""The policy experiment at reduced size, through its command line: it trains per layout and
alpha, resumes, exports the weights, and reports every decoder; the shipped policies load."""

import json
import subprocess
import sys

import numpy as np
import pytest

from dllm_jax import policy_training, sampling
from dllm_jax.tasks import builtin, policy_demo
from tests.conftest import REPO_ROOT


def _run(*flags):
  command = [sys.executable, "-m", "experiments.policy_demo", *flags]
  return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900,
                        check=False)


def test_trains_resumes_exports_and_reports_both_layouts(tmp_path):
  flags = ["--train", "--alphas=1", "--num_steps=2", "--imitation_steps=1",
           "--train_problems=8", "--heldout_problems=8", "--thresholds=0.9",
           "--step_counts=1,4,32", "--batch_rows=8", f"--out={tmp_path}"]
  first = _run(*flags)
  assert first.returncode == 0, first.stderr[-3000:]
  rows = json.loads((tmp_path / "results.json").read_text())["rows"]
  labels = {(r["layout"], r["decoding"]) for r in rows}
  for layout in ("semi_ar", "full"):
    assert {(layout, "learned policy, alpha 1"), (layout, "threshold 0.9"),
            (layout, "low-confidence 32 steps"), (layout, "random 32 steps")} <= labels
    assert len((tmp_path / "policies" / f"{layout}_alpha1" / "metrics.jsonl")
               .read_text().splitlines()) == 2
  assert (("full", "low-confidence 1 steps") in labels
          and ("semi_ar", "low-confidence 1 steps") not in labels  # fewer steps than blocks
          and ("semi_ar", "low-confidence 4 steps") in labels)  # 32 / 8 = 4 = one per block
  for r in rows:
    assert 0 <= r["accuracy"] <= 1 and 1 <= r["nfe"] <= 32, r
    if "steps" in r["decoding"]:
      assert r["nfe"] == int(r["decoding"].split()[-2])
    assert (f"| {r['layout']} | {r['decoding']} | {r['accuracy']:.3f} +- {r['stderr']:.3f} | "
            f"{r['nfe']:.2f} |") in first.stdout
    if r["kind"] == "learned":  # compared with the heuristics' hull at its NFE, in SEs
      assert {"hull", "hull_margin_se", "threshold_hull", "threshold_hull_margin_se"} <= set(r)
  verdict_lines = [line for line in first.stdout.splitlines() if line.startswith("[")]
  assert len(verdict_lines) == 2 and all("accuracy-NFE hull" in v for v in verdict_lines)
  assert "evaluating" in first.stderr  # the progress bar
  metadata = sampling.read_policy_metadata(tmp_path / "policies" / "semi_ar_alpha1.safetensors")
  assert (metadata["gen_length"], metadata["block_length"], metadata["temperature"]) == (32, 8, 1)
  assert metadata["grpo"]["num_steps"] == 2 and metadata["grpo"]["imitation_steps"] == 1
  seconds = metadata["train_seconds"]  # the run's logged steps (1 imitation + 2 GRPO)
  assert seconds == pytest.approx(policy_training.train_seconds(
      tmp_path / "policies" / "semi_ar_alpha1")) and seconds > 0
  assert sampling.read_policy_metadata(
      tmp_path / "policies" / "full_alpha1.safetensors")["block_length"] == 32
  assert (tmp_path / "pareto.png").stat().st_size > 10_000
  exported = sampling.load_policy_params(tmp_path / "policies" / "full_alpha1.safetensors")
  # Rerunning resumes (no new GRPO step: the 2 are done) and gives the same table.
  second = _run(*flags)
  assert second.returncode == 0, second.stderr[-3000:]
  assert len((tmp_path / "policies" / "full_alpha1" / "metrics.jsonl")
             .read_text().splitlines()) == 2
  again = sampling.load_policy_params(tmp_path / "policies" / "full_alpha1.safetensors")
  assert all(np.array_equal(exported[m][k], again[m][k]) for m in exported for k in exported[m])
  # The re-export records the run's training time, not the resumed call's (no step).
  assert sampling.read_policy_metadata(
      tmp_path / "policies" / "semi_ar_alpha1.safetensors")["train_seconds"] == seconds
  assert json.loads((tmp_path / "results.json").read_text())["rows"] == rows


def test_shipped_policies_load_and_the_shipped_model_is_small():
  for layout in policy_demo.LAYOUTS:
    for alpha in policy_demo.ALPHAS:
      params = sampling.load_policy_params(
          policy_demo.policy_file(policy_demo.SHIPPED_POLICIES, layout, alpha))
      assert sampling.policy.param_count(params) == 330_753
      init = sampling.init_policy()  # trained: the zero-initialised modulation has moved
      assert not np.array_equal(params["modulation"]["kernel"], init["modulation"]["kernel"])
      # Every setting it was trained with is in the file: a GRPOConfig rebuilds from it (fields
      # added since take their defaults, which are what those runs used).
      metadata = sampling.read_policy_metadata(
          policy_demo.policy_file(policy_demo.SHIPPED_POLICIES, layout, alpha))
      assert (metadata["gen_length"], metadata["block_length"]) == (
          32, 8 if layout == "semi_ar" else 32)
      assert metadata["temperature"] == 1.0 and metadata["alpha"] == alpha
      recorded = metadata["grpo"]
      assert {"learning_rate", "num_steps", "seed", "warmup_steps", "alpha",
              "imitation_steps"} <= set(recorded)
      assert policy_training.GRPOConfig(**recorded).alpha == alpha
  model = builtin.load_builtin(builtin.LAGGED_DIFFERENCE)
  assert model.gen_length == 32 and model.config.max_length == 40
  size = sum(p.stat().st_size for p in builtin.LAGGED_DIFFERENCE.rglob("*") if p.is_file())
  assert size < 5 * 2**20


def test_verdicts_compare_each_policy_with_its_layouts_heuristics():
  rng = np.random.default_rng(0)
  row = lambda layout, decoding, kind, chance, nfe: {
      "layout": layout, "decoding": decoding, "kind": kind,
      "correct_P": rng.random(300) < chance, "nfe_P": np.full(300, float(nfe))}
  rows = [row("semi_ar", "learned policy, alpha 1", "learned", 0.95, 6),
          row("semi_ar", "threshold 0.9", "threshold", 0.5, 6),
          row("full", "learned policy, alpha 1", "learned", 0.5, 6),
          row("full", "threshold 0.9", "threshold", 0.95, 6)]
  semi, full = policy_demo.verdicts(rows)
  assert semi.claim.startswith("semi_ar: learned") and semi.holds and semi.estimate > 0.3
  assert full.claim.startswith("full: learned") and not full.holds and full.estimate < -0.3


def test_bad_input_gets_one_line(tmp_path):
  for flags, message in ((["--layouts=diagonal"], "--layouts takes"),
                         (["--alphas=x"], "--alphas and --thresholds take numbers"),
                         ([f"--policy_dir={tmp_path}"], "no policy weights at"),
                         ([f"--model={tmp_path}"], "holds no built-in model")):
    result = _run(*flags, f"--out={tmp_path / 'out'}", "--heldout_problems=2")
    assert result.returncode != 0 and message in result.stderr, (flags, result.stderr[-2000:])
    assert "Traceback" not in result.stderr
  (tmp_path / "broken.safetensors").write_bytes(b"not a safetensors file")
  with pytest.raises(ValueError, match="not a readable safetensors file"):
    sampling.load_policy_params(tmp_path / "broken.safetensors")


def test_hull_and_margins_by_hand():
  # (nfe, accuracy, stderr): (4, 0.6) is below the chord from (2, 0.5) to (6, 0.72) (0.61 at 4),
  # and (10, 0.7) has more NFE for less accuracy: neither is on the hull.
  points = [(4, 0.6, 0.02), (2, 0.5, 0.02), (8, 0.8, 0.01), (10, 0.7, 0.02), (6, 0.72, 0.02)]
  hull = policy_demo.upper_hull(points)
  assert [p[:2] for p in hull] == [(2, 0.5), (6, 0.72), (8, 0.8)]
  acc, se = policy_demo.hull_at(hull, 7)
  assert abs(acc - 0.76) < 1e-12 and abs(se - 0.015) < 1e-12
  assert policy_demo.hull_at(hull, 1)[0] == 0.5 and policy_demo.hull_at(hull, 20)[0] == 0.8
  rows = [{"layout": "x", "kind": k, "nfe": n, "accuracy": a, "stderr": s}
          for k, (n, a, s) in zip(["threshold", "low-confidence", "threshold", "random",
                                   "low-confidence"], points)]
  rows.append({"layout": "x", "kind": "learned", "nfe": 7, "accuracy": 0.86, "stderr": 0.02})
  policy_demo.add_hull_margins(rows)
  assert abs(rows[-1]["hull"] - 0.76) < 1e-12
  assert abs(rows[-1]["hull_margin_se"] - 0.1 / np.hypot(0.02, 0.015)) < 1e-9
  # Threshold alone: (4, 0.6) and (8, 0.8), so 0.75 at NFE 7.
  assert abs(rows[-1]["threshold_hull"] - 0.75) < 1e-12
