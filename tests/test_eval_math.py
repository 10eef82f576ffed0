"""Math grading: box extraction, normalisation, every gold answer of MATH500 / AIME 2024 / 2025."""

import concurrent.futures
import json
import re
import time

import pytest

from dllm_jax.data.problems import Problem
from dllm_jax.eval import grading, math_grader
from dllm_jax.eval.math_grader import (answers_equivalent, extract_boxed, grade_math,
                                       normalize_answer)


def _answers(path):
  with open(path, encoding="utf-8") as f:
    return [json.loads(line)["answer"] for line in f]


@pytest.fixture(scope="module")
def golds(shared_data):
  return {name: _answers(shared_data / f"{name}.jsonl") for name in ("math500", "aime24", "aime25")}


def _wrap(answer: str) -> str:
  return f"We simplify step by step, and so the final answer is $\\boxed{{{answer}}}$."


def _bump_number(answer: str, which: int) -> str | None:
  """The answer with one of its integers (first: 0, last: -1) increased by one."""
  numbers = list(re.finditer(r"\d+", answer))
  if not numbers:
    return None
  match = numbers[which]
  return answer[:match.start()] + str(int(match.group()) + 1) + answer[match.end():]


def _perturbations(answer: str) -> list[str]:
  """Wrong answers close to `answer`: a number changed by one, or another word or symbol."""
  wrong = [_bump_number(answer, 0)]
  if not re.search(r"\\(text|mbox)", answer):  # the last number of "15\mbox{ cm}^2" is in the unit
    wrong.append(_bump_number(answer, -1))
  if not re.search(r"\d", answer):
    if "\\text" in answer:
      wrong.append(re.sub(r"\\text\{[^}]*\}", r"\\text{Zebra}", answer))
    else:
      wrong.append(answer + " + 1")
  return [w for w in wrong if w is not None and w != answer]


# --- extraction and normalisation ----------------------------------------------------------------


@pytest.mark.parametrize("text,expected", [
    (r"so $\boxed{5}$.", "5"),
    (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),
    (r"first \boxed{1}, then \boxed{\sqrt{\frac{3}{4}}} at last", r"\sqrt{\frac{3}{4}}"),
    (r"\fbox{3} and \boxed{4}", "4"),
    (r"\boxed{4} and \fbox{\text{yes}}", r"\text{yes}"),
    (r"the set \boxed{\{1, 2\}}", r"\{1, 2\}"),
    (r"\boxed {7}", "7"),
    (r"\boxed 12 is it", "12"),
    (r"no box here: 42", None),
    (r"\boxed{1} then a cut-off \boxed{\frac{1}{2", None),
    (r"\boxedtext{3}", None),
])
def test_extract_boxed(text, expected):
  assert extract_boxed(text) == expected


@pytest.mark.parametrize("raw,expected", [
    ("025", "25"),
    ("-007", "-7"),
    ("0", "0"),
    ("58,500", "58500"),
    (r"11,\! 111,\! 111,\! 100", "11111111100"),
    (r"336^\circ", "336"),
    (r"90^{\circ}", "90"),
    (r"\dfrac{3}{4}", r"\frac{3}{4}"),
    (r"$\left( 3, \frac{\pi}{2} \right)$", r"(3,\frac{\pi}{2})"),
    (r"\text{Evelyn}", "Evelyn"),
    (r"5.4 \text{ cents}", "5.4cents"),
    ("1, 2", "1,2"),
])
def test_normalize_answer(raw, expected):
  assert normalize_answer(raw) == expected


# --- gold answers --------------------------------------------------------------------------------


def test_every_gold_answer_grades_correct(golds):
  counts = {name: sum(grade_math(_wrap(g), g) for g in answers) for name, answers in golds.items()}
  assert counts == {"math500": 500, "aime24": 30, "aime25": 30}


def test_perturbed_gold_answers_grade_wrong(golds):
  cases = [(gold, wrong) for answers in golds.values() for gold in answers
           for wrong in _perturbations(gold)]
  assert len(cases) > 1000
  accepted = [(gold, wrong) for gold, wrong in cases if grade_math(_wrap(wrong), gold)]
  assert accepted == []


@pytest.mark.parametrize("predicted,gold,expected", [
    ("336", r"336^\circ", True),  # AIME 2025 II problem 5
    (r"336^\circ", "336", True),
    ("25", "025", True),  # AIME 2024 answers are zero-padded
    ("026", "025", False),
    (r"\frac{1}{2}", "0.5", True),
    (r"\frac12", r"\frac{1}{2}", True),
    (r"\frac{2}{3}", r"\frac{3}{2}", False),
    (r"2\sqrt{3}", r"\sqrt{12}", True),
    ("[2,5)", "[2,5]", False),
    ("(2,3)", "(3,2)", False),
    ("x^2+1", "1+x^2", True),
    ("864", r"864 \mbox{ inches}^2", True),
    ("52", "52_8", True),
    ("52_9", "52_8", False),  # math_verify alone ignores the base
    ("36", "40_9", False),
    (r"\text{(C)}", r"\text{(D)}", False),
])
def test_answers_equivalent_cases(predicted, gold, expected):
  assert answers_equivalent(predicted, gold) is expected


def test_responses_without_a_complete_box_are_wrong():
  assert not grade_math("The answer is 25.", "25")
  assert not grade_math(r"The answer is \boxed{25", "25")
  assert not grade_math(r"\boxed{}", "25")
  assert grade_math(r"I first guessed \boxed{24} but it is \boxed{25}.", "25")
  assert not grade_math(r"It is \boxed{25}, no wait, \boxed{24}.", "25")


def test_grading_in_worker_threads(golds):
  """math_verify's signal-based timeouts are off, so grading works outside the main thread."""
  answers = golds["math500"][:40]
  responses = [_wrap(g) for g in answers] + [_wrap(_perturbations(g)[0]) for g in answers]
  expected = [True] * len(answers) + [False] * len(answers)
  with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
    got = list(pool.map(math_grader.grade_math, responses, answers + answers))
  assert got == expected


# --- time bound ----------------------------------------------------------------------------------


@pytest.mark.parametrize("answer", [r"10^{10^{10^{10}}}", r"9^{9^{9^{9^{9}}}}", r"(x+1)^{100000}"])
def test_answers_that_hang_sympy_are_graded_wrong_within_the_bound(answer):
  start = time.monotonic()
  verdict = math_grader.grade(_wrap(answer), "5", timeout_s=2.0)
  assert time.monotonic() - start < 10  # the bound, plus the worker's restart
  assert not verdict.correct and verdict.answer == answer
  assert "timed out" in verdict.detail
  # The killed worker is replaced: the next answer grades normally and quickly.
  assert math_grader.grade(_wrap(r"\frac{1}{2}"), "0.5", timeout_s=30.0) == \
      math_grader.MathGrade(True, r"\frac{1}{2}")


def test_a_hanging_answer_is_recorded_wrong_and_the_batch_goes_on():
  problems = [Problem(id=f"math500/{i}", benchmark="math500", question="q", answer=a)
              for i, a in enumerate(["5", "0.5", "7"])]
  responses = [_wrap(r"10^{10^{10^{10}}}"), _wrap(r"\frac12"), _wrap("7")]
  grades = grading.grade_responses(problems, responses, math_timeout_s=2.0)
  assert [g.correct for g in grades] == [False, True, True]
  assert "timed out" in grades[0].detail


@pytest.mark.slow
@pytest.mark.parametrize("predicted,gold", [
    (r"0.\overline{3}", r"\frac{1}{3}"),
    (r"0.\overline{3}", "1/3"),
    (r"1.2\overline{45}", r"\frac{137}{110}"),
    (r".\overline{6}", r"\frac23"),
    (r"0.\overline{9}", "1"),
])
def test_repeating_decimals_equal_their_fractions(predicted, gold):
  assert answers_equivalent(predicted, gold)
  assert math_grader.grade(_wrap(predicted), gold) == math_grader.MathGrade(True, predicted)
  assert not answers_equivalent(predicted, gold + "+1")


@pytest.mark.slow
def test_every_step_of_grading_is_inside_the_bound():
  """Nested \\text{ made `normalize_answer`, which ran in the caller, quadratic: a 33 KB answer
  took 25-40 s whatever the bound. It now runs in the worker, and long answers are refused."""
  nested = "\\text{" * 4700 + "5" + "}" * 4700
  start = time.monotonic()
  verdict = math_grader.grade(_wrap(nested), "5", timeout_s=2.0)
  assert time.monotonic() - start < 6  # the bound, plus a worker start
  assert not verdict.correct and verdict.answer == nested
  assert f"more than the {math_grader.MAX_ANSWER_CHARS}" in verdict.detail
  start = time.monotonic()
  assert not answers_equivalent(nested, "5", timeout_s=2.0)
  assert time.monotonic() - start < 6
  # Just under the cap, nested commands still normalise (inside the worker).
  short = "\\text{" * 90 + "5" + "}" * 90
  assert len(short) < math_grader.MAX_ANSWER_CHARS
  assert math_grader.grade(_wrap(short), "5", timeout_s=5.0).correct
