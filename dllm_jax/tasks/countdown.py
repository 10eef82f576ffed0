"""Countdown: reach a target from a few numbers with + - * /, each number used exactly once.

A problem is a multiset of single-digit numbers (shown in some order) and a positive integer
target; an answer is an infix expression that uses *every* number exactly once, with + - * /,
parentheses and standard precedence (left-associative), and whose exact rational value equals
the target (intermediate fractions are allowed, division by zero is not). Most problems have
several valid answers ("3*8" and "8*3" are different answers), which is what makes the task a
test of a sampler's exploration.

- `enumerate_expressions(numbers)`: every distinct expression over the numbers, printed with
  minimal parentheses (a tree and any tree that differs only by regrouping + or * chains print
  the same), with its exact value. `answers(problem)` are the ones that hit the target.
- `verify(problem, text)`: a small recursive-descent parser (never `eval`) with `Fraction`s.
- The train / held-out split hashes the canonical problem (sorted numbers, target) with SHA-256,
  so a held-out problem never occurs in training under any order of its numbers, on any machine.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
from fractions import Fraction
from typing import Iterator

import numpy as np

OPERATORS = "+-*/"
_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}
_ATOM = 3  # precedence of a bare number


@dataclasses.dataclass(frozen=True)
class Problem:
  numbers: tuple[int, ...]  # in the order shown in the prompt
  target: int

  @property
  def key(self) -> tuple[tuple[int, ...], int]:
    """The canonical identity: the order of the numbers does not matter."""
    return tuple(sorted(self.numbers)), self.target

  def __str__(self) -> str:
    return f"{' '.join(map(str, self.numbers))} -> {self.target}"


@dataclasses.dataclass(frozen=True)
class CountdownTask:
  """The problem distribution: `num_numbers` numbers in [min_number, max_number] (repeats
  allowed) and a reachable integer target in [min_target, max_target]."""

  num_numbers: int = 4
  min_number: int = 1
  max_number: int = 9
  min_target: int = 1
  max_target: int = 99
  heldout_per_mille: int = 100  # share of problems (in 1/1000) reserved for evaluation
  salt: str = "countdown-v1"

  def __post_init__(self):
    if not 2 <= self.num_numbers <= 5:
      raise ValueError(f"num_numbers must be in [2, 5], got {self.num_numbers}")
    if not 0 <= self.min_number <= self.max_number <= 9:
      raise ValueError("numbers must be single digits: 0 <= min_number <= max_number <= 9")
    if not 1 <= self.min_target <= self.max_target:
      raise ValueError("need 1 <= min_target <= max_target")
    if not 0 < self.heldout_per_mille < 1000:
      raise ValueError(f"heldout_per_mille must be in (0, 1000), got {self.heldout_per_mille}")

  @property
  def max_answer_length(self) -> int:
    """Digits + operators + at most one pair of parentheses per non-root operator."""
    n = self.num_numbers
    return n + (n - 1) + 2 * max(n - 2, 0)

  def is_heldout(self, problem: Problem) -> bool:
    numbers, target = problem.key
    text = f"{self.salt}:{','.join(map(str, numbers))}={target}"
    digest = hashlib.sha256(text.encode()).digest()
    return int.from_bytes(digest[:8], "big") % 1000 < self.heldout_per_mille

  def multisets(self) -> list[tuple[int, ...]]:
    return list(itertools.combinations_with_replacement(
        range(self.min_number, self.max_number + 1), self.num_numbers))

  def targets(self, numbers: tuple[int, ...]) -> list[int]:
    """The reachable integer targets in range, ascending."""
    return sorted(int(v) for v in reachable_values(tuple(sorted(numbers)))
                  if v.denominator == 1 and self.min_target <= v <= self.max_target)

  def problems(self, split: str) -> list[Problem]:
    """Every problem of a split ("train" or "heldout"), numbers sorted, in a fixed order."""
    if split not in ("train", "heldout"):
      raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    want = split == "heldout"
    return [p for numbers in self.multisets() for t in self.targets(numbers)
            if self.is_heldout(p := Problem(numbers, t)) == want]

  def sample_problems(self, split: str, count: int, seed: int) -> list[Problem]:
    """`count` distinct problems of `split` drawn without replacement, numbers shuffled."""
    pool = self.problems(split)
    if count > len(pool):
      raise ValueError(f"asked for {count} {split} problems; the split has {len(pool)}")
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(pool), size=count, replace=False)
    return [Problem(tuple(int(x) for x in rng.permutation(pool[i].numbers)), pool[i].target)
            for i in chosen]

  def answers(self, problem: Problem) -> list[str]:
    """Every valid answer (minimal parentheses), sorted."""
    return sorted(text for text, value in enumerate_expressions(problem.key[0])
                  if value == problem.target)


# ----------------------------------------------------------------------------------------------
# Enumeration


def _wrap(text: str, precedence: int, parent: str, right: bool) -> str:
  """Parenthesises a child only where dropping the parentheses would change the value."""
  need = precedence < _PRECEDENCE[parent]
  if right and parent in "-/":
    need = precedence <= _PRECEDENCE[parent]
  return f"({text})" if need else text


@functools.lru_cache(maxsize=None)
def _expressions(numbers: tuple[int, ...]) -> dict[str, tuple[Fraction, int]]:
  """text -> (value, precedence) for every expression using each of `numbers` (sorted) once."""
  if len(numbers) == 1:
    return {str(numbers[0]): (Fraction(numbers[0]), _ATOM)}
  out: dict[str, tuple[Fraction, int]] = {}
  n = len(numbers)
  seen = set()
  for size in range(1, n):
    for left_idx in itertools.combinations(range(n), size):
      left = tuple(numbers[i] for i in left_idx)
      right = tuple(numbers[i] for i in range(n) if i not in left_idx)
      if (left, right) in seen:  # repeated numbers give the same split twice
        continue
      seen.add((left, right))
      for (lt, (lv, lp)), (rt, (rv, rp)) in itertools.product(
          _expressions(left).items(), _expressions(right).items()):
        for op in OPERATORS:
          if op == "/" and rv == 0:
            continue
          value = {"+": lv + rv, "-": lv - rv, "*": lv * rv}.get(op) if op != "/" else lv / rv
          text = _wrap(lt, lp, op, False) + op + _wrap(rt, rp, op, True)
          out.setdefault(text, (value, _PRECEDENCE[op]))
  return out


@functools.lru_cache(maxsize=None)
def reachable_values(numbers: tuple[int, ...]) -> frozenset[Fraction]:
  """Every value some expression over `numbers` (sorted) reaches; much cheaper than the
  expressions themselves."""
  if len(numbers) == 1:
    return frozenset([Fraction(numbers[0])])
  out = set()
  n = len(numbers)
  for size in range(1, n):
    for left_idx in itertools.combinations(range(n), size):
      left = reachable_values(tuple(numbers[i] for i in left_idx))
      right = reachable_values(tuple(numbers[i] for i in range(n) if i not in left_idx))
      for a, b in itertools.product(left, right):
        out.update((a + b, a - b, a * b))
        if b != 0:
          out.add(a / b)
  return frozenset(out)


def enumerate_expressions(numbers: tuple[int, ...]) -> list[tuple[str, Fraction]]:
  """Every distinct minimal-parentheses expression using each number once, with its value."""
  return [(text, value) for text, (value, _) in _expressions(tuple(sorted(numbers))).items()]


# ----------------------------------------------------------------------------------------------
# Verification


class ParseError(ValueError):
  pass


def _tokens(text: str) -> Iterator[str]:
  for char in text:
    if char.isspace():
      continue
    if not (char.isdigit() or char in OPERATORS or char in "()"):
      raise ParseError(f"unexpected character {char!r}")
    yield char


class _Parser:
  """expr := term (('+'|'-') term)*;  term := factor (('*'|'/') factor)*;
  factor := digit | '(' expr ')'. Numbers are single digits, as in the problems."""

  def __init__(self, text: str):
    self.tokens = list(_tokens(text))
    self.pos = 0
    self.numbers: list[int] = []

  def peek(self) -> str | None:
    return self.tokens[self.pos] if self.pos < len(self.tokens) else None

  def take(self) -> str:
    token = self.peek()
    if token is None:
      raise ParseError("unexpected end of expression")
    self.pos += 1
    return token

  def parse(self) -> Fraction:
    value = self.expr(depth=0)
    if self.peek() is not None:
      raise ParseError(f"trailing input at position {self.pos}")
    return value

  def expr(self, depth: int) -> Fraction:
    value = self.term(depth)
    while self.peek() in ("+", "-"):
      value = value + self.term(depth) if self.take() == "+" else value - self.term(depth)
    return value

  def term(self, depth: int) -> Fraction:
    value = self.factor(depth)
    while self.peek() in ("*", "/"):
      if self.take() == "*":
        value = value * self.factor(depth)
      else:
        divisor = self.factor(depth)
        if divisor == 0:
          raise ParseError("division by zero")
        value = value / divisor
    return value

  def factor(self, depth: int) -> Fraction:
    if depth > 32:
      raise ParseError("parentheses nested too deeply")
    token = self.take()
    if token == "(":
      value = self.expr(depth + 1)
      if self.take() != ")":
        raise ParseError("missing ')'")
      return value
    if token.isdigit():
      if self.peek() is not None and self.peek().isdigit():
        raise ParseError("numbers are single digits")
      self.numbers.append(int(token))
      return Fraction(int(token))
    raise ParseError(f"unexpected {token!r}")


def evaluate(text: str) -> tuple[Fraction, list[int]]:
  """The exact value of an expression and the numbers it uses; raises ParseError."""
  parser = _Parser(text)
  return parser.parse(), parser.numbers


def verify(problem: Problem, text: str) -> bool:
  """True iff `text` uses every number of the problem exactly once and equals the target."""
  try:
    value, used = evaluate(text)
  except ParseError:
    return False
  return sorted(used) == sorted(problem.numbers) and value == problem.target
