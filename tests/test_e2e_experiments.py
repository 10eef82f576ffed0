"""End to end: a tiny model on two problems of every benchmark through experiments/run.py (run,
resume) and experiments/report.py."""

import json
import signal
import subprocess
import sys
import threading
import time

import pytest

from dllm_jax.eval import report, runner
from tests.conftest import REPO_ROOT
from tests.experiment_fixtures import write_tiny_checkpoint

BENCHMARKS = ["math500", "aime24", "aime25", "humaneval", "mbpp", "mbpp_sanitized"]
CACHES = {"aime24": "prefix", "aime25": "dual"}  # --cache for some runs (default none)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, shared_data):
  return write_tiny_checkpoint(tmp_path_factory.mktemp("model") / "ckpt", shared_data)


def _run_script(module, *flags):
  result = subprocess.run([sys.executable, "-m", module, *flags], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


def test_every_benchmark_runs_resumes_and_reports(ckpt, shared_data, tmp_path):
  runs = []
  for benchmark in BENCHMARKS:
    out = tmp_path / f"{benchmark}_random"
    flags = [f"--checkpoint={ckpt}", f"--benchmark={benchmark}", f"--data_path={shared_data}",
             "--limit=2", "--remasking=random", "--temperature=1.0", "--gen_length=16",
             "--block_length=8", "--n_samples=2", "--batch_size=4", "--mesh=data=2,model=4",
             f"--cache={CACHES.get(benchmark, 'none')}", f"--output_dir={out}"]
    _run_script("experiments.run", *flags)
    records = runner.read_results(out)
    assert len(records) == 4 and {r["sample"] for r in records} == {0, 1}
    for record in records:
      assert set(record) == {"problem_id", "sample", "response", "answer", "correct", "detail",
                             "nfe", "seconds", "neg_logprob", "tokens"}
      assert record["problem_id"].startswith(benchmark + "/")
      assert record["nfe"] == 16 and len(record["tokens"]) == 16
      assert record["correct"] is False  # a random model solves nothing
    config = json.loads((out / "config.json").read_text())
    assert config["benchmark"] == benchmark and "Random" in config["sampler"]
    assert ("BlockCache(mode='" + CACHES[benchmark] if benchmark in CACHES
            else "cache=None") in config["sampler"]
    # Resuming a finished run adds nothing.
    _run_script("experiments.run", *flags)
    assert len(runner.read_results(out)) == 4
    runs.append(out)

  result = _run_script("experiments.report", f"--runs={','.join(map(str, runs))}",
                       f"--out={tmp_path / 'report'}")
  text = (tmp_path / "report" / "report.md").read_text()
  assert text in result.stdout
  for benchmark in BENCHMARKS:
    assert f"### {benchmark}" in text
    assert (tmp_path / "report" / f"{benchmark}_pass_at_k.png").stat().st_size > 1000
  summary = report.summarize(runs[0])
  assert summary.problems == 2 and summary.samples == 2 and set(summary.pass_at) == {1, 2}
  assert summary.pass_at[1] == 0.0 and summary.mean_nfe == 16


def test_bad_flags_fail_clearly(ckpt, shared_data, tmp_path):
  base = [sys.executable, "-m", "experiments.run", f"--checkpoint={ckpt}",
          "--benchmark=math500", f"--data_path={shared_data}", "--limit=1",
          f"--output_dir={tmp_path / 'out'}"]
  cases = {
      "--remasking=threshold --steps=8": "leave steps unset",
      "--remasking=random --num_candidates=8": "does not take ['num_candidates']",
      "--remasking=imh --temperature=0.5": "set IMH",
      "--gen_length=10 --block_length=4": "must be divisible by block_length",
      "--n_samples=4": "deterministic: every sample would be the same",
      "--mesh=data=3,model=2": "mesh 3x2 needs 6 devices",
      "--limit=0": "--limit must be >= 1",
      "--batch_size=0": "--batch_size must be >= 1, got 0",
      "--gen_length=16 --steps=32": "--steps=32 > --gen_length=16",
      "--gen_length=4090": "exceeds the model's context of 4096",
      "--data_path=/nonexistent/math500.jsonl": "/nonexistent/math500.jsonl",
  }
  for extra, message in cases.items():
    result = subprocess.run(base + extra.split(), cwd=REPO_ROOT, capture_output=True, text=True,
                            timeout=300, check=False)
    assert result.returncode != 0 and message in result.stderr, (extra, result.stderr[-2000:])
    assert "Traceback" not in result.stderr, (extra, result.stderr[-2000:])
    assert result.stderr.strip().splitlines()[-1].startswith("error: "), result.stderr[-2000:]
  # None of the refused commands claimed the directory: the corrected one runs.
  assert not (tmp_path / "out").exists()
  result = _run_script("experiments.run", *base[3:], "--gen_length=8")
  assert "done: 1 problems x 1 samples" in result.stdout
  assert str(tmp_path / "out" / "results.jsonl") in result.stdout


# Runs experiments.run with Python's KeyboardInterrupt handler installed whatever SIGINT's
# inherited disposition (a shell's background job ignores SIGINT; Python then installs none).
_WITH_SIGINT = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler);"
                " runpy.run_module('experiments.run', run_name='__main__', alter_sys=True)")


def test_ctrl_c_says_how_to_resume(ckpt, shared_data, tmp_path):
  """SIGINT once the first batch is on disk stops the run with a resume hint.

  The child installs Python's SIGINT handler explicitly: a suite started in the background by a
  non-interactive shell (`make test &`) ignores SIGINT, the child inherits the ignore, Python then
  installs no KeyboardInterrupt handler, and the run finished instead (the test failed that way).
  Nothing here depends on timing: the signal goes after the first record is written, with far
  more samples left than the run could decode before it lands, and every wait is bounded."""
  out = tmp_path / "out"
  flags = [f"--checkpoint={ckpt}", "--benchmark=math500", f"--data_path={shared_data}",
           "--limit=4", "--remasking=random", "--temperature=1.0", "--gen_length=32",
           "--n_samples=4096", "--batch_size=8", f"--output_dir={out}"]
  proc = subprocess.Popen([sys.executable, "-c", _WITH_SIGINT, *flags], cwd=REPO_ROOT,
                          stderr=subprocess.PIPE, text=True)
  stderr: list[str] = []
  drain = threading.Thread(target=lambda: stderr.extend(proc.stderr), daemon=True)
  drain.start()
  try:
    deadline = time.monotonic() + 300
    while not (out / "results.jsonl").exists() or not runner.read_results(out):
      assert proc.poll() is None, f"the run ended before its first batch: {''.join(stderr)[-2000:]}"
      assert time.monotonic() < deadline, "no record written within 300 s of the start"
      time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    try:
      code = proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
      pytest.fail("the run did not stop within 120 s of SIGINT (is SIGINT ignored?)")
  finally:
    proc.kill()
  drain.join(timeout=10)
  text = "".join(stderr)
  assert code != 0, text[-2000:]
  assert any(line.startswith("loading ") for line in text.splitlines()), text[:500]
  assert "run the same command to resume" in text and "Traceback" not in text, text[-2000:]
  assert len(runner.read_results(out)) < 4 * 4096  # it did stop early
