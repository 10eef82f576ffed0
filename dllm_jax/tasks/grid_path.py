"""Grid paths: a built-in task where the locally likely move can lead into a dead end.

A problem is a 4 x 5 grid with 0-3 blocked cells and a start cell; an answer is a path that
starts there, moves to an edge-adjacent cell each step and visits every free cell exactly once
(a Hamiltonian path), written as the 16-19 cells after the start, one letter a cell:

    a b c d e
    f g h i j        prompt "e=f": cell e blocked, start at f. Its 22 answers all begin with
    k l m n o        "a": the corner a has two neighbours, so a path that leaves f for g or k
    p q r s t        strands it (it could only be the path's end, and no path ends there).

Problems keep only those with at least 2 answers (3,412 training problems with 36,631 answers,
372 held out; up to 160 answers on the open grid), so Pass@k measures exploration; the training
data is the uniform law over each problem's answers.

Why per-token confidence misleads here. Every rule of a move is local (the next cell is a
neighbour of the last one, not blocked, not yet on the path: each visible from one or two
tokens), but whether a move can still be completed is global: a move that cuts the free cells
into two parts, or leaves a cell with one free neighbour that is not the path's end, leaves no
completion at all, however natural it looks. Under the exact law (uniform over answers) a move's
probability is its share of the completions, so no order of decoding can fail; a model that
learns the local rules and the completion counts only partly puts some probability on moves
that lead nowhere, a per-token rule commits them on their local confidence, and once the walk is
stranded every remaining token has little probability (a revisit, a jump, an early EOS). The
joint probability of the whole path (p^alpha, sequence-level samplers) sees the mass missing
downstream; a per-token score does not.

Measured (`tests/test_grid_path.py`, exact): in 38% of 60 held-out problems a legal first move
has no completion, and a walker that knows only the local rules completes a path with chance
0.077 on average, while one that follows completion counts never fails. On the shipped model
(`experiments/grid_path_dead_ends.py`, README "Grid paths"), 92% of left-to-right sampling's
failures and all of left-to-right greedy's are dead ends; random order fails more often still
(Pass@1 0.25 against low-confidence's 0.86), because it writes cells before the path reaches
them.

The held-out split hashes the problem (SHA-256 with a salt), so a held-out problem is never a
training problem.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
from typing import Sequence

import numpy as np

from dllm_jax.tasks.char_tokenizer import CharTokenizer

CELLS = "abcdefghijklmnopqrst"
SEPARATOR = "="


@dataclasses.dataclass(frozen=True)
class GridPathTask:
  rows: int = 4
  cols: int = 5
  max_blocked: int = 3
  min_answers: int = 2
  heldout_per_mille: int = 100  # share of problems (in 1/1000) reserved for evaluation
  salt: str = "grid-path-v1"

  def __post_init__(self):
    if not (2 <= self.rows and 2 <= self.cols and self.rows * self.cols <= len(CELLS)):
      raise ValueError(f"need 2 <= rows, cols and rows * cols <= {len(CELLS)}, got "
                       f"{self.rows} x {self.cols}")
    if not 0 <= self.max_blocked <= self.rows * self.cols - 3:
      raise ValueError(f"max_blocked must be in [0, {self.rows * self.cols - 3}], got "
                       f"{self.max_blocked}")
    if not 0 < self.heldout_per_mille < 1000:
      raise ValueError(f"heldout_per_mille must be in (0, 1000), got {self.heldout_per_mille}")

  @property
  def num_cells(self) -> int:
    return self.rows * self.cols

  @property
  def prompt_width(self) -> int:
    return self.max_blocked + 2

  @property
  def gen_length(self) -> int:
    """The longest answer: every cell but the start."""
    return self.num_cells - 1

  def tokenizer(self) -> CharTokenizer:
    return CharTokenizer(chars=CELLS[:self.num_cells] + SEPARATOR, vocab_size=24)

  def neighbours(self, cell: int) -> list[int]:
    r, c = divmod(cell, self.cols)
    return [r2 * self.cols + c2 for r2, c2 in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1))
            if 0 <= r2 < self.rows and 0 <= c2 < self.cols]

  # Problems: "<blocked cells, sorted>=<start>".

  def problem_text(self, blocked: Sequence[int], start: int) -> str:
    return "".join(CELLS[b] for b in sorted(blocked)) + SEPARATOR + CELLS[start]

  def parse_problem(self, problem: str) -> tuple[tuple[int, ...], int]:
    blocked, sep, start = problem.partition(SEPARATOR)
    if not sep or len(start) != 1 or len(blocked) > self.max_blocked:
      raise ValueError(f"problem {problem!r} is not '<blocked cells>=<start cell>'")
    cells = [CELLS.index(ch) for ch in blocked + start]
    if any(c >= self.num_cells for c in cells) or len(set(cells)) != len(cells):
      raise ValueError(f"problem {problem!r} names a cell twice or outside the grid")
    return tuple(cells[:-1]), cells[-1]

  def is_heldout(self, problem: str) -> bool:
    digest = hashlib.sha256(f"{self.salt}:{problem}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 1000 < self.heldout_per_mille

  def answers(self, problem: str) -> list[str]:
    """Every Hamiltonian path from the start, as the cells after it (sorted)."""
    return list(_answers(self, problem))

  def verify(self, problem: str, text: str) -> bool:
    """True iff `text` (decoded up to EOS) visits every free cell once from the start, each
    cell edge-adjacent to the one before."""
    blocked, start = self.parse_problem(problem)
    if any(ch not in CELLS[:self.num_cells] for ch in text):
      return False
    path = [start] + [CELLS.index(ch) for ch in text]
    free = set(range(self.num_cells)) - set(blocked)
    return (len(path) == len(free) and set(path) == free and
            all(b in self.neighbours(a) for a, b in zip(path, path[1:])))

  def legal_prefix(self, problem: str, text: str) -> str:
    """The longest prefix of `text` whose every move is legal (onto a free, unvisited cell
    adjacent to the last one)."""
    blocked, start = self.parse_problem(problem)
    visited, last = set(blocked) | {start}, start
    for i, ch in enumerate(text):
      cell = CELLS.index(ch) if ch in CELLS[:self.num_cells] else -1
      if cell < 0 or cell in visited or cell not in self.neighbours(last):
        return text[:i]
      visited.add(cell)
      last = cell
    return text

  def completions(self, problem: str, prefix: str) -> int:
    """How many answers start with `prefix`."""
    return sum(a.startswith(prefix) for a in _answers(self, problem))

  def dead_end(self, problem: str, text: str) -> bool:
    """Whether a failed `text` walked into a dead end: its legal prefix has no completion
    (otherwise it broke a rule while an answer was still reachable)."""
    return not self.verify(problem, text) and self.completions(
        problem, self.legal_prefix(problem, text)) == 0

  def random_problem(self, rng: np.random.Generator) -> str:
    num_blocked = int(rng.integers(0, self.max_blocked + 1))
    cells = rng.permutation(self.num_cells)
    return self.problem_text(cells[:num_blocked].tolist(), int(cells[num_blocked]))

  def problems(self, split: str) -> list[str]:
    """Every problem of `split` with at least `min_answers` answers (about a minute: it
    enumerates the answers of all 23,200 candidate problems of the 4 x 5 grid)."""
    if split not in ("train", "heldout"):
      raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    candidates = (self.problem_text(blocked, start)
                  for k in range(self.max_blocked + 1)
                  for blocked in itertools.combinations(range(self.num_cells), k)
                  for start in range(self.num_cells) if start not in blocked)
    return [p for p in candidates if self.is_heldout(p) == (split == "heldout")
            and len(_answers(self, p)) >= self.min_answers]

  def sample_problems(self, split: str, count: int, seed: int) -> list[str]:
    """`count` distinct problems of `split` ("train" or "heldout") with at least `min_answers`
    answers, reproducible from `seed`: blocked count uniform in 0..max_blocked, then the blocked
    cells and the start uniform. When draws stop finding new problems (the split is small: 372
    held-out problems in all), the rest come from the whole split in a seeded random order."""
    if split not in ("train", "heldout"):
      raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    rng = np.random.default_rng([seed, 1 if split == "heldout" else 0])
    want = split == "heldout"
    problems: dict[str, None] = {}
    tries = 0
    while len(problems) < count:
      tries += 1
      if tries > 200 * count + 10_000:
        rest = [p for p in self.problems(split) if p not in problems]
        if len(problems) + len(rest) < count:
          raise ValueError(f"the {split} split has only {len(problems) + len(rest)} problems; "
                           f"ask for at most that many")
        rng.shuffle(rest)
        problems.update(dict.fromkeys(rest[:count - len(problems)]))
        break
      problem = self.random_problem(rng)
      if problem in problems or self.is_heldout(problem) != want:
        continue
      if len(_answers(self, problem)) >= self.min_answers:
        problems[problem] = None
    return list(problems)


@functools.lru_cache(maxsize=1 << 16)
def _answers(task: GridPathTask, problem: str) -> tuple[str, ...]:
  """Depth-first search over paths from the start, cut where no answer can follow."""
  blocked, start = task.parse_problem(problem)
  free = [c for c in range(task.num_cells) if c not in blocked]
  # The grid is bipartite: a path alternates colours, so the free cells of the start's colour
  # must be half the path's cells, rounded up.
  colour = lambda c: sum(divmod(c, task.cols)) % 2
  same = sum(colour(c) == colour(start) for c in free)
  if same != (len(free) + 1) // 2:
    return ()
  neighbours = [[u for u in task.neighbours(v) if u in free] for v in range(task.num_cells)]
  out: list[str] = []
  path = [start]
  visited = [False] * task.num_cells
  visited[start] = True

  def stranded(head: int) -> bool:
    """More than one unvisited cell with at most one way in or out: all but one of them
    (the path's end) can never be covered."""
    ends = 0
    for c in free:
      if not visited[c]:
        exits = sum(not visited[u] or u == head for u in neighbours[c])
        if exits == 0 or (exits == 1 and (ends := ends + 1) > 1):
          return True
    return False

  def extend(v: int) -> None:
    if len(path) == len(free):
      out.append("".join(CELLS[c] for c in path[1:]))
      return
    for u in neighbours[v]:
      if not visited[u]:
        visited[u] = True
        path.append(u)
        if not stranded(u):
          extend(u)
        path.pop()
        visited[u] = False

  extend(start)
  return tuple(sorted(out))


def encode_prompts(tokenizer: CharTokenizer, task: GridPathTask,
                   problems: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
  """Prompt ids [B, max_blocked + 2] (left-padded) and mask [B, max_blocked + 2]."""
  return tokenizer.encode_prompts(list(problems), task.prompt_width)


@dataclasses.dataclass
class PathBank:
  """Training problems and all their answers as arrays: the answers of problem i are rows
  offsets_N[i] .. offsets_N[i] + counts_N[i] of answers_MG (token ids, EOS-padded)."""

  task: GridPathTask
  problems: list[str]
  prompt_NP: np.ndarray
  prompt_mask_NP: np.ndarray
  offsets_N: np.ndarray
  counts_N: np.ndarray
  answers_MG: np.ndarray

  @classmethod
  def build(cls, task: GridPathTask, problems: Sequence[str] | None = None) -> PathBank:
    """The bank of `problems` (default: every training problem)."""
    tokenizer = task.tokenizer()
    problems = task.problems("train") if problems is None else list(problems)
    answers = [task.answers(p) for p in problems]
    counts_N = np.array([len(a) for a in answers], np.int64)
    prompt_NP, prompt_mask_NP = encode_prompts(tokenizer, task, problems)
    return cls(task=task, problems=problems, prompt_NP=prompt_NP, prompt_mask_NP=prompt_mask_NP,
               offsets_N=np.concatenate([[0], np.cumsum(counts_N)[:-1]]), counts_N=counts_N,
               answers_MG=tokenizer.encode_answers([a for group in answers for a in group],
                                                   task.gen_length))

  def sample_batch(self, rng: np.random.Generator,
                   batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(prompt_BP, prompt_mask_BP, answer_BG): problems uniformly, then one of each problem's
    answers uniformly."""
    index_B = rng.integers(len(self.problems), size=batch_size)
    pick_B = self.offsets_N[index_B] + (rng.random(batch_size) *
                                        self.counts_N[index_B]).astype(np.int64)
    return self.prompt_NP[index_B], self.prompt_mask_NP[index_B], self.answers_MG[pick_B]
