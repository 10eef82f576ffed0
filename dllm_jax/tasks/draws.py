"""n samples per problem from one sampler on a built-in model, graded: the input of every sampler
comparison (`dllm_jax.eval.compare`).

Every (problem, sample) row has its own key, all rows of a sampler run in a few large batches of
one compiled `generate` (padded to full batches: one compiled shape), and answers are checked by
the task's exact verifier. The answer kept for diversity is the decoded text up to EOS.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from typing import Sequence

import jax
import numpy as np

from dllm_jax import models, sampling
from dllm_jax.eval import compare
from dllm_jax.tasks.builtin import BuiltinModel


@dataclasses.dataclass(frozen=True)
class Draw:
  samples: compare.Samples
  seconds: float                  # decoding wall time, compilation included
  neg_logprob_per_token: float    # mean -log p of committed tokens (not an entropy)


def forward_passes_per_row(sampler: sampling.Sampler) -> int:
  """A row's forward passes, estimated before decoding (the ETA's weights): one per step; K per
  step for IMH (its K candidates are scored in one pass over K canvases) and P per step for SMC,
  plus the first step's own pass. RolloutIMH adds its rollouts as if one token were committed
  per step (`rollout_imh`'s cost formula: exact then)."""
  steps, rule = sampler.total_steps, sampler.remasking
  if isinstance(rule, sampling.RolloutIMH):
    if rule.num_candidates == 1:  # no chain, so no rollouts
      return 1 + steps
    c = rule.rollout_tokens_per_step
    rollouts = sum(max(-(-masked // c) - 1, 0) for masked in range(steps))
    return 1 + rule.num_candidates * (steps + rule.num_rollouts * rollouts)
  if isinstance(rule, sampling.IMH):
    return 1 + rule.num_candidates * steps
  if isinstance(rule, sampling.SMC):
    return 1 + rule.num_particles * steps
  return steps


class Progress:
  """One stderr line with the samples done, the sampler and an ETA that weighs each row by its
  forward passes: an IMH row costs about K times a baseline's, so a count of rows alone would
  promise the end too early (it said 25 s at 124 s of a run that took 201 s)."""

  def __init__(self, total_rows: int = 0, total_cost: float = 0.0, clock=time.time):
    self.total, self.done, self.clock = total_rows, 0, clock
    self.total_cost, self.done_cost, self.start = total_cost, 0.0, clock()

  def add(self, rows: int, cost_per_row: float) -> None:
    self.total += rows
    self.total_cost += rows * cost_per_row

  def eta(self) -> float:
    elapsed = self.clock() - self.start
    return elapsed / max(self.done_cost, 1e-9) * (self.total_cost - self.done_cost)

  def update(self, rows: int, label: str, cost_per_row: float = 1.0) -> None:
    self.done += rows
    self.done_cost += rows * cost_per_row
    elapsed = self.clock() - self.start
    sys.stderr.write(f"\r[{self.done}/{self.total} samples] {label[:28]:28s} elapsed "
                     f"{elapsed:5.0f}s  ETA {self.eta():5.0f}s ")
    if self.done >= self.total:
      sys.stderr.write("\n")
    sys.stderr.flush()


def draw(model: BuiltinModel, sampler: sampling.Sampler, problems: Sequence, samples: int,
         batch_rows: int, seed: int, label: str = "", baseline: bool = False,
         progress: Progress | None = None) -> Draw:
  """`samples` draws per problem, graded, as `compare.Samples` (rows in the order of
  `problems`)."""
  if samples < 1 or batch_rows < 1 or not problems:
    raise ValueError(f"need problems, samples >= 1 and batch_rows >= 1, got {len(problems)}, "
                     f"{samples}, {batch_rows}")
  prompt, mask = model.encode_prompts(problems)
  prompt, mask = np.repeat(prompt, samples, 0), np.repeat(mask, samples, 0)
  rows = len(prompt)
  keys = jax.random.split(jax.random.key(seed), rows)
  batch_rows = min(batch_rows, rows)
  pad = -rows % batch_rows
  prompt, mask = np.concatenate([prompt, prompt[:pad]]), np.concatenate([mask, mask[:pad]])
  keys = jax.numpy.concatenate([keys, keys[:pad]])
  denoise = models.make_denoise(model.config)
  generated, nfe, logprob = [], [], []
  start = time.time()
  for lo in range(0, rows + pad, batch_rows):
    out = jax.block_until_ready(sampling.generate(
        sampler, denoise, model.params, prompt[lo:lo + batch_rows], mask[lo:lo + batch_rows],
        keys[lo:lo + batch_rows]))
    generated.append(np.asarray(out.generated_BG))
    nfe.append(np.asarray(out.nfe_B))
    logprob.append(np.asarray(out.logprob_BG))
    if progress:
      progress.update(min(batch_rows, rows - lo), label, forward_passes_per_row(sampler))
  seconds = time.time() - start
  generated_NG = np.concatenate(generated)[:rows]
  correct = np.array([model.verify(problems[i // samples], g) for i, g in enumerate(generated_NG)])
  texts = [model.tokenizer.decode(g).strip() or None for g in generated_NG]
  answers = np.empty(rows, dtype=object)
  answers[:] = texts
  result = compare.Samples(
      label=label, correct_PN=correct.reshape(len(problems), samples),
      nfe=float(np.concatenate(nfe)[:rows].mean()),
      answers_PN=answers.reshape(len(problems), samples), baseline=baseline)
  neg_logprob = float(-np.concatenate(logprob)[:rows].mean())
  return Draw(result, seconds, neg_logprob)
