"""experiments/train_policy.py end to end on a tiny random checkpoint (sharded over 8 fake
devices), with problems from a user JSONL: it trains, resumes after an interruption, and its
policy loads."""

import json
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from dllm_jax import policy_training as pt
from dllm_jax import sampling as S
from dllm_jax.data import tokenize
from tests.conftest import REPO_ROOT
from tests.experiment_fixtures import write_tiny_checkpoint


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, shared_data):
  return write_tiny_checkpoint(tmp_path_factory.mktemp("model") / "ckpt", shared_data)


def _problems_file(tmp_path):
  path = tmp_path / "train.jsonl"
  rows = [{"question": "What is 2 + 2?", "answer": "Two and two make four. #### 4"},
          {"problem": "What is 3 + 4?", "answer": "7"}]
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return path


def _flags(ckpt, data, out, steps):
  return [f"--checkpoint={ckpt}", f"--data_path={data}", "--gen_length=16", "--block_length=8",
          "--group_size=2", "--prompts_per_step=2", f"--num_steps={steps}",
          "--checkpoint_every=1", "--learning_rate=1e-3", "--warmup_steps=0",
          "--mesh=data=2,model=4", f"--output_dir={out}"]


def test_trains_resumes_after_a_kill_and_loads(ckpt, tmp_path):
  data, out = _problems_file(tmp_path), tmp_path / "policy"
  command = [sys.executable, "-m", "experiments.train_policy", *_flags(ckpt, data, out, 8)]
  killed = subprocess.Popen(command, cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
  metrics = out / "metrics.jsonl"
  deadline = time.time() + 600
  while time.time() < deadline and killed.poll() is None:
    if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
      killed.kill()
      break
    time.sleep(0.2)
  assert killed.wait() == -signal.SIGKILL  # interrupted mid-run
  assert len(metrics.read_text().splitlines()) < 8
  result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
                          check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "GRPO" in result.stderr and "8/8" in result.stderr  # the progress bar
  records = [json.loads(line) for line in metrics.read_text().splitlines()]
  assert [r["step"] for r in records] == list(range(1, 9))
  for r in records:
    assert {"reward", "accuracy", "nfe", "loss", "grad_norm", "clip_fraction"} <= set(r)
    assert 1 <= r["nfe"] <= 16 and r["accuracy"] == 0.0  # a random model solves nothing
  params = pt.load_policy(out, S.LearnedPolicy())
  assert params["head"]["kernel"].shape == (128, 1)
  metadata = S.read_policy_metadata(out / "policy.safetensors")
  assert (metadata["gen_length"], metadata["block_length"], metadata["temperature"]) == (16, 8, 1)
  assert metadata["grpo"]["num_steps"] == 8 and metadata["grpo"]["learning_rate"] == 1e-3
  # A larger --num_steps resumes; another learning rate is refused, naming the field.
  more = [f if not f.startswith("--num_steps") else "--num_steps=9" for f in command]
  result = subprocess.run(more, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
                          check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()] == list(
      range(1, 10))
  other = [f if not f.startswith("--learning_rate") else "--learning_rate=5e-4" for f in more]
  result = subprocess.run(other, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
                          check=False)
  assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
  assert "grpo.learning_rate (0.001 there, 0.0005 now)" in result.stderr.strip().splitlines()[-1]


def test_errors_are_one_line_and_progress_comes_first(tmp_path):
  command = [sys.executable, "-m", "experiments.train_policy", f"--checkpoint={tmp_path}",
             f"--data_path={tmp_path / 'missing.jsonl'}", f"--output_dir={tmp_path / 'out'}"]
  start = time.time()
  process = subprocess.Popen(command, cwd=REPO_ROOT, stderr=subprocess.PIPE, text=True)
  watchdog = threading.Timer(600, process.kill)  # bounds the blocking reads below
  watchdog.start()
  first = process.stderr.readline()
  seconds = time.time() - start
  rest = process.stderr.read()
  watchdog.cancel()
  assert process.wait() != 0
  print(f"first line after {seconds:.1f} s")
  assert first.startswith("train_policy: loading") and seconds < 30
  assert rest.strip().splitlines() == [f"error: no problems file at {tmp_path / 'missing.jsonl'}; "
                                       "pass --data_path=<JSONL of question/answer records>"]


def test_problems_and_grading(ckpt, tmp_path):
  problems = pt.read_problems(_problems_file(tmp_path))
  assert [p.answer for p in problems] == ["4", "7"]
  tokenizer = tokenize.CheckpointTokenizer.from_checkpoint(ckpt / "tokenizer")
  stop = tokenizer.eos_id
  rows = [tokenizer.encode("so \\boxed{4}") + [stop] + tokenizer.encode("\\boxed{5}"),
          tokenizer.encode("so \\boxed{4}") + [stop] + tokenizer.encode("\\boxed{5}"),
          tokenizer.encode("\\boxed{7}")]
  width = max(map(len, rows))
  generated = np.array([r + [stop] * (width - len(r)) for r in rows])
  grade = pt.math_grader(problems, tokenizer.decode, [stop])
  np.testing.assert_array_equal(grade(np.array([0, 1, 1]), generated), [True, False, True])
  (tmp_path / "bad.jsonl").write_text(json.dumps({"question": "q", "answer": "x ####"}) + "\n")
  with pytest.raises(ValueError, match="bad.jsonl:1: the answer after '####' is empty"):
    pt.read_problems(tmp_path / "bad.jsonl")
