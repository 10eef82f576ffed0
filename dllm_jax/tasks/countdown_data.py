"""Countdown as token arrays: prompt/answer encoding and the training-batch sampler.

Prompt text: the numbers, '=', the target, e.g. "4743=44" (numbers are single digits), left-padded
to `prompt_width`. Answer: the expression, right-padded with EOS to `gen_length`
(= the task's longest answer), e.g. "4*(7+4)" + 4 x EOS.

`AnswerBank` holds every valid answer of every training problem, so a batch is drawn in a few
vectorised numpy operations: a problem uniformly at random, its numbers in a random order, and
one of its valid answers uniformly at random (so the model learns all of them, not one).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from dllm_jax.tasks.char_tokenizer import CharTokenizer
from dllm_jax.tasks.countdown import CountdownTask, Problem, enumerate_expressions


def prompt_text(problem: Problem) -> str:
  return "".join(map(str, problem.numbers)) + "=" + str(problem.target)


def prompt_width(task: CountdownTask) -> int:
  return task.num_numbers + 1 + len(str(task.max_target))


def gen_length(task: CountdownTask) -> int:
  return task.max_answer_length


def encode_prompts(tokenizer: CharTokenizer, task: CountdownTask,
                   problems: Sequence[Problem]) -> tuple[np.ndarray, np.ndarray]:
  """Prompt ids [B, P] and mask [B, P] for `problems`."""
  return tokenizer.encode_prompts([prompt_text(p) for p in problems], prompt_width(task))


@dataclasses.dataclass
class AnswerBank:
  """All training problems (numbers sorted) and all their valid answers, as arrays.

  numbers_Nn [N, n], targets_N [N]; the answers of problem i are rows
  offsets_N[i] .. offsets_N[i] + counts_N[i] of answers_MG [M, G] (token ids, EOS-padded).
  """

  task: CountdownTask
  tokenizer: CharTokenizer
  numbers_Nn: np.ndarray
  targets_N: np.ndarray
  offsets_N: np.ndarray
  counts_N: np.ndarray
  answers_MG: np.ndarray

  @classmethod
  def build(cls, task: CountdownTask, tokenizer: CharTokenizer,
            split: str = "train") -> AnswerBank:
    """Enumerates every expression of every multiset once (about half a minute for 4 numbers)."""
    want_heldout = split == "heldout"
    G = gen_length(task)
    numbers, targets, counts, texts = [], [], [], []
    for multiset in task.multisets():
      by_target: dict[int, list[str]] = {}
      for text, value in enumerate_expressions(multiset):
        if value.denominator == 1 and task.min_target <= value <= task.max_target:
          by_target.setdefault(int(value), []).append(text)
      for target in sorted(by_target):
        if task.is_heldout(Problem(multiset, target)) != want_heldout:
          continue
        numbers.append(multiset)
        targets.append(target)
        counts.append(len(by_target[target]))
        texts.extend(sorted(by_target[target]))
    counts_N = np.asarray(counts, np.int64)
    return cls(task=task, tokenizer=tokenizer, numbers_Nn=np.asarray(numbers, np.int32),
               targets_N=np.asarray(targets, np.int32),
               offsets_N=np.concatenate([[0], np.cumsum(counts_N)[:-1]]), counts_N=counts_N,
               answers_MG=tokenizer.encode_answers(texts, G))

  @property
  def num_problems(self) -> int:
    return len(self.targets_N)

  def problem(self, i: int) -> Problem:
    return Problem(tuple(int(x) for x in self.numbers_Nn[i]), int(self.targets_N[i]))

  def sample_batch(self, rng: np.random.Generator,
                   batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(prompt_BP, prompt_mask_BP, answer_BG): random problems, shuffled numbers, and one
    uniformly drawn valid answer each."""
    tok, task = self.tokenizer, self.task
    index_B = rng.integers(self.num_problems, size=batch_size)
    order_Bn = np.argsort(rng.random((batch_size, task.num_numbers)), axis=-1)
    numbers_Bn = np.take_along_axis(self.numbers_Nn[index_B], order_Bn, axis=-1)
    pick_B = self.offsets_N[index_B] + (rng.random(batch_size) * self.counts_N[index_B]).astype(
        np.int64)
    answer_BG = self.answers_MG[pick_B]
    problems = [Problem(tuple(row), int(t)) for row, t in
                zip(numbers_Bn.tolist(), self.targets_N[index_B])]
    prompt_BP, prompt_mask_BP = encode_prompts(tok, task, problems)
    return prompt_BP, prompt_mask_BP, answer_BG

