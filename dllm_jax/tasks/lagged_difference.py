"""Lagged differences: a built-in task whose answer (up to 32 tokens) is easy only in order.

A problem is a seed of `lag` digits (lag = 8). The answer continues the sequence
x_j = |x_{j-1} - x_{j-lag}| past the seed, one digit a token, up to and including its first 0
(at most `gen_length` = 32 digits), then EOS padding to 32 tokens. With the seed
x_1..x_8 = "31415926": x_9 = |6 - 3| = 3, x_10 = |3 - 1| = 2, x_11 = |2 - 4| = 2, ...,
x_16 = |3 - 6| = 3, x_17 = |3 - 3| = 0, so the answer is "322145330".

Why this task: given the answer to its left, each token is one look-up at fixed distances (1
and 8 back), so left-to-right decoding is easy; without it, the j-th digit is a nest of up to j
differences, which a small model cannot unroll in one pass. Where the answer ends is just as
hidden (a 0 comes where two digits 7 apart in the sequence are equal), so before the answer is
written a late position is EOS with high but not full confidence (`tests/test_lagged_difference.py`
measures the law). A confidence rule that may commit anywhere (full diffusion) therefore writes
EOS early at positions long answers need, while one held to semi-autoregressive blocks reaches
them only after the answer before them: the setting of Jazbec, Olausson et al., where confidence
heuristics lose accuracy in full diffusion.

Each digit alone says something about the next one (|a - b| is near b when a is small). With
rules where neither does, the tiny model stalled: (x_{j-1} + x_{j-8}) mod 10 left its first
answer digit at chance after 250 steps, and mirroring x_{j-8} when x_{j-1} >= 5 left it at 0.5
(x_{j-8} found, the mirror not) after 750.

The held-out split hashes the seed (SHA-256 with a salt), so a held-out problem is never a
training example. The prompt is the seed itself (`lag` tokens, no padding).
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Sequence

import numpy as np

from dllm_jax.tasks.char_tokenizer import CharTokenizer


@dataclasses.dataclass(frozen=True)
class LaggedDifferenceTask:
  lag: int = 8
  gen_length: int = 32
  heldout_per_mille: int = 100  # share of seeds (in 1/1000) reserved for evaluation
  salt: str = "lagged-difference-v1"

  def __post_init__(self):
    if not 2 <= self.lag <= 32 or not 1 <= self.gen_length <= 256:
      raise ValueError(f"need 2 <= lag <= 32 and 1 <= gen_length <= 256, got lag={self.lag}, "
                       f"gen_length={self.gen_length}")
    if not 0 < self.heldout_per_mille < 1000:
      raise ValueError(f"heldout_per_mille must be in (0, 1000), got {self.heldout_per_mille}")

  @property
  def prompt_width(self) -> int:
    return self.lag

  def is_heldout(self, seed: str) -> bool:
    digest = hashlib.sha256(f"{self.salt}:{seed}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 1000 < self.heldout_per_mille

  def sample(self, split: str, count: int, rng: np.random.Generator) -> list[str]:
    """`count` uniform seeds of `split` ("train" or "heldout"), by rejection on the hash."""
    if split not in ("train", "heldout"):
      raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    want = split == "heldout"
    out: list[str] = []
    while len(out) < count:
      draws = (count - len(out)) * (12 if want else 2) + 8
      seeds = ("".join(map(str, row)) for row in rng.integers(0, 10, (draws, self.lag)).tolist())
      out.extend(s for s in seeds if self.is_heldout(s) == want)
    return out[:count]

  def sample_problems(self, split: str, count: int, seed: int) -> list[str]:
    """`count` distinct seeds of `split`, reproducible from `seed`."""
    rng = np.random.default_rng([seed, 1 if split == "heldout" else 0])
    problems: dict[str, None] = {}
    while len(problems) < count:
      problems.update(dict.fromkeys(self.sample(split, count - len(problems), rng)))
    return list(problems)[:count]

  def answer(self, seed: str) -> str:
    """The digits after the seed up to and including the first 0 (at most gen_length)."""
    x = [int(c) for c in seed]
    out = []
    while len(out) < self.gen_length:
      x.append(abs(x[-1] - x[-self.lag]))
      out.append(str(x[-1]))
      if x[-1] == 0:
        break
    return "".join(out)

  def verify(self, seed: str, text: str) -> bool:
    """True iff `text` (decoded up to EOS) is exactly the answer."""
    return text == self.answer(seed)


def encode_prompts(tokenizer: CharTokenizer, task: LaggedDifferenceTask,
                   problems: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
  """Prompt ids [B, lag] and mask [B, lag] (all True)."""
  return tokenizer.encode_prompts(list(problems), task.prompt_width)


def sample_batch(task: LaggedDifferenceTask, tokenizer: CharTokenizer, rng: np.random.Generator,
                 batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(prompt_BP, prompt_mask_BP, answer_BG) of random training problems."""
  problems = task.sample("train", batch_size, rng)
  prompt_BP, mask_BP = encode_prompts(tokenizer, task, problems)
  return prompt_BP, mask_BP, tokenizer.encode_answers([task.answer(p) for p in problems],
                                                       task.gen_length)
