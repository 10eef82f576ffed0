"""One normalised record, `Problem`, for every benchmark (MATH500, AIME 2024/2025, HumanEval, MBPP).

The benchmark files name their fields differently (see `dllm_jax.data.jsonl`); loaders map each
row onto this schema so that prompts, graders and experiment scripts never look at raw fields.

Conventions:
- Optional text fields are `None` when the source has no value or an empty string; a `Problem`
  never holds `""` in them, so storage formats that lack a null (TFDS) can use `""` for `None`.
- Sequences are tuples of strings; `metadata` holds benchmark-specific, JSON-serialisable extras
  (MATH500 subject and level, AIME exam and problem number, MBPP challenge tests, ...). It is left
  out of the hash, so a `Problem` stays hashable; treat it as read-only.
- Code problems carry what a grader needs to build one test program: `program_with_tests` puts the
  pieces together in the order each benchmark requires.
"""

from __future__ import annotations

import ast
import dataclasses
import json
from typing import Any, Mapping

MATH_BENCHMARKS = ("math500", "aime24", "aime25")
CODE_BENCHMARKS = ("humaneval", "mbpp", "mbpp_sanitized")
BENCHMARKS = MATH_BENCHMARKS + CODE_BENCHMARKS

_OPTIONAL_TEXT = ("answer", "tests", "test_setup", "entry_point", "code_prompt",
                  "reference_solution")
_TEXT_TUPLES = ("test_list", "test_imports")


@dataclasses.dataclass(frozen=True)
class Problem:
  """A benchmark problem in the schema shared by all benchmarks.

  Attributes:
    id: stable identifier, "<benchmark>/<source id>", e.g. "math500/test/precalculus/807",
      "aime24/60", "aime25/II-5", "humaneval/HumanEval/0", "mbpp/11", "mbpp_sanitized/11".
    benchmark: one of `BENCHMARKS`.
    question: the task text to put in a prompt (the math problem, the MBPP task description; for
      HumanEval the function signature and docstring, the same text as `code_prompt`).
    answer: gold final answer of a math problem, exactly as the source gives it (AIME 2024
      answers are zero-padded, "025"; one AIME 2025 answer is "336^\\circ"); the grader
      normalises. None for code.
    tests: code problems: the test code. HumanEval: the source's `test` text, which defines
      `check(candidate)` (the program must then call `check(<entry_point>)`); MBPP: the asserts of
      `test_list`, one per line.
    test_list: MBPP: the individual asserts (shown in prompts); empty otherwise.
    test_setup: MBPP `test_setup_code`; it must run after the solution code (tasks 367 and 927 build
      `Node` objects defined by the solution).
    test_imports: MBPP sanitized `test_imports`, import lines to run before the solution.
    entry_point: HumanEval: name of the function under test.
    code_prompt: HumanEval: the signature + docstring the model completes.
    reference_solution: math: the worked solution text (MATH500, AIME 2024); code: a complete
      program that passes the tests (HumanEval: `prompt + canonical_solution`; MBPP: `code`).
      None if absent.
    metadata: benchmark-specific JSON-serialisable extras.
  """

  id: str
  benchmark: str
  question: str
  answer: str | None = None
  tests: str | None = None
  test_list: tuple[str, ...] = ()
  test_setup: str | None = None
  test_imports: tuple[str, ...] = ()
  entry_point: str | None = None
  code_prompt: str | None = None
  reference_solution: str | None = None
  metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict, hash=False)

  def __post_init__(self):
    for name in _TEXT_TUPLES:  # accept lists, store tuples
      object.__setattr__(self, name, tuple(getattr(self, name)))
    object.__setattr__(self, "metadata", dict(self.metadata))
    self._validate()

  def _validate(self) -> None:
    def fail(message: str) -> None:
      raise ValueError(f"invalid Problem {self.id!r}: {message}")

    if self.benchmark not in BENCHMARKS:
      fail(f"benchmark {self.benchmark!r} is not one of {BENCHMARKS}")
    if not isinstance(self.id, str) or not self.id.startswith(self.benchmark + "/"):
      fail(f"id must start with {self.benchmark + '/'!r}")
    if not isinstance(self.question, str) or not self.question:
      fail("question must be a non-empty string")
    for name in _OPTIONAL_TEXT:
      value = getattr(self, name)
      if value is not None and (not isinstance(value, str) or not value):
        fail(f"{name} must be None or a non-empty string, got {value!r}")
    for name in _TEXT_TUPLES:
      if not all(isinstance(item, str) for item in getattr(self, name)):
        fail(f"{name} must hold strings only")
    if self.is_math and self.answer is None:
      fail("a math problem needs an answer")
    if self.is_code:
      if self.answer is not None:
        fail("a code problem has no answer")
      if self.tests is None:
        fail("a code problem needs tests")
    if self.benchmark == "humaneval" and (self.entry_point is None or self.code_prompt is None):
      fail("a HumanEval problem needs entry_point and code_prompt")

  @property
  def is_math(self) -> bool:
    return self.benchmark in MATH_BENCHMARKS

  @property
  def is_code(self) -> bool:
    return self.benchmark in CODE_BENCHMARKS

  def prompt_helpers(self) -> str:
    """HumanEval: the code prompt's top-level code other than the function to complete (its
    imports, and helpers that the tests call: `poly` of HumanEval/32, `encode_cyclic` of /38,
    `encode_shift` of /50), exactly as the prompt writes it; "" for other benchmarks.

    The tests run these definitions themselves, after the solution's names are in place, so a
    completion that redefines a helper changes only its own copy: it cannot decide its verdict.
    """
    if self.benchmark != "humaneval":
      return ""
    lines = self.code_prompt.splitlines(keepends=True)
    parts = []
    for node in ast.parse(self.code_prompt).body:
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and \
          node.name == self.entry_point:
        continue
      first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
      parts.append("".join(lines[first - 1:node.end_lineno]))
    return "".join(parts)

  def program_with_tests(self, solution: str) -> str:
    """The program that checks `solution` (a complete Python source) against this problem's tests.

    HumanEval: solution, the prompt's helpers (`prompt_helpers`), `tests`, then
    `check(<entry_point>)`; for a bare completion of the function body pass
    `code_prompt + completion`. MBPP: solution, `test_setup`, asserts (setup after the code, as
    tasks 367 and 927 need). MBPP sanitized: `test_imports`, solution, asserts.
    """
    if not self.is_code:
      raise ValueError(f"{self.id} is a math problem; it has no test program")
    if self.benchmark == "humaneval":
      parts = [solution, self.prompt_helpers(), self.tests, f"check({self.entry_point})"]
    else:
      parts = [*self.test_imports, solution, self.test_setup or "", self.tests]
    return "\n\n".join(part for part in parts if part) + "\n"

  def solution_and_tests(self, solution: str) -> tuple[str, str]:
    """The two programs of an out-of-process test (`dllm_jax.eval.sandbox.run_tests`): what runs
    with the solution, and the tests, which call the solution's functions and classes from
    their own process. The parts and their order are those of `program_with_tests`; HumanEval's
    tests carry the prompt's own helpers (`prompt_helpers`), which replace any the solution
    defined under the same names."""
    if not self.is_code:
      raise ValueError(f"{self.id} is a math problem; it has no test program")
    join = lambda parts: "\n\n".join(part for part in parts if part) + "\n"
    if self.benchmark == "humaneval":
      return solution, join([self.prompt_helpers(), self.tests, f"check({self.entry_point})"])
    return (join([*self.test_imports, solution]),
            join([*self.test_imports, self.test_setup or "", self.tests]))

  def to_dict(self) -> dict[str, Any]:
    """A JSON-serialisable dict (tuples become lists); `from_dict` inverts it."""
    fields = dataclasses.asdict(self)
    for name in _TEXT_TUPLES:
      fields[name] = list(fields[name])
    return fields

  @classmethod
  def from_dict(cls, fields: Mapping[str, Any]) -> Problem:
    unknown = set(fields) - {field.name for field in dataclasses.fields(cls)}
    if unknown:
      raise ValueError(f"unknown Problem fields {sorted(unknown)}")
    return cls(**fields)

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), sort_keys=True)

  @classmethod
  def from_json(cls, text: str) -> Problem:
    return cls.from_dict(json.loads(text))


def check_unique_ids(problems: list[Problem], source: str) -> None:
  """Raises ValueError naming the first id that occurs twice in `problems` (read from `source`)."""
  seen: set[str] = set()
  for problem in problems:
    if problem.id in seen:
      raise ValueError(f"{source}: duplicate problem id {problem.id!r}")
    seen.add(problem.id)
