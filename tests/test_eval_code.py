"""Code grading: all HumanEval and MBPP reference solutions pass; wrong and hacked ones fail."""

import dataclasses

import pytest

from dllm_jax.data import jsonl
from dllm_jax.eval import code_grader, sandbox
from dllm_jax.eval.sandbox import SandboxConfig, Status

# MBPP 123's reference takes about 12 s of CPU; 8 workers share 2 cores here.
CONFIG = SandboxConfig(timeout_s=60, memory_mb=1024)
WORKERS = 8


@pytest.fixture(scope="module")
def humaneval(shared_data):
  return jsonl.load_benchmark("humaneval", shared_data)


@pytest.fixture(scope="module")
def mbpp(shared_data):
  return jsonl.load_benchmark("mbpp", shared_data)


@pytest.fixture(scope="module")
def mbpp_sanitized(shared_data):
  return jsonl.load_benchmark("mbpp_sanitized", shared_data)


def _grade_references(problems):
  solutions = [p.reference_solution for p in problems]
  grades = code_grader.grade_completions(problems, solutions, workers=WORKERS, config=CONFIG)
  failures = [(p.id, g.message) for p, g in zip(problems, grades) if not g.passed]
  return sum(g.passed for g in grades), failures


def test_all_humaneval_canonical_solutions_pass(humaneval):
  assert len(humaneval) == 164
  assert _grade_references(humaneval) == (164, [])


def test_all_mbpp_reference_solutions_pass(mbpp):
  assert len(mbpp) == 974
  assert _grade_references(mbpp) == (974, [])


def test_all_mbpp_sanitized_reference_solutions_pass(mbpp_sanitized):
  assert len(mbpp_sanitized) == 427
  assert _grade_references(mbpp_sanitized) == (427, [])


def test_mbpp_setup_code_runs_after_the_solution(mbpp):
  by_id = {p.id: p for p in mbpp}
  for task_id in (367, 927):
    problem = by_id[f"mbpp/{task_id}"]
    program = problem.program_with_tests(problem.reference_solution)
    assert program.index("class Node") < program.index("root = Node(1)")
    # The other order fails: the setup code needs the solution's class.
    wrong_order = "\n".join([problem.test_setup, problem.reference_solution, problem.tests])
    right, wrong = sandbox.run_many([program, wrong_order], config=CONFIG)
    assert right.passed and not wrong.passed
    assert "NameError" in wrong.message


def test_wrong_completions_fail(humaneval, mbpp, mbpp_sanitized):
  problems = humaneval[:20] + mbpp[:20] + mbpp_sanitized[:20]
  wrong = []
  for p in problems:
    if p.benchmark == "humaneval":
      wrong.append("    return None\n")
    else:  # the right function name, the wrong result
      wrong.append(f"def {code_grader.entry_point(p)}(*args, **kwargs):\n  return None\n")
  grades = code_grader.grade_completions(problems, wrong, workers=WORKERS, config=CONFIG)
  assert [g.passed for g in grades] == [False] * len(problems)
  assert all(g.status is Status.FAILED for g in grades)


def test_humaneval_harness_tricks_fail(humaneval):
  problem = humaneval[0]  # has_close_elements
  correct = problem.reference_solution[len(problem.code_prompt):]  # the canonical body
  tricks = {
      "redefine_check": "    return None\n\ndef check(candidate):\n    return True\n",
      "exit_in_candidate": "    import sys\n    sys.exit(0)\n",
      "os_exit_in_candidate": "    import os\n    os._exit(0)\n",
      "exit_at_top_level": "    return None\nimport sys\nsys.exit(0)\n",
      "fake_marker_then_exit": ("    return None\nimport os\nprint('PASS ' + 'f' * 32)\n"
                                "for fd in range(3, 64):\n    try:\n"
                                "        os.write(fd, b'PASS ok\\n')\n"
                                "    except OSError:\n        pass\nos._exit(0)\n"),
      "patch_builtins": ("    return None\nimport builtins\n"
                         "builtins.AssertionError = type('A', (Exception,), {})\n"
                         "builtins.check = lambda candidate: None\n"),
      "swallow_via_excepthook": ("    return None\nimport sys\nsys.excepthook = lambda *a: None\n"
                                 "import atexit, os\natexit.register(os._exit, 0)\n"),
      "keyboard_interrupt": "    raise KeyboardInterrupt\n",
      # Forgeries that passed when the tests ran in the solution's interpreter:
      "forge_the_pass_token": (  # the launcher's pipes, found through /proc/self/cmdline
          "    return None\nimport os\n"
          "argv = open('/proc/self/cmdline', 'rb').read().split(b'\\0')\n"
          "cfg = dict(a.decode().split('=', 1) for a in argv if b'=' in a)\n"
          "os.write(int(cfg['result_fd']), b'PASS ' + os.read(int(cfg['nonce_fd']), 64) + b'\\n')\n"
          "os._exit(0)\n"),
      "forge_on_every_fd": (
          "    return None\nimport os\nfor fd in range(3, 64):\n    try:\n"
          "        os.write(fd, b'PASS ' + os.read(fd, 64) + b'\\n')\n"
          "    except OSError:\n        pass\nos._exit(0)\n"),
      "always_equal": ("    class Yes:\n        def __eq__(self, other):\n            return True\n"
                       "    return Yes()\n"),
      "true_subclass": ("    class Yes(int):\n        def __eq__(self, other):\n"
                        "            return True\n    return Yes(1)\n"),
      "skip_asserts_with_settrace": (
          "    return None\nimport sys\n"
          "def tracer(frame, event, arg):\n    frame.f_trace_lines = True\n"
          "    if event == 'line' and frame.f_code.co_name == 'check':\n"
          "        frame.f_lineno = frame.f_code.co_firstlineno + 100000\n    return tracer\n"
          "sys.settrace(tracer)\n"),
  }
  completions = [correct] + list(tricks.values())
  # forge_on_every_fd blocks reading a pipe until the wall-clock limit ends it; these programs
  # take 0.1 s each, so a 10 s limit (not the reference solutions' 60 s) is ample.
  quick = dataclasses.replace(CONFIG, timeout_s=10)
  grades = code_grader.grade_completions([problem] * len(completions), completions,
                                         workers=WORKERS, config=quick)
  assert grades[0].passed, grades[0].message
  for name, grade in zip(tricks, grades[1:]):
    assert not grade.passed, name
  by_name = dict(zip(tricks, grades[1:]))
  assert "Bad file descriptor" in by_name["forge_the_pass_token"].message  # no such pipe there
  assert "not plain data" in by_name["always_equal"].message


def test_a_forged_verdict_is_not_recorded_as_correct(humaneval):
  """The forgery of the issue, through the grading entry point the runner uses."""
  from dllm_jax.eval import grading  # pylint: disable=import-outside-toplevel
  problem = humaneval[0]
  forged = ("```python\nimport os\n"
            "argv = open('/proc/self/cmdline', 'rb').read().split(b'\\0')\n"
            "cfg = dict(a.decode().split('=', 1) for a in argv if b'=' in a)\n"
            "token = os.read(int(cfg['nonce_fd']), 64)\n"
            "os.write(int(cfg['result_fd']), b'PASS ' + token + b'\\n')\nos._exit(0)\n```\n")
  honest = f"```python\n{problem.reference_solution}```\n"
  grades = grading.grade_responses([problem, problem], [forged, honest], config=CONFIG)
  assert [g.correct for g in grades] == [False, True], grades


def test_objects_of_the_solution_work_through_handles(mbpp):
  """MBPP 927's tests build a tree of the solution's Node class; values cross as plain data."""
  by_id = {p.id: p for p in mbpp}
  problem = by_id["mbpp/927"]
  solution, tests = problem.solution_and_tests(problem.reference_solution)
  assert "class Node" in solution and "class Node" not in tests
  result = sandbox.run_tests(solution, tests, CONFIG, entry_point="max_height")
  assert result.passed, result.stderr
  wrong = problem.reference_solution.replace("return left_height+1", "return left_height+2")
  assert wrong != problem.reference_solution
  assert not code_grader.grade_completion(problem, wrong, config=CONFIG).passed


def test_extract_code_rule():
  assert code_grader.extract_code("def f():\n  return 1\n") == "def f():\n  return 1\n"
  response = ("Here is a helper:\n```\nprint('hi')\n```\nand the answer:\n"
              "```python\ndef g():\n  pass\n```\n```python\ndef f(x):\n  return x\n```\n"
              "Example:\n```python\nprint(f(1))\n```\n")
  assert code_grader.extract_code(response, "f") == "def f(x):\n  return x\n"
  assert code_grader.extract_code(response) == "def g():\n  pass\n"  # the first python block
  assert code_grader.extract_code(response, "missing") == "def g():\n  pass\n"
  untagged = "Sure.\n```\ndef f(x):\n  return 2 * x\n```\nDone."
  assert code_grader.extract_code(untagged, "f") == "def f(x):\n  return 2 * x\n"
  truncated = "```py\ndef f(x):\n  return 3 * x"
  assert code_grader.extract_code(truncated, "f") == "def f(x):\n  return 3 * x"


def test_fenced_responses_are_graded(humaneval, mbpp_sanitized):
  he, mb = humaneval[2], mbpp_sanitized[0]
  he_full = he.reference_solution
  responses = [f"Sure!\n```python\n{he_full}```\nThis works because...",
               f"```python\n{mb.reference_solution}\n```\n\n```python\nprint('usage')\n```"]
  grades = code_grader.grade_completions([he, mb], responses, config=CONFIG)
  assert [g.passed for g in grades] == [True, True]
  raw = code_grader.grade_completion(he, responses[0], extract=False, config=CONFIG)
  assert not raw.passed and "SyntaxError" in raw.message  # prose is not Python


def test_program_assembly(humaneval, mbpp, mbpp_sanitized):
  he = humaneval[0]
  program = he.program_with_tests(code_grader.solution_for(he, "    return True\n"))
  assert program.startswith(he.code_prompt + "    return True\n")
  assert program.rstrip().endswith(f"check({he.entry_point})")
  whole = code_grader.solution_for(he, f"```python\ndef {he.entry_point}(x):\n  return 1\n```")
  assert whole == he.code_prompt + f"\ndef {he.entry_point}(x):\n  return 1\n"
  sanitized = next(p for p in mbpp_sanitized if p.test_imports)
  program = sanitized.program_with_tests("SOLUTION = 1")
  assert program.index(sanitized.test_imports[0]) < program.index("SOLUTION = 1")
  assert program.index("SOLUTION = 1") < program.index(sanitized.test_list[0])
  assert code_grader.entry_point(mbpp[0]) == "min_cost"
  with pytest.raises(ValueError):
    code_grader.grade_completions([he], [], config=CONFIG)


def test_truncate_at_stop():
  text = "    return x\n\ndef helper():\n    pass\nif __name__ == '__main__':\n    main()"
  assert code_grader.truncate_at_stop(text) == "    return x\n"
  assert code_grader.truncate_at_stop("    return x") == "    return x"


def test_names_the_tests_take_from_the_solution(humaneval, mbpp, mbpp_sanitized):
  """The list in code_grader's docstring, over every problem (no prompt helper among them)."""
  found = {p.id: code_grader.names_taken_from_solution(p)
           for p in humaneval + mbpp + mbpp_sanitized}
  assert {k: v for k, v in found.items() if v} == {
      "mbpp/367": ["Node"], "mbpp/927": ["Node"], "mbpp/601": ["Pair"], "mbpp/596": ["sys"],
      "mbpp_sanitized/596": ["sys"]}
  by_id = {p.id: p for p in humaneval}
  assert "def poly(" in by_id["humaneval/HumanEval/32"].prompt_helpers()
  assert "def find_zero(" not in by_id["humaneval/HumanEval/32"].prompt_helpers()


@pytest.mark.slow
def test_completions_cannot_redefine_the_prompts_helpers(humaneval):
  """HumanEval/32, /38 and /50 check the answer with helpers of the prompt; a completion that
  redefines them (whole definitions, or after a body) must still be graded by the prompt's."""
  by_id = {p.id: p for p in humaneval}
  he32, he38, he50 = (by_id[f"humaneval/HumanEval/{n}"] for n in (32, 38, 50))
  cases = [
      (he32, "def poly(xs, x):\n    return 0\n\ndef find_zero(xs):\n    return 0.0\n"),
      (he32, "    return 1.5\n\ndef poly(xs, x):\n    return 0.0\n"),
      (he32, "    return 0.0\nimport math\nmath.fabs = lambda v: 0.0\n"),
      (he38, "def encode_cyclic(s):\n    return s\n\ndef decode_cyclic(s):\n    return s\n"),
      (he38, "    return s\n\nencode_cyclic = str\n"),
      (he50, "def encode_shift(s):\n    return s\n\ndef decode_shift(s):\n    return s\n"),
      (he50, "    return s\n\nclass encode_shift(str):\n    pass\n"),
  ]
  honest = [(p, p.reference_solution) for p in (he32, he38, he50)]
  grades = code_grader.grade_completions([p for p, _ in cases + honest],
                                         [c for _, c in cases + honest], workers=WORKERS,
                                         config=CONFIG)
  assert [g.passed for g in grades] == [False] * len(cases) + [True] * 3, \
      [(p.id, g.message) for (p, _), g in zip(cases + honest, grades)]
