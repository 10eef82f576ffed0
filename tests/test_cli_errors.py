"""Every command-line tool answers a user's mistake, a damaged file or a full disk with one line
naming the file and the fix, never a traceback (all cases in one process: tests/cli_driver.py)."""

import json
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT
from tests.experiment_fixtures import write_tiny_checkpoint


def _cases(tmp_path, shared_data):
  ckpt = write_tiny_checkpoint(tmp_path / "ckpt", shared_data)
  damaged = {}
  for name, victim, content in [("config_not_json", "config.json", "{rope_theta: 1"),
                                ("checksums_not_json", "checksums.json", "\x00\x01"),
                                ("no_checksums", "checksums.json", None),
                                ("bad_tokenizer", "tokenizer/tokenizer.json", '{"model": ')]:
    damaged[name] = shutil.copytree(ckpt, tmp_path / name)
    if content is None:
      (damaged[name] / victim).unlink()
    else:
      (damaged[name] / victim).write_text(content)
  binary = tmp_path / "math500.jsonl"
  binary.write_bytes(bytes(range(256)) * 4)
  a_file = tmp_path / "a_file"
  a_file.write_text("not a directory")
  train_data = tmp_path / "train.jsonl"
  train_data.write_text(json.dumps({"question": "1 + 1?", "answer": "#### 2"}) + "\n")
  run = ["--benchmark=math500", f"--data_path={shared_data}", "--limit=1", "--gen_length=8",
         "--progress=false"]
  full = tmp_path / "full"
  train = [f"--checkpoint={ckpt}", f"--data_path={train_data}", "--gen_length=8",
           "--num_steps=1", f"--output_dir={tmp_path / 'policy'}"]
  hf = tmp_path / "hf"
  from tests import hf_fixtures as fx  # pylint: disable=import-outside-toplevel
  fx.write_checkpoint(hf, fx.llada_hf_config(), fx.random_tensors(fx.llada_hf_config()))
  (tmp_path / "exported").mkdir()
  # (name, module, argv, expected text in the one line, extra case settings)
  return [
      ("output_dir_a_file", "experiments.run",
       [f"--checkpoint={ckpt}", *run, f"--output_dir={a_file}"], "is a file; name a directory"),
      ("binary_data", "experiments.run",
       [f"--checkpoint={ckpt}", *run, f"--data_path={binary}", f"--output_dir={tmp_path / 'o1'}"],
       f"{binary}: not a UTF-8 text file"),
      ("config_not_json", "experiments.run",
       [f"--checkpoint={damaged['config_not_json']}", *run, f"--output_dir={tmp_path / 'o2'}"],
       "config.json is not a model config"),
      ("checksums_not_json", "experiments.run",
       [f"--checkpoint={damaged['checksums_not_json']}", *run,
        f"--output_dir={tmp_path / 'o3'}"], "checksums.json is not valid JSON"),
      ("no_checksums", "experiments.run",
       [f"--checkpoint={damaged['no_checksums']}", *run, f"--output_dir={tmp_path / 'o4'}"],
       "has no checksums.json, so its files cannot be checked"),
      ("bad_tokenizer_unchecked", "experiments.run",
       [f"--checkpoint={damaged['bad_tokenizer']}", *run, "--noverify_checkpoint",
        f"--output_dir={tmp_path / 'o5'}"], "tokenizer.json is not a readable tokenizer"),
      ("full_disk", "experiments.run",
       [f"--checkpoint={ckpt}", *run, f"--output_dir={full}"],
       f"the disk is full writing {full / 'results.jsonl'}", {"patch": "full_disk_results"}),
      ("empty_record", "experiments.run",
       [f"--checkpoint={ckpt}", *run, f"--output_dir={full}"],
       f"{full / 'results.jsonl'}:1: a record without", {"write": {
           str(full / "results.jsonl"): "{}\n"}}),
      ("report_empty_record", "experiments.report",
       [f"--runs={full}", f"--out={tmp_path / 'report'}"], f"{full / 'results.jsonl'}:1: "),
      ("report_out_a_file", "experiments.report",
       [f"--runs={full}", f"--out={a_file}"], f"--out={a_file} is a file"),
      ("train_output_dir_a_file", "experiments.train_policy",
       [*train[:-1], f"--output_dir={a_file}"], "is a file; name a directory"),
      ("train_no_checkpoint", "experiments.train_policy",
       [f"--checkpoint={tmp_path / 'nothing'}", *train[1:]], "is not a dllm_jax checkpoint"),
      ("train_binary_data", "experiments.train_policy",
       [*train[:1], f"--data_path={binary}", *train[2:]], "not a UTF-8 text file"),
      ("train_group_size", "experiments.train_policy", [*train, "--group_size=1"],
       "group_size must be >= 2"),
      ("train_bad_mesh", "experiments.train_policy", [*train, "--mesh=rows=2"], "bad mesh"),
      ("train_no_checksums", "experiments.train_policy",
       [f"--checkpoint={damaged['no_checksums']}", *train[1:]], "has no checksums.json"),
      ("convert_out_dir_not_writable", "checkpoints_convert.convert_hf",
       [f"--hf_dir={hf}", f"--out_dir={a_file / 'jax'}"],
       f"{a_file / 'jax'}: cannot create its folder"),
      ("convert_full_disk", "checkpoints_convert.convert_hf",
       [f"--hf_dir={hf}", f"--out_dir={tmp_path / 'jax'}"],
       f"the disk is full writing {tmp_path / 'jax'}", {"patch": "full_disk_orbax"}),
      ("export_onto_a_folder", "checkpoints_convert.export_hf",
       [f"--ckpt_dir={ckpt}", f"--out_dir={tmp_path / 'exported'}"],
       f"{tmp_path / 'exported'} already exists (pass --overwrite"),
      ("export_no_checksums", "checkpoints_convert.export_hf",
       [f"--ckpt_dir={damaged['no_checksums']}", f"--out_dir={tmp_path / 'e2'}"],
       "--noverify_checkpoint"),
      # Not an error: the export is quiet (no Orbax log) and carries the tokenizer files.
      ("export_quiet", "checkpoints_convert.export_hf",
       [f"--ckpt_dir={ckpt}", f"--out_dir={tmp_path / 'e3'}"], None),
      # The benchmark at its smallest: no Countdown section (opt-in), no Orbax log.
      ("bench_smallest", "experiments.bench_sampling",
       ["--grid=", "--cache_grid=", "--peak_n=64", f"--out_json={tmp_path / 'bench.json'}"],
       None),
  ]


@pytest.mark.slow
def test_every_user_error_is_one_line(tmp_path, shared_data):
  cases = _cases(tmp_path, shared_data)
  spec = [{"module": module, "argv": argv, **(extra[0] if extra else {})}
          for _, module, argv, _, *extra in cases]
  (tmp_path / "cases.json").write_text(json.dumps(spec))
  result = subprocess.run([sys.executable, "-m", "tests.cli_driver", str(tmp_path / "cases.json")],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  outcomes = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
  assert len(outcomes) == len(cases), result.stdout[-3000:]
  for (name, _, _, expected, *_), outcome in zip(cases, outcomes):
    assert "traceback" not in outcome, (name, outcome["traceback"][-2000:])
    if expected is None:
      assert outcome["exit"] == 0 and outcome["stderr"] == "", (name, outcome)
      assert "Countdown" not in outcome["stdout"], (name, outcome["stdout"])
      continue
    message = outcome["exit"]
    assert isinstance(message, str) and message.startswith("error: "), (name, outcome)
    assert "\n" not in message.strip() and expected in message, (name, message)
    assert "Traceback" not in outcome["stderr"], (name, outcome["stderr"][-2000:])
    assert not (tmp_path / "jax").exists() and not (tmp_path / "e2").exists()
  for name in ("tokenizer.json", "tokenizer_config.json"):
    assert (tmp_path / "e3" / name).read_bytes() == (tmp_path / "ckpt" / "tokenizer" /
                                                     name).read_bytes()


@pytest.mark.slow
def test_run_py_says_what_it_does_before_importing_jax():
  """Importing JAX and dllm_jax takes seconds: experiments/run.py prints its phase first."""
  code = "import sys, experiments.run; print(sorted({'jax', 'dllm_jax'} & set(sys.modules)))"
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120, check=True)
  assert result.stdout.strip() == "[]", result.stdout
  source = (REPO_ROOT / "experiments" / "run.py").read_text()
  main = source[source.index("def main("):]
  assert main.index('print("importing JAX and dllm_jax ..."') < main.index("import jax")
