"""Grading generated code on HumanEval and MBPP: the response's code, run with the tests.

The tests are `Problem.solution_and_tests` (the one place that knows each benchmark's layout:
HumanEval calls `check(entry_point)`; MBPP runs `test_setup` after the solution, as tasks 367 and
927 need; MBPP sanitized runs `test_imports` first). This module turns a model response into the
solution to test and runs it with the tests in the sandbox, each in its own process
(`sandbox.run_tests`): the solution can neither skip the tests nor forge their verdict, and what it
returns is compared as plain data, so an object whose `__eq__` always says True does not pass.

A response may wrap its code in Markdown fences; `extract_code` applies this rule:
1. Fenced blocks are the text between a line starting with three backticks and the next line
   starting with three backticks (or the end of the response: generations get cut off).
2. Blocks tagged `python`, `py` or `python3` are the candidates; if no block is tagged so, all
   fenced blocks are candidates.
3. The first candidate that defines the entry point (`def name(`) is the code; failing that, the
   first candidate. A response without any fence is taken whole, as code.
For HumanEval the code follows the problem's `code_prompt` (its imports and signature): a
continuation of the function body completes it, a whole definition replaces it.

Names the tests take from the solution
--------------------------------------
The tests' process sees the solution's functions, classes and modules (`sandbox.run_tests`).
`names_taken_from_solution` lists, per problem, the names the tests read without defining them
(builtins and the function under test aside). Over all 164 HumanEval, 974 MBPP and 427 MBPP
sanitized problems they are:
- HumanEval/32 `poly`, /38 `encode_cyclic`, /50 `encode_shift`: helpers of the prompt that
  check the answer. The tests run the prompt's own definitions (`Problem.prompt_helpers`), so a
  completion that redefines them (`def poly(xs, x): return 0`) no longer grades itself; after
  that, no HumanEval test reads a name of the solution but the entry point.
- MBPP 367 and 927 `Node`, MBPP 601 `Pair`: classes the task asks the solution to define; the
  tests build inputs with them (as handles into the solution's process) and compare what the
  function returns as plain data.
- MBPP 596 and MBPP sanitized 596 `sys`: a module the solution imports; the tests' process
  imports it afresh by name, so it is the real `sys` unless the solution binds the name to
  another module (which then lacks `getsizeof`, and the test fails).
"""

import builtins
import dataclasses
import re
import symtable
from collections.abc import Sequence

from dllm_jax.data.problems import Problem
from dllm_jax.eval import sandbox

# Lines that start a new top-level statement after a HumanEval function body (the stop sequences
# of the HumanEval paper); see `truncate_at_stop`.
HUMANEVAL_STOP_SEQUENCES = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")

_FENCE = re.compile(r"^[ \t]*```[ \t]*([\w+-]*)[^\n]*\n(.*?)(?:^[ \t]*```|\Z)", re.M | re.S)
_PYTHON_TAGS = ("python", "py", "python3")



def entry_point(problem: Problem) -> str | None:
  """The function under test: HumanEval's `entry_point`; for MBPP the first function of the
  reference solution that a test calls (None when there is none)."""
  if problem.benchmark == "humaneval":
    return problem.entry_point
  tests = "\n".join(problem.test_list)
  for name in re.findall(r"^def\s+([A-Za-z_]\w*)\s*\(", problem.reference_solution or "", re.M):
    if re.search(rf"\b{re.escape(name)}\s*\(", tests):
      return name
  return None


def names_taken_from_solution(problem: Problem) -> list[str]:
  """Names the problem's tests read from the solution's namespace: used by the tests (at top
  level or as globals of their functions) but neither defined there nor builtins, other than the
  function under test (see the module docstring for the list over all problems)."""
  _, tests = problem.solution_and_tests("")
  top = symtable.symtable(tests, "<tests>", "exec")
  defined = {s.get_name() for s in top.get_symbols()
             if s.is_assigned() or s.is_imported() or s.is_namespace()}
  used, tables = set(), [top]
  while tables:
    table = tables.pop()
    for symbol in table.get_symbols():
      if symbol.is_referenced() and (table is top or symbol.is_global()):
        used.add(symbol.get_name())
    tables += table.get_children()
  return sorted(name for name in used - defined
                if not hasattr(builtins, name) and name != entry_point(problem))


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


def solution_for(problem: Problem, response: str, extract: bool = True) -> str:
  """The complete program text to test for a model response (see the module docstring)."""
  code = extract_code(response, entry_point(problem)) if extract else response
  if problem.benchmark != "humaneval":
    return code
  defines = re.search(rf"^\s*(async\s+)?def\s+{re.escape(problem.entry_point)}\s*\(", code, re.M)
  return problem.code_prompt + ("\n" + code if defines else code)


@dataclasses.dataclass(frozen=True)
class CodeGrade:
  """The verdict on one completion, with the sandbox's report."""
  passed: bool
  status: sandbox.Status
  message: str
  program: str  # solution and tests as one program (for reading; they run apart)


def grade_completions(problems: Sequence[Problem], completions: Sequence[str],
                      extract: bool = True, workers: int | None = None,
                      config: sandbox.SandboxConfig = sandbox.SandboxConfig()) -> list[CodeGrade]:
  """Grades completions[i] against problems[i] (repeat a problem for several samples), in
  parallel; returns one `CodeGrade` per completion, in order."""
  if len(problems) != len(completions):
    raise ValueError(f"{len(problems)} problems but {len(completions)} completions")
  solutions = [solution_for(problem, completion, extract)
               for problem, completion in zip(problems, completions)]
  programs = [problem.program_with_tests(s) for problem, s in zip(problems, solutions)]
  cases = [(*problem.solution_and_tests(s), entry_point(problem))
           for problem, s in zip(problems, solutions)]
  results = sandbox.run_many_tests(cases, workers=workers, config=config)
  return [CodeGrade(result.passed, result.status, result.message, program)
          for result, program in zip(results, programs)]


def grade_completion(problem: Problem, completion: str, extract: bool = True,
                     config: sandbox.SandboxConfig = sandbox.SandboxConfig()) -> CodeGrade:
  """Grades one completion (see `grade_completions`)."""
  return grade_completions([problem], [completion], extract, workers=1, config=config)[0]
