"""TensorFlow Datasets builder for the benchmarks, readable without TensorFlow.

One builder, `DllmBenchmark` (registered as "dllm_benchmark"), with one config per benchmark
("dllm_benchmark/math500", ...). It reads a local copy of the benchmark file with the loaders of
`dllm_jax.data.jsonl` and stores the normalised `Problem` schema in one "test" split written as
array_record, so the prepared data is read back with `tfds.data_source` / `as_data_source()`
(random access, no TensorFlow; `as_dataset` would need TensorFlow). Row order is the file order.

Where the source comes from, in order: the `source_path` builder argument (a file or a directory),
else the manual directory (`DownloadConfig(manual_dir=...)`, holding e.g. `math500.jsonl`).

    problems = build_and_load("math500", "/my/data/math500.jsonl", "/tmp/tfds")
    # later, or in another process (after `import dllm_jax.data.tfds_builders`):
    source = tfds.data_source("dllm_benchmark/math500", data_dir="/tmp/tfds")["test"]

Optional text fields are stored as "" for None (a `Problem` never holds ""), `metadata` as JSON.
The source file's sha256 is stored in the dataset metadata; `build_and_load` rebuilds the dataset
when the file changed since it was prepared.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
from typing import Any, Iterator, Mapping

import numpy as np
import tensorflow_datasets as tfds

from dllm_jax.data import jsonl
from dllm_jax.data.problems import BENCHMARKS, Problem

PathLike = str | os.PathLike
SPLIT = "test"

_TEXT_FIELDS = ("id", "benchmark", "question", "answer", "tests", "test_setup", "entry_point",
                "code_prompt", "reference_solution")
_OPTIONAL_TEXT_FIELDS = ("answer", "tests", "test_setup", "entry_point", "code_prompt",
                         "reference_solution")
_LIST_FIELDS = ("test_list", "test_imports")


def _file_sha256(path: pathlib.Path) -> str:
  return hashlib.sha256(path.read_bytes()).hexdigest()


class DllmBenchmark(tfds.core.GeneratorBasedBuilder):
  """The dllm_jax benchmarks (MATH500, AIME 2024/2025, HumanEval, MBPP, MBPP sanitized)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Normalised Problem schema."}
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(name=name, description=f"{name} in the dllm_jax Problem schema")
      for name in BENCHMARKS
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Place your copy of the benchmark file in the manual directory under its expected name "
      f"({', '.join(names[0] for names in jsonl.FILENAMES.values())}), or pass source_path=.")
  # No URL checksums file: the data is local. Also keeps TFDS 4.9.x from importing the
  # `importlib_resources` backport (not installed on Python >= 3.9) to locate one.
  code_path = None

  def __init__(self, *, source_path: PathLike | None = None, **kwargs: Any):
    self._source_path = None if source_path is None else pathlib.Path(source_path)
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    text = tfds.features.Text()
    features = {name: text for name in _TEXT_FIELDS}
    features.update({name: tfds.features.Sequence(text) for name in _LIST_FIELDS})
    features["metadata_json"] = text
    return tfds.core.DatasetInfo(
        builder=self,
        description=jsonl.__doc__,
        features=tfds.features.FeaturesDict(features),
        metadata=tfds.core.MetadataDict(),
        disable_shuffling=True)  # keep the file order

  def _source_file(self, dl_manager: tfds.download.DownloadManager) -> pathlib.Path:
    name = self.builder_config.name
    if self._source_path is not None:
      return jsonl.resolve_source(name, self._source_path)
    return jsonl.resolve_source(name, pathlib.Path(dl_manager.manual_dir))

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    source = self._source_file(dl_manager)
    problems = jsonl.load_file(self.builder_config.name, source)
    self.info.metadata["source_file"] = str(source)
    self.info.metadata["source_sha256"] = _file_sha256(source)
    return {SPLIT: self._generate_examples(problems)}

  def _generate_examples(self, problems: list[Problem]) -> Iterator[tuple[int, dict[str, Any]]]:
    for index, problem in enumerate(problems):
      yield index, problem_to_example(problem)


def problem_to_example(problem: Problem) -> dict[str, Any]:
  """A `Problem` as a feature dict of `DllmBenchmark` (None -> "", metadata -> JSON)."""
  example: dict[str, Any] = {name: getattr(problem, name) or "" for name in _TEXT_FIELDS}
  example.update({name: list(getattr(problem, name)) for name in _LIST_FIELDS})
  example["metadata_json"] = json.dumps(problem.metadata, sort_keys=True)
  return example


def _as_text(value: Any) -> str:
  if isinstance(value, np.ndarray):
    value = value.item()
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def problem_from_example(example: Mapping[str, Any]) -> Problem:
  """Inverse of `problem_to_example`, for rows read with `tfds.data_source` (bytes) or as str."""
  fields: dict[str, Any] = {name: _as_text(example[name]) for name in _TEXT_FIELDS}
  for name in _OPTIONAL_TEXT_FIELDS:
    fields[name] = fields[name] or None
  for name in _LIST_FIELDS:
    fields[name] = tuple(_as_text(item) for item in example[name])
  fields["metadata"] = json.loads(_as_text(example["metadata_json"]))
  return Problem(**fields)


def load_prepared(name: str, data_dir: PathLike) -> list[Problem]:
  """The problems of an already prepared "dllm_benchmark/<name>" under `data_dir`, in file order."""
  source = tfds.data_source(f"dllm_benchmark/{name}", split=SPLIT, data_dir=os.fspath(data_dir),
                            download=False)
  return [problem_from_example(source[index]) for index in range(len(source))]


def build_and_load(name: str, source_path: PathLike, data_dir: PathLike) -> list[Problem]:
  """Prepares "dllm_benchmark/<name>" from `source_path` under `data_dir` and reads it back.

  Args:
    name: one of `BENCHMARKS`.
    source_path: the benchmark file, or a directory holding it (see `jsonl.FILENAMES`).
    data_dir: the TFDS data directory; a dataset prepared there from a file with other contents
      is rebuilt.
  """
  if name not in BENCHMARKS:
    raise ValueError(f"unknown benchmark {name!r}; expected one of {BENCHMARKS}")
  source = jsonl.resolve_source(name, source_path)
  builder = DllmBenchmark(config=name, data_dir=os.fspath(data_dir), source_path=source,
                          file_format="array_record")
  mode = tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
  if builder.is_prepared() and builder.info.metadata.get("source_sha256") != _file_sha256(source):
    mode = tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS  # regenerate the dataset
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(download_mode=mode))
  return load_prepared(name, data_dir)
