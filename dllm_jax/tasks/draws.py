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


class Progress:
  """One stderr line with the samples done, the sampler and an ETA."""

  def __init__(self, total_rows: int):
    self.total, self.done, self.start = total_rows, 0, time.time()

  def update(self, rows: int, label: str) -> None:
    self.done += rows
    elapsed = time.time() - self.start
    eta = elapsed / self.done * (self.total - self.done)
    sys.stderr.write(f"\r[{self.done}/{self.total} samples] {label[:28]:28s} elapsed "
                     f"{elapsed:5.0f}s  ETA {eta:5.0f}s ")
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
      progress.update(min(batch_rows, rows - lo), label)
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
