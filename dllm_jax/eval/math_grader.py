"""Grading of math answers (MATH500, AIME): the last \\boxed{...} answer against a gold answer.

A response is correct when its last `\\boxed{...}` (or `\\fbox{...}`) holds an answer equal to the
gold one, either as strings after `normalize_answer` or by `math_verify` (symbolic and numeric
equivalence via sympy). A response without a complete box is wrong: we do not guess the answer
from free text. Gold answers are LaTeX as in the benchmark files; the known quirks handled here
are degree marks (AIME 2025's `336^\\circ`) and zero-padded integers (AIME 2024's "025").

Some answers make sympy run for ever (`10^{10^{10^{10}}}`, `(x+1)^{100000}`), and math_verify's
own timeouts rely on SIGALRM (main thread only), so grading runs in a long-lived worker process
under a wall-clock bound: `grade` kills and restarts the worker when an answer takes longer than
`timeout_s`, and the answer is graded wrong with the reason in `MathGrade.detail`. Every step of
grading a response runs there, inside the bound: finding the box, normalising (which is
quadratic in nested `\\text{`), the string and the symbolic comparisons; the caller only checks
that the response holds a box command at all (a substring search). An answer longer than
`MAX_ANSWER_CHARS` (20 times the longest gold answer of MATH500 and AIME) is graded wrong without
being compared, with that reason. The worker starts once (about 1 s) and then answers in about a
millisecond. Everything here is thread-safe (calls to the worker take turns).

A repeating decimal written with `\\overline` (`0.\\overline{3}`, `1.2\\overline{45}`) is read as
the fraction it denotes (1/3, 137/110).
"""

import dataclasses
import fractions
import json
import os
import re
import resource
import select
import subprocess
import sys
import threading
import time

_BOX_COMMANDS = ("\\boxed", "\\fbox")

# Text-mode wrappers whose argument is kept (the command itself is dropped).
_TEXT_COMMANDS = ("\\text", "\\textbf", "\\textit", "\\textrm", "\\mathrm", "\\mathbf", "\\mbox")
_DEGREE_PATTERN = re.compile(
    r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ|\\circ|\\degree|°|\\text\{\s*degrees?\s*\}")
_SPACING_PATTERN = re.compile(r"\\[!,;:]|\\quad|\\qquad|~|\\ ")
_THOUSANDS_PATTERN = re.compile(r"^[+-]?\d{1,3}(,\d{3})+$")
_INTEGER_PATTERN = re.compile(r"^([+-]?)0*(\d+)$")
_BASE_NUMERAL_PATTERN = re.compile(r"^([0-9A-Za-z]+)_\{?(\d+)\}?$")  # 52_8, 4210_{5}
# 0.\overline{3}, 1.2\overline{45}, .\overline{6}: integer part, fixed digits, repeating digits.
_REPEATING_DECIMAL_PATTERN = re.compile(
    r"(?<![\d.])(\d*)\.(\d*)\\overline\s*(?:\{\s*(\d+)\s*\}|(\d))")
MAX_ANSWER_CHARS = 1000
_NO_BOX = "no complete \\boxed{} answer"


def _matching_brace(text: str, open_index: int) -> int | None:
  """Index of the `}` closing the `{` at `open_index`, or None when the braces do not balance."""
  depth = 0
  i = open_index
  while i < len(text):
    char = text[i]
    if char == "\\":  # an escaped brace (\{ or \}) does not count
      i += 2
      continue
    if char == "{":
      depth += 1
    elif char == "}":
      depth -= 1
      if depth == 0:
        return i
    i += 1
  return None


def extract_boxed(text: str) -> str | None:
  """The content of the last `\\boxed{...}` or `\\fbox{...}` in `text`.

  Nested braces are handled (`\\boxed{\\frac{1}{2}}` gives `\\frac{1}{2}`), and so is the
  brace-less form `\\boxed 5`. Returns None when there is no box, or when the last box is not
  closed (a truncated generation): an earlier box is then an intermediate result, not the answer.
  """
  start = max(text.rfind(command) for command in _BOX_COMMANDS)
  if start < 0:
    return None
  command = next(c for c in _BOX_COMMANDS if text.startswith(c, start))
  after_command = start + len(command)
  brace_index = after_command
  while brace_index < len(text) and text[brace_index].isspace():
    brace_index += 1
  if text.startswith("{", brace_index):
    end = _matching_brace(text, brace_index)
    return None if end is None else text[brace_index + 1:end].strip()
  if brace_index > after_command:  # "\boxed 5": up to the next space or `$`
    match = re.match(r"[^\s$]+", text[brace_index:])
    return match.group(0) if match else None
  return None  # a longer command name such as \boxedtext


def _unwrap_command(text: str, command: str) -> str:
  """Replaces every `command{arg}` by `arg` (balanced braces); leaves unbalanced ones alone."""
  pattern = re.compile(re.escape(command) + r"\s*\{")
  while match := pattern.search(text):
    open_index = match.end() - 1
    end = _matching_brace(text, open_index)
    if end is None:
      break
    text = text[:match.start()] + text[open_index + 1:end] + text[end + 1:]
  return text


def strip_degrees(answer: str) -> str:
  """Removes degree marks: `336^\\circ`, `90^{\\circ}`, `45°`, `\\text{ degrees}`."""
  return _DEGREE_PATTERN.sub("", answer).strip()


def strip_math_delimiters(answer: str) -> str:
  """Removes surrounding `$...$`, `\\(...\\)` and `\\[...\\]`."""
  answer = answer.strip()
  for left, right in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
    if answer.startswith(left) and answer.endswith(right) and len(answer) >= len(left) + len(right):
      return answer[len(left):len(answer) - len(right)].strip()
  return answer


def _repeating_decimal(match: re.Match) -> str:
  whole, fixed, repeating = match.group(1), match.group(2), match.group(3) or match.group(4)
  value = int(whole or "0") + fractions.Fraction(
      int(fixed + repeating) - int(fixed or "0"), 10**len(fixed) * (10**len(repeating) - 1))
  if value.denominator == 1:
    return str(value.numerator)
  return f"\\frac{{{value.numerator}}}{{{value.denominator}}}"


def repeating_decimals_as_fractions(answer: str) -> str:
  """`0.\\overline{3}` -> `\\frac{1}{3}`, `0.\\overline{9}` -> `1` (the value it denotes)."""
  return _REPEATING_DECIMAL_PATTERN.sub(_repeating_decimal, answer)


def normalize_answer(answer: str) -> str:
  """A canonical string for exact comparison of short LaTeX answers.

  Drops math delimiters, spacing commands, `\\left`/`\\right`, degree marks, text wrappers (their
  content is kept), a trailing period and all whitespace; maps `\\dfrac`/`\\tfrac` to `\\frac`;
  writes integers without leading zeros or thousands separators ("025" and "0,025" give "25").
  Deliberately conservative: anything cleverer is left to `math_verify`. Time grows with the
  square of the nesting depth of text commands: `grade` calls it only in its time-bounded worker,
  on answers of at most `MAX_ANSWER_CHARS` characters.
  """
  text = strip_math_delimiters(answer)
  text = _SPACING_PATTERN.sub("", text)
  text = strip_degrees(text)
  text = text.replace("\\left", "").replace("\\right", "")
  text = text.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
  text = repeating_decimals_as_fractions(text)
  for command in _TEXT_COMMANDS:
    text = _unwrap_command(text, command)
  text = re.sub(r"\s+", "", text).rstrip(".")
  if _THOUSANDS_PATTERN.match(text):
    text = text.replace(",", "")
  if match := _INTEGER_PATTERN.match(text):
    sign, digits = match.groups()
    text = ("-" if sign == "-" and digits != "0" else "") + digits
  return text


def _prepare_for_parse(answer: str) -> str:
  # Degree marks and leading zeros change nothing here; math_verify already reads "025" as 25.
  answer = repeating_decimals_as_fractions(strip_degrees(strip_math_delimiters(answer)))
  return "\\boxed{" + answer + "}"


def _base_numeral(normalized: str) -> tuple[str, str] | None:
  """(digits, base) of a numeral written with its base as a subscript, like `52_8`."""
  match = _BASE_NUMERAL_PATTERN.match(normalized)
  return (match.group(1).lower(), match.group(2)) if match else None


# A bound far above any real comparison (milliseconds) and the worker's memory cap.
DEFAULT_TIMEOUT_S = 10.0
_WORKER_MEMORY_BYTES = 4 << 30
_WORKER_START_S = 120.0


class GradingTimeout(Exception):
  """Grading ran past its time bound (the worker was killed). args: (message, replies so far)."""


def _equivalent_here(predicted: str, gold: str) -> bool:
  """`answers_equivalent` without a time bound: what the worker process runs."""
  from math_verify import parse, verify  # pylint: disable=import-outside-toplevel
  predicted_norm, gold_norm = normalize_answer(predicted), normalize_answer(gold)
  if predicted_norm == gold_norm:
    return True
  # math_verify drops subscripts, which would make 52_8 equal to 52_9; the digits must agree,
  # and so must the bases when both are written.
  predicted_base, gold_base = _base_numeral(predicted_norm), _base_numeral(gold_norm)
  if predicted_base or gold_base:
    if predicted_base and gold_base:
      return predicted_base == gold_base
    digits = (predicted_base or gold_base)[0]
    return digits == (gold_norm if predicted_base else predicted_norm).lower()
  gold_parsed = parse(_prepare_for_parse(gold), parsing_timeout=None)
  predicted_parsed = parse(_prepare_for_parse(predicted), parsing_timeout=None)
  if not gold_parsed or not predicted_parsed:
    return False
  return bool(verify(gold_parsed, predicted_parsed, timeout_seconds=None))


def _too_long(answer: str) -> str | None:
  if len(answer) > MAX_ANSWER_CHARS:
    return (f"graded wrong: the answer has {len(answer)} characters, more than the "
            f"{MAX_ANSWER_CHARS} compared")
  return None


def _grade_here(response: str, gold: str):
  """`grade` without a time bound, in steps: yields the boxed answer first, then the verdict
  (a dict with "equal" and, when it is wrong for a reason, "detail")."""
  predicted = extract_boxed(response)
  yield {"answer": predicted}
  if predicted is None or not predicted.strip():
    yield {"equal": False, "detail": _NO_BOX}
  elif (reason := _too_long(predicted)):
    yield {"equal": False, "detail": reason}
  else:
    yield {"equal": _equivalent_here(predicted, gold)}


def _compare_here(predicted: str, gold: str):
  """`answers_equivalent` without a time bound (one reply)."""
  reason = _too_long(predicted)
  yield {"equal": False, "detail": reason} if reason else {"equal": _equivalent_here(predicted,
                                                                                        gold)}


_OPERATIONS = {"grade": _grade_here, "compare": _compare_here}


class _Worker:
  """One child process that runs `_OPERATIONS`: a JSON line in, one JSON line per step out."""

  def __init__(self):
    self._lock = threading.Lock()
    self._proc: subprocess.Popen | None = None
    self._buffer = b""  # what the worker wrote past the last line read

  def _start(self) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    proc = subprocess.Popen([sys.executable, "-m", "dllm_jax.eval.math_grader"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, env=env,
                            start_new_session=True)  # Ctrl-C reaches the run, not the worker
    self._buffer = b""
    if self._read_line(proc, time.monotonic() + _WORKER_START_S) != {"ready": True}:
      self._stop(proc)
      raise RuntimeError("the math grading worker did not start (python -m "
                         "dllm_jax.eval.math_grader failed; is math_verify installed?)")
    return proc

  def _read_line(self, proc: subprocess.Popen, deadline: float):
    while b"\n" not in self._buffer:
      left = deadline - time.monotonic()
      if left <= 0 or not select.select([proc.stdout], [], [], left)[0]:
        return None
      chunk = os.read(proc.stdout.fileno(), 1 << 16)
      if not chunk:
        return None
      self._buffer += chunk
    line, self._buffer = self._buffer.split(b"\n", 1)
    return json.loads(line)

  @staticmethod
  def _stop(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait()
    proc.stdin.close()
    proc.stdout.close()

  def run(self, operation: str, first: str, second: str, steps: int,
          timeout_s: float) -> list[dict]:
    """The replies of one operation; raises GradingTimeout (with the replies so far) when all
    `steps` replies do not come within `timeout_s` of sending it."""
    with self._lock:
      if self._proc is None or self._proc.poll() is not None:
        self._proc = self._start()
      self._proc.stdin.write(json.dumps([operation, first, second]).encode() + b"\n")
      self._proc.stdin.flush()
      deadline = time.monotonic() + timeout_s
      replies = []
      while len(replies) < steps:
        reply = self._read_line(self._proc, deadline)
        if reply is None:  # too slow, or it died (out of memory): start afresh next time
          self._stop(self._proc)
          self._proc = None
          raise GradingTimeout(f"no verdict within {timeout_s:g} s", replies)
        replies.append(reply)
        if "error" in reply:
          break
    return replies


_worker = _Worker()


def _exit_with_parent(parent: int) -> None:
  while os.getppid() == parent:  # an orphan stuck in sympy would otherwise run for ever
    time.sleep(1.0)
  os._exit(1)


def _serve() -> None:
  threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
  resource.setrlimit(resource.RLIMIT_AS, (_WORKER_MEMORY_BYTES, _WORKER_MEMORY_BYTES))
  import math_verify  # pylint: disable=import-outside-toplevel,unused-import  (before "ready")
  out = sys.stdout.buffer
  out.write(b'{"ready": true}\n')
  out.flush()
  for line in sys.stdin.buffer:
    operation, first, second = json.loads(line)
    try:
      for reply in _OPERATIONS[operation](first, second):
        out.write(json.dumps(reply).encode() + b"\n")
        out.flush()
    except Exception as error:  # pylint: disable=broad-except  (sympy raises all kinds)
      out.write(json.dumps({"error": f"{type(error).__name__}: {error}"[:200]}).encode() + b"\n")
      out.flush()


def answers_equivalent(predicted: str, gold: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
  """Whether two answer strings (already taken out of their boxes) denote the same answer;
  False for an answer longer than `MAX_ANSWER_CHARS`. Raises `GradingTimeout` when the
  comparison (normalisation included) takes longer than `timeout_s`."""
  reply = _worker.run("compare", predicted, gold, 1, timeout_s)[-1]
  if "error" in reply:
    raise ValueError(reply["error"])
  return reply["equal"]


@dataclasses.dataclass(frozen=True)
class MathGrade:
  correct: bool
  answer: str | None  # the last \boxed{} content
  detail: str = ""  # why it is wrong when that is not a plain mismatch (timeout, no box, error)


def grade(response: str, gold: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> MathGrade:
  """The verdict on a model response: its last boxed answer against the gold answer. Every step
  runs in the worker, within `timeout_s` in all; only a response without any box command is
  judged here (a substring search: linear time, no worker needed)."""
  if not any(command in response for command in _BOX_COMMANDS):
    return MathGrade(False, None, _NO_BOX)
  try:
    replies = _worker.run("grade", response, gold, 2, timeout_s)
  except GradingTimeout as error:
    message, replies = error.args
    answer = replies[0].get("answer") if replies else None
    return MathGrade(False, answer, f"graded wrong: comparison timed out ({message})")
  answer = replies[0].get("answer")
  if "error" in replies[-1]:
    return MathGrade(False, answer, f"graded wrong: comparison failed ({replies[-1]['error']})")
  return MathGrade(replies[1]["equal"], answer, replies[1].get("detail", ""))


def grade_math(response: str, gold: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> bool:
  """Whether the last boxed answer of a model response equals the gold answer."""
  return grade(response, gold, timeout_s).correct


if __name__ == "__main__":
  _serve()
