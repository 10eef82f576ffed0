"""Grading of generated code on HumanEval and MBPP: build the test program, run it in the sandbox.

Problems are the records of the benchmark files, with their original field names:

* HumanEval: `prompt, canonical_solution, test, entry_point`. The program is
  `prompt + completion + test + check(entry_point)`, so a completion is the continuation of the
  prompt (a function body) or, equally, a whole definition that replaces the prompt's.
* MBPP (full, 974 tasks): `code, test_setup_code, test_list`. The program is the solution, then
  `test_setup_code` (it must come after: tasks 367 and 927 build objects of a class the solution
  defines), then the asserts of `test_list`.
* MBPP sanitized (427 tasks): `code, test_imports, test_list`. The program is `test_imports`, the
  solution, then the asserts.

A model *response* may wrap its code in Markdown fences; `extract_code` applies this rule:
1. Fenced blocks are the text between a line starting with three backticks and the next line
   starting with three backticks (or the end of the response: generations get cut off).
2. Blocks tagged `python`, `py` or `python3` are the candidates; if no block is tagged so, all
   fenced blocks are candidates.
3. The first candidate that defines the entry point (`def name(`) is the code; failing that, the
   first candidate. A response without any fence is taken whole, as code.
"""

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any

from dllm_jax.eval import sandbox

HUMANEVAL = "humaneval"
MBPP = "mbpp"
MBPP_SANITIZED = "mbpp_sanitized"
BENCHMARKS = (HUMANEVAL, MBPP, MBPP_SANITIZED)

# Lines that start a new top-level statement after a HumanEval function body (the stop sequences
# of the HumanEval paper); see `truncate_at_stop`.
HUMANEVAL_STOP_SEQUENCES = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")

_FENCE = re.compile(r"^[ \t]*```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:^[ \t]*```|\Z)", re.M | re.S)
_PYTHON_TAGS = ("python", "py", "python3")

Problem = Mapping[str, Any]


def detect_benchmark(problem: Problem) -> str:
  """Which benchmark a record comes from, by its fields."""
  if "entry_point" in problem and "test" in problem:
    return HUMANEVAL
  if "test_imports" in problem:
    return MBPP_SANITIZED
  if "test_list" in problem:
    return MBPP
  raise ValueError(f"not a HumanEval or MBPP record (fields: {sorted(problem)})")


def mbpp_entry_point(problem: Problem) -> str | None:
  """The function the MBPP tests call: the first function defined by the reference solution whose
  name appears in a test (None when there is none)."""
  tests = "\n".join(problem["test_list"])
  for name in re.findall(r"^def\s+([A-Za-z_]\w*)\s*\(", problem.get("code", ""), re.M):
    if re.search(rf"\b{re.escape(name)}\s*\(", tests):
      return name
  return None


def entry_point(problem: Problem, benchmark: str | None = None) -> str | None:
  """The name of the function under test."""
  if (benchmark or detect_benchmark(problem)) == HUMANEVAL:
    return problem["entry_point"]
  return mbpp_entry_point(problem)


def extract_code(response: str, entry_point_name: str | None = None) -> str:
  """The code in a model response, by the rule in the module docstring."""
  blocks = [(tag.lower(), body) for tag, body in _FENCE.findall(response)]
  if not blocks:
    return response
  candidates = [body for tag, body in blocks if tag in _PYTHON_TAGS] or [body for _, body in blocks]
  if entry_point_name:
    definition = re.compile(rf"^\s*(async\s+)?def\s+{re.escape(entry_point_name)}\s*\(", re.M)
    for body in candidates:
      if definition.search(body):
        return body
  return candidates[0]


def truncate_at_stop(completion: str,
                     stop_sequences: Sequence[str] = HUMANEVAL_STOP_SEQUENCES) -> str:
  """The completion up to the first stop sequence (for base-model continuations of a prompt)."""
  cut = min((i for i in (completion.find(s) for s in stop_sequences) if i >= 0), default=None)
  return completion if cut is None else completion[:cut]


def _join(*parts: str) -> str:
  return "\n".join(part.rstrip("\n") for part in parts if part) + "\n"


def humaneval_program(problem: Problem, completion: str) -> str:
  """prompt + completion, then the tests and the call of `check` on the entry point."""
  return _join(problem["prompt"] + completion, problem["test"], f"check({problem['entry_point']})")


def mbpp_program(problem: Problem, code: str) -> str:
  """The solution, then `test_setup_code` (after: it may use the solution's classes), then the
  asserts."""
  return _join(code, problem.get("test_setup_code", ""), *problem["test_list"])


def mbpp_sanitized_program(problem: Problem, code: str) -> str:
  """`test_imports`, then the solution, then the asserts."""
  return _join(*problem["test_imports"], code, *problem["test_list"])


def build_program(problem: Problem, code: str, benchmark: str | None = None) -> str:
  """The program whose run decides whether `code` solves `problem`."""
  benchmark = benchmark or detect_benchmark(problem)
  if benchmark == HUMANEVAL:
    return humaneval_program(problem, code)
  if benchmark == MBPP:
    return mbpp_program(problem, code)
  if benchmark == MBPP_SANITIZED:
    return mbpp_sanitized_program(problem, code)
  raise ValueError(f"unknown benchmark {benchmark!r}; expected one of {BENCHMARKS}")


def reference_solution(problem: Problem, benchmark: str | None = None) -> str:
  """The benchmark's own solution, in the form `build_program` takes."""
  benchmark = benchmark or detect_benchmark(problem)
  return problem["canonical_solution"] if benchmark == HUMANEVAL else problem["code"]


def completion_to_code(problem: Problem, completion: str, benchmark: str | None = None,
                       extract: bool = True) -> str:
  """The code to test for a model output: fenced code if `extract` finds any, else the output."""
  if not extract:
    return completion
  return extract_code(completion, entry_point(problem, benchmark))


@dataclasses.dataclass(frozen=True)
class CodeGrade:
  """The verdict on one completion, with the sandbox's report."""
  passed: bool
  status: sandbox.Status
  message: str
  program: str


def grade_completions(problems: Sequence[Problem], completions: Sequence[str],
                      benchmark: str | None = None, extract: bool = True,
                      workers: int | None = None,
                      config: sandbox.SandboxConfig = sandbox.SandboxConfig()) -> list[CodeGrade]:
  """Grades completions[i] against problems[i] (repeat a problem for several samples), in
  parallel; returns one `CodeGrade` per completion, in order."""
  if len(problems) != len(completions):
    raise ValueError(f"{len(problems)} problems but {len(completions)} completions")
  programs = [build_program(problem, completion_to_code(problem, completion, benchmark, extract),
                            benchmark)
              for problem, completion in zip(problems, completions)]
  results = sandbox.run_many(programs, workers=workers, config=config)
  return [CodeGrade(result.passed, result.status, result.message, program)
          for result, program in zip(results, programs)]


def grade_completion(problem: Problem, completion: str, benchmark: str | None = None,
                     extract: bool = True,
                     config: sandbox.SandboxConfig = sandbox.SandboxConfig()) -> CodeGrade:
  """Grades one completion (see `grade_completions`)."""
  return grade_completions([problem], [completion], benchmark, extract, workers=1, config=config)[0]
