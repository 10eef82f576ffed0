"""The Countdown policy experiment at reduced size: it trains, resumes, and reports every row."""

import json
import subprocess
import sys

from tests.conftest import REPO_ROOT


def test_countdown_policy_at_reduced_size(tmp_path):
  command = [sys.executable, "-m", "experiments.countdown_policy", "--num_steps=2",
             "--train_problems=16", "--heldout_problems=8", f"--out={tmp_path}"]
  result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
                          check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  rows = json.loads((tmp_path / "results.json").read_text())["rows"]
  assert {f"low-confidence {k} steps" for k in (7, 4, 2, 1)} <= set(rows)
  for k in (7, 4, 2, 1):
    assert rows[f"low-confidence {k} steps"]["nfe"] == k
  for label, row in rows.items():
    assert 0 <= row["accuracy"] <= 1 and 1 <= row["nfe"] <= 7, label
    assert f"| {label} | {row['accuracy']:.3f} | {row['nfe']:.2f} |" in result.stdout
  assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2
