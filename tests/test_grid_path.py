"""The grid-path task: answers against a brute-force enumeration, the verifier, the split, the
batches, and the dead ends that make local decoding fail (measured exactly)."""

import itertools
from fractions import Fraction

import numpy as np
import pytest

from dllm_jax.tasks import builtin
from dllm_jax.tasks import grid_path as gp

TASK = gp.GridPathTask()
SMALL = gp.GridPathTask(rows=3, cols=3, max_blocked=1)


def _brute_force_answers(task: gp.GridPathTask, problem: str) -> set[str]:
  """Every ordering of the free cells that starts at the start and moves to a neighbour."""
  blocked, start = task.parse_problem(problem)
  free = [c for c in range(task.num_cells) if c not in blocked and c != start]
  out = set()
  for order in itertools.permutations(free):
    path = (start,) + order
    if all(abs(a // task.cols - b // task.cols) + abs(a % task.cols - b % task.cols) == 1
           for a, b in zip(path, path[1:])):
      out.add("".join(gp.CELLS[c] for c in order))
  return out


def test_answers_match_brute_force_and_verify():
  for problem in ("=a", "=b", "=e", "b=a", "e=a", "e=i", "a=e"):
    expected = _brute_force_answers(SMALL, problem)
    assert set(SMALL.answers(problem)) == expected, problem
    assert all(SMALL.verify(problem, a) for a in expected)
  assert len(SMALL.answers("=a")) == 8 and len(SMALL.answers("=b")) == 0  # parity: b is an odd cell
  answers = TASK.answers("e=f")
  assert len(answers) == 22 and all(a.startswith("a") for a in answers)
  assert TASK.completions("e=f", "a") == 22 and TASK.completions("e=f", "g") == 0


def test_verifier_rejects_every_broken_rule():
  problem, answer = "e=f", TASK.answers("e=f")[0]
  assert TASK.verify(problem, answer)
  broken = {"short": answer[:-1], "long": answer + answer[0], "revisit": answer[:-1] + answer[0],
            "blocked cell": answer[:-1] + "e", "start again": "f" + answer[1:],
            "jump": answer[1:] + answer[0], "foreign": answer[:-1] + "=", "empty": ""}
  for name, text in broken.items():
    assert not TASK.verify(problem, text), name
  assert TASK.legal_prefix(problem, answer[:5] + "e" + answer[6:]) == answer[:5]
  assert TASK.dead_end(problem, "gbcd") and not TASK.dead_end(problem, "abcdz")
  with pytest.raises(ValueError, match="not '<blocked cells>=<start cell>'"):
    TASK.parse_problem("ab")
  with pytest.raises(ValueError, match="twice or outside"):
    TASK.parse_problem("aa=b")


def test_split_is_disjoint_reproducible_and_about_a_tenth():
  held = TASK.sample_problems("heldout", 60, seed=0)
  assert len(set(held)) == 60 and all(TASK.is_heldout(p) for p in held)
  assert held == TASK.sample_problems("heldout", 60, seed=0)
  train = TASK.sample_problems("train", 60, seed=0)
  assert not set(train) & set(held) and not any(TASK.is_heldout(p) for p in train)
  assert all(len(TASK.answers(p)) >= 2 for p in train + held)
  everything = [TASK.problem_text(b, s) for k in range(3) for b in
                itertools.combinations(range(20), k) for s in range(20) if s not in b]
  share = np.mean([TASK.is_heldout(p) for p in everything])
  assert abs(share - 0.1) < 5 * np.sqrt(0.09 / len(everything))
  small = {"train": SMALL.problems("train"), "heldout": SMALL.problems("heldout")}
  candidates = [SMALL.problem_text(b, s) for k in range(2) for b in
                itertools.combinations(range(9), k) for s in range(9) if s not in b]
  assert sorted(small["train"] + small["heldout"]) == sorted(
      p for p in candidates if len(_brute_force_answers(SMALL, p)) >= 2)
  assert all(SMALL.is_heldout(p) for p in small["heldout"]) and small["heldout"]
  every_train = SMALL.sample_problems("train", len(small["train"]), seed=0)  # exhausts the split
  assert sorted(every_train) == sorted(small["train"])
  with pytest.raises(ValueError, match=f"has only {len(small['train'])} problems"):
    SMALL.sample_problems("train", len(small["train"]) + 1, seed=0)
  with pytest.raises(ValueError, match="split"):
    TASK.sample_problems("test", 1, seed=0)


def test_bank_batches_are_uniform_over_each_problems_answers():
  bank = gp.PathBank.build(SMALL, SMALL.sample_problems("train", 3, seed=0))
  tokenizer = SMALL.tokenizer()
  prompt, mask, answer = bank.sample_batch(np.random.default_rng(0), 6000)
  assert prompt.shape == (6000, SMALL.prompt_width) and answer.shape == (6000, 8)
  seen: dict[str, list[str]] = {}
  for p_row, m_row, a_row in zip(prompt, mask, answer):
    problem = tokenizer.decode(p_row[m_row])
    assert problem in bank.problems and SMALL.verify(problem, tokenizer.decode(a_row))
    seen.setdefault(problem, []).append(tokenizer.decode(a_row))
  for problem, drawn in seen.items():  # each answer's share is 1 / count, within 5 SE
    count = len(SMALL.answers(problem))
    for a in SMALL.answers(problem):
      share, p = drawn.count(a) / len(drawn), 1 / count
      assert abs(share - p) < 5 * np.sqrt(p * (1 - p) / len(drawn)), (problem, a)


def _walker_success(task: gp.GridPathTask, problem: str) -> Fraction:
  """Exact chance that a walker moving uniformly to a legal next cell (the local rules, nothing
  else) completes an answer: the sum over answers of the product of 1 / (legal moves)."""
  blocked, start = task.parse_problem(problem)
  total = Fraction(0)
  for answer in task.answers(problem):
    visited, last, p = set(blocked) | {start}, start, Fraction(1)
    for ch in answer:
      legal = [u for u in task.neighbours(last) if u not in visited]
      p /= len(legal)
      last = gp.CELLS.index(ch)
      visited.add(last)
    total += p
  return total


def test_local_rules_alone_dead_end_most_of_the_time_and_counts_never_do():
  """The measured trap. On 60 held-out problems, a walker that knows only the local rules
  completes a path with chance 0.077 on average (exact; a simulation agrees), and 38% of
  problems have a legal first move with no completion at all; a walker that follows completion
  counts (the exact law's own conditionals, argmax) never fails."""
  problems = TASK.sample_problems("heldout", 60, seed=0)
  exact = [float(_walker_success(TASK, p)) for p in problems]
  rng = np.random.default_rng(0)
  simulated = []
  for problem in problems[:20]:
    blocked, start = TASK.parse_problem(problem)
    wins = 0
    for _ in range(300):
      visited, last, text = set(blocked) | {start}, start, ""
      while legal := [u for u in TASK.neighbours(last) if u not in visited]:
        last = legal[rng.integers(len(legal))]
        visited.add(last)
        text += gp.CELLS[last]
      wins += TASK.verify(problem, text)
    simulated.append(wins / 300)
  assert abs(np.mean(simulated) - np.mean(exact[:20])) < 5 * np.sqrt(0.25 / 6000)
  assert 0.06 < np.mean(exact) < 0.095
  first_move_dead = []
  for problem in problems:
    blocked, start = TASK.parse_problem(problem)
    moves = [gp.CELLS[u] for u in TASK.neighbours(start) if u not in blocked]
    first_move_dead.append(min(TASK.completions(problem, m) for m in moves) == 0)
    text = ""  # argmax of the completion counts, move by move
    while len(text) < TASK.num_cells - 1 - len(blocked):
      text += max(gp.CELLS[:TASK.num_cells], key=lambda c: TASK.completions(problem, text + c))
    assert TASK.verify(problem, text), problem
  assert 0.3 < np.mean(first_move_dead) < 0.46


def test_builtin_record_and_tokenizer_round_trip():
  assert builtin.task_from_record(builtin.task_record(TASK)) == TASK
  tokenizer = builtin.task_tokenizer(TASK)
  ids, mask = tokenizer.encode_prompts(["e=f"], TASK.prompt_width)
  assert tokenizer.decode(ids[0][mask[0]]) == "e=f" and mask[0].sum() == 3
  answer = TASK.answers("e=f")[0]
  assert tokenizer.decode(tokenizer.encode_answers([answer], TASK.gen_length)[0]) == answer
