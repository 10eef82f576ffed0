"""One entry point for grading model responses to benchmark problems, math and code alike."""

from __future__ import annotations

import dataclasses
from typing import Sequence

from dllm_jax.data.problems import Problem
from dllm_jax.eval import code_grader, math_grader, sandbox


@dataclasses.dataclass(frozen=True)
class Grade:
  correct: bool
  answer: str | None  # math: the last \boxed{} content; code: the tested solution code
  detail: str = ""


def grade_responses(problems: Sequence[Problem], responses: Sequence[str],
                    workers: int | None = None,
                    config: sandbox.SandboxConfig = sandbox.SandboxConfig(),
                    math_timeout_s: float = math_grader.DEFAULT_TIMEOUT_S) -> list[Grade]:
  """Grades responses[i] against problems[i]: math with `math_grader.grade` (time-bounded), code by
  running it with the tests in the sandbox (in parallel)."""
  if len(problems) != len(responses):
    raise ValueError(f"{len(problems)} problems but {len(responses)} responses")
  grades: list[Grade | None] = [None] * len(problems)
  code = [i for i, p in enumerate(problems) if p.is_code]
  for i, problem in enumerate(problems):
    if problem.is_math:
      verdict = math_grader.grade(responses[i], problem.answer, math_timeout_s)
      grades[i] = Grade(verdict.correct, verdict.answer, verdict.detail)
  if code:
    results = code_grader.grade_completions([problems[i] for i in code],
                                            [responses[i] for i in code], workers=workers,
                                            config=config)
    for i, result in zip(code, results):
      solution = code_grader.extract_code(responses[i], code_grader.entry_point(problems[i]))
      grades[i] = Grade(result.passed, solution.strip(), f"{result.status.value}: "
                                                          f"{result.message}"[:300])
  return grades
