"""Multi-host: two processes on localhost (4 CPU devices each, gloo collectives) decode one global
sharded run; what they write together equals the single-process result."""

import os
import socket
import subprocess
import sys

from dllm_jax.eval import runner
from tests.conftest import REPO_ROOT
from tests.experiment_fixtures import write_tiny_checkpoint


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _env(devices: int) -> dict:
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["JAX_PLATFORMS"] = "cpu"
  return env


def test_two_processes_write_exactly_the_single_process_samples(tmp_path, shared_data):
  ckpt = write_tiny_checkpoint(tmp_path / "ckpt", shared_data)
  flags = [f"--checkpoint={ckpt}", "--benchmark=math500", f"--data_path={shared_data}",
           "--limit=5", "--remasking=random", "--temperature=1.0", "--gen_length=16",
           "--block_length=8", "--n_samples=3", "--batch_size=8", "--mesh=data=4,model=2"]
  command = [sys.executable, "-m", "experiments.run", *flags]
  port = _free_port()
  children = [subprocess.Popen(
      command + [f"--output_dir={tmp_path / 'multi'}", f"--coordinator_address=127.0.0.1:{port}",
                 "--num_processes=2", f"--process_id={i}"],
      cwd=REPO_ROOT, env=_env(4), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  try:
    logs = [child.communicate(timeout=600) for child in children]
  finally:
    for child in children:
      child.kill()
  for child, (_, err) in zip(children, logs):
    assert child.returncode == 0, err[-3000:]
  single = subprocess.run(command + [f"--output_dir={tmp_path / 'single'}"], cwd=REPO_ROOT,
                          env=_env(8), capture_output=True, text=True, timeout=600, check=False)
  assert single.returncode == 0, single.stderr[-3000:]

  files = sorted(p.name for p in runner.results_files(tmp_path / "multi"))
  assert files == ["results.process-00000-of-00002.jsonl", "results.process-00001-of-00002.jsonl"]
  multi = runner.read_results(tmp_path / "multi")
  alone = runner.read_results(tmp_path / "single")
  units = [(r["problem_id"], r["sample"]) for r in multi]
  assert len(units) == len(set(units)) == 15, "a sample was duplicated or lost"
  for name in files:  # both processes wrote a share
    assert (tmp_path / "multi" / name).read_text().count("\n") > 0
  want = {(r["problem_id"], r["sample"]): r["tokens"] for r in alone}
  assert {(r["problem_id"], r["sample"]): r["tokens"] for r in multi} == want
