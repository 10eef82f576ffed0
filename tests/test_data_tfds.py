"""The TFDS route (array_record, no TensorFlow) gives exactly the JSONL route's records."""

import json
import pathlib
import shutil
import subprocess
import sys
import time

import pytest
import tensorflow_datasets as tfds

from dllm_jax.data import jsonl, tfds_builders
from dllm_jax.data.problems import BENCHMARKS

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("tfds")


def test_tensorflow_is_not_needed(shared_data, tmp_path):
  """Prepare and read in a fresh process that never imports TensorFlow (even if installed)."""
  program = (
      "import sys\n"
      "from dllm_jax.data import tfds_builders\n"
      "problems = tfds_builders.build_and_load('aime25', sys.argv[1], sys.argv[2])\n"
      "assert len(problems) == 30\n"
      "print('tensorflow' in sys.modules)\n")
  result = subprocess.run([sys.executable, "-c", program, str(shared_data), str(tmp_path)],
                          capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip().splitlines()[-1] == "False"


@pytest.mark.parametrize("name", BENCHMARKS)
def test_tfds_records_equal_jsonl_records(shared_data, data_dir, name):
  start = time.perf_counter()
  from_tfds = tfds_builders.build_and_load(name, shared_data, data_dir)
  elapsed = time.perf_counter() - start
  from_jsonl = jsonl.load_benchmark(name, shared_data)
  assert len(from_tfds) == len(from_jsonl)
  assert from_tfds == from_jsonl  # same records, same (file) order
  assert elapsed < 30, f"preparing {name} took {elapsed:.1f}s"


def test_prepared_data_reads_through_tfds_data_source(shared_data, data_dir):
  tfds_builders.build_and_load("humaneval", shared_data, data_dir)
  source = tfds.data_source("dllm_benchmark/humaneval", split="test", data_dir=str(data_dir))
  assert len(source) == 164
  row = source[0]
  assert row["id"] == b"humaneval/HumanEval/0" and row["entry_point"] == b"has_close_elements"
  assert row["answer"] == b""  # None is stored as ""
  assert json.loads(row["metadata_json"]) == {"task_id": "HumanEval/0"}
  assert tfds_builders.load_prepared("humaneval", data_dir)[0].answer is None


def test_manual_dir_route(shared_data, tmp_path):
  builder = tfds_builders.DllmBenchmark(config="aime25", data_dir=str(tmp_path),
                                        file_format="array_record")
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(shared_data)))
  rows = builder.as_data_source()["test"]
  problems = [tfds_builders.problem_from_example(rows[i]) for i in range(len(rows))]
  assert problems == jsonl.load_benchmark("aime25", shared_data)


def test_changed_source_is_rebuilt(shared_data, tmp_path):
  source = tmp_path / "aime24.jsonl"
  shutil.copy(shared_data / "aime24.jsonl", source)
  data_dir = tmp_path / "tfds"
  assert tfds_builders.build_and_load("aime24", source, data_dir)[0].answer == "204"
  source.write_text(source.read_text().replace('"answer":"204"', '"answer":"205"', 1))
  assert tfds_builders.build_and_load("aime24", source, data_dir)[0].answer == "205"


def test_round_trip_of_one_example(shared_data):
  problem = jsonl.load_benchmark("mbpp", shared_data, limit=11)[-1]
  example = tfds_builders.problem_to_example(problem)
  assert example["test_setup"] == "" and example["test_list"] == list(problem.test_list)
  assert tfds_builders.problem_from_example(example) == problem


def test_errors(shared_data, tmp_path):
  with pytest.raises(ValueError, match="unknown benchmark"):
    tfds_builders.build_and_load("gsm8k", shared_data, tmp_path)
  with pytest.raises(FileNotFoundError, match=r"math500\.jsonl"):
    tfds_builders.build_and_load("math500", tmp_path, tmp_path / "tfds")
