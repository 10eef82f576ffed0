"""The main demo: the shipped Countdown model decoded by random, low-confidence and IMH sampling
on held-out problems, n samples each, reported as Pass@k with NFE and wall time; optionally also
the position-first rules TPP (RankThenSample) and EGI.

Every (problem, sample) row has its own key, all rows of a sampler run in a few large batches of
one compiled `generate`, and answers are checked by the exact verifier of `countdown`.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sys
import time
from typing import Any, Sequence

import jax
import numpy as np

from dllm_jax import models, sampling
from dllm_jax.eval import pass_at_k, report
from dllm_jax.tasks import builtin, countdown, countdown_data
from dllm_jax.tasks.builtin import BuiltinModel

BUILTIN = builtin.COUNTDOWN


def load_builtin(path: str | pathlib.Path = BUILTIN) -> BuiltinModel:
  """A built-in Countdown model (the shipped one by default)."""
  model = builtin.load_builtin(path)
  if not isinstance(model.task, countdown.CountdownTask):
    raise ValueError(f"{path} holds a model of another task ({type(model.task).__name__}); "
                     "the Countdown demo needs a Countdown model")
  return model


def default_samplers(model: BuiltinModel, temperature: float = 1.0, alpha: float = 2.0,
                     num_candidates: int = 8) -> dict[str, sampling.Sampler]:
  """The demo's samplers: one token per step, the baselines at `temperature`."""
  base = sampling.Sampler.for_model(model.config, gen_length=countdown_data.gen_length(model.task))
  return {
      f"random T={temperature:g}": base.replace(remasking=sampling.Random(),
                                                 temperature=temperature),
      f"low-confidence T={temperature:g}": base.replace(remasking=sampling.LowConfidence(),
                                                         temperature=temperature),
      f"IMH alpha={alpha:g} K={num_candidates}": base.replace(
          remasking=sampling.IMH(alpha=alpha, num_candidates=num_candidates)),
  }


def position_first_samplers(model: BuiltinModel, temperature: float = 1.0,
                            egi_first_temperature: float | None = None
                            ) -> dict[str, sampling.Sampler]:
  """TPP and EGI at the baselines' temperature. EGI's first step is 1.5x hotter by default (the
  ratio of Jeon et al.'s 0.9 first step to their 0.6 afterwards)."""
  first = 1.5 * temperature if egi_first_temperature is None else egi_first_temperature
  base = sampling.Sampler.for_model(model.config, gen_length=countdown_data.gen_length(model.task),
                                    temperature=temperature)
  return {f"TPP T={temperature:g}": base.replace(remasking=sampling.RankThenSample()),
          f"EGI T={first:g} then {temperature:g}": base.replace(
              remasking=sampling.EGI(first_temperature=first))}


def position_first_checks(summaries: Sequence[report.RunSummary]) -> list[tuple[str, bool]]:
  """Jeon et al.'s claims on (random, low-confidence, IMH..., TPP, EGI): TPP explores more than
  low-confidence (higher Pass@k at the largest k) and EGI at least as much as TPP."""
  lowc, tpp, egi = summaries[1], summaries[-2], summaries[-1]
  k = max(tpp.pass_at)
  return [(f"TPP Pass@{k} {tpp.pass_at[k]:.3f} > low-confidence's {lowc.pass_at[k]:.3f}",
           tpp.pass_at[k] > lowc.pass_at[k]),
          (f"EGI Pass@{k} {egi.pass_at[k]:.3f} >= TPP's {tpp.pass_at[k]:.3f}",
           egi.pass_at[k] >= tpp.pass_at[k])]


def forward_passes_per_row(sampler: sampling.Sampler) -> int:
  """A row's forward passes (its NFE): one per step, K per step for IMH (its K candidates are
  scored in one pass over K canvases) plus the first step's own pass."""
  steps = sampler.total_steps
  if isinstance(sampler.remasking, sampling.IMH):
    return 1 + sampler.remasking.num_candidates * steps
  return steps


class _Progress:
  """Samples done and an ETA that weights each row by its forward passes: an IMH row costs
  about K times a baseline's, so a count of rows alone would promise the end too early."""

  def __init__(self, total_rows: int, total_cost: float, clock=time.time):
    self.total, self.done, self.clock = total_rows, 0, clock
    self.total_cost, self.done_cost, self.start = total_cost, 0.0, clock()

  def eta(self) -> float:
    elapsed = self.clock() - self.start
    return elapsed / self.done_cost * (self.total_cost - self.done_cost)

  def update(self, rows: int, label: str, cost_per_row: float = 1.0) -> None:
    self.done += rows
    self.done_cost += rows * cost_per_row
    elapsed = self.clock() - self.start
    sys.stderr.write(f"\r[{self.done}/{self.total} samples] {label:28s} elapsed {elapsed:5.0f}s"
                     f"  ETA {self.eta():5.0f}s ")
    if self.done == self.total:
      sys.stderr.write("\n")
    sys.stderr.flush()


def evaluate(model: BuiltinModel, sampler: sampling.Sampler, problems: Sequence,
             samples: int, batch_rows: int, seed: int, progress: _Progress | None = None,
             label: str = "") -> dict[str, Any]:
  """Correctness [problems, samples] and per-sample statistics of one sampler."""
  prompt, mask = countdown_data.encode_prompts(model.tokenizer, model.task, problems)
  prompt, mask = np.repeat(prompt, samples, 0), np.repeat(mask, samples, 0)
  rows = len(prompt)
  keys = jax.random.split(jax.random.key(seed), rows)
  batch_rows = min(batch_rows, rows)
  pad = -rows % batch_rows  # full batches only: one compiled shape
  prompt, mask = np.concatenate([prompt, prompt[:pad]]), np.concatenate([mask, mask[:pad]])
  keys = jax.numpy.concatenate([keys, keys[:pad]])
  denoise = models.make_denoise(model.config)
  generated, nfe, neg_logprob = [], [], []
  start = time.time()
  for lo in range(0, rows + pad, batch_rows):
    out = jax.block_until_ready(sampling.generate(
        sampler, denoise, model.params, prompt[lo:lo + batch_rows], mask[lo:lo + batch_rows],
        keys[lo:lo + batch_rows]))
    generated.append(np.asarray(out.generated_BG))
    nfe.append(np.asarray(out.nfe_B))
    neg_logprob.append(-np.asarray(out.logprob_BG).mean(-1))
    if progress:
      progress.update(min(batch_rows, rows - lo), label, forward_passes_per_row(sampler))
  seconds = time.time() - start
  texts = [model.tokenizer.decode(g) for g in np.concatenate(generated)[:rows]]
  correct = np.array([countdown.verify(problems[i // samples], text)
                      for i, text in enumerate(texts)]).reshape(len(problems), samples)
  answers = np.array(texts, dtype=object).reshape(len(problems), samples)
  return {"correct": correct, "answers": answers, "seconds": seconds,
          "nfe": float(np.concatenate(nfe)[:rows].mean()),
          "neg_logprob": float(np.concatenate(neg_logprob)[:rows].mean())}


def summary(label: str, result: dict[str, Any]) -> report.RunSummary:
  correct = result["correct"]
  problems, samples = correct.shape
  distinct = [len(set(row)) for row in result["answers"]]
  return report.RunSummary(
      label=label, benchmark="countdown (held-out)", problems=problems, samples=samples,
      pass_at=pass_at_k.mean_pass_at_k(correct), mean_nfe=result["nfe"],
      seconds_per_sample=result["seconds"] / correct.size,
      distinct_answers=float(np.mean(distinct)), entropy_estimate=result["neg_logprob"])


def dilemma_checks(summaries: Sequence[report.RunSummary]) -> list[tuple[str, bool]]:
  """The three claims of the demo, measured on these runs (random, low-confidence, IMH...)."""
  rand, lowc, *imh = summaries
  k = max(rand.pass_at)
  gain = lambda s: s.pass_at[k] - s.pass_at[1]
  return [
      (f"low-confidence Pass@1 {lowc.pass_at[1]:.3f} > random Pass@1 {rand.pass_at[1]:.3f}",
       lowc.pass_at[1] > rand.pass_at[1]),
      (f"random gains more from k=1 to {k} ({gain(rand):+.3f}) than low-confidence "
       f"({gain(lowc):+.3f})", gain(rand) > gain(lowc)),
  ] + [(f"{s.label}: Pass@1 {s.pass_at[1]:.3f} >= random's {rand.pass_at[1]:.3f} and Pass@{k} "
        f"{s.pass_at[k]:.3f} >= low-confidence's {lowc.pass_at[k]:.3f}",
        s.pass_at[1] >= rand.pass_at[1] and s.pass_at[k] >= lowc.pass_at[k]) for s in imh]


def run_demo(out_dir: str | pathlib.Path, num_problems: int = 200, samples: int = 16,
             batch_rows: int = 800, seed: int = 0, temperature: float = 1.0, alpha: float = 2.0,
             num_candidates: int = 8, model_path: str | pathlib.Path = BUILTIN,
             position_first: bool = False, egi_first_temperature: float | None = None
             ) -> dict[str, Any]:
  """Runs the demo, prints the table and the claim checks, writes results.json and a plot."""
  start = time.time()
  model = load_builtin(model_path)
  problems = model.task.sample_problems("heldout", num_problems, seed=seed)
  samplers = default_samplers(model, temperature, alpha, num_candidates)
  if position_first:
    samplers.update(position_first_samplers(model, temperature, egi_first_temperature))
  rows = num_problems * samples
  progress = _Progress(len(samplers) * rows,
                       sum(rows * forward_passes_per_row(s) for s in samplers.values()))
  summaries, wall = [], {}
  for index, (label, sampler) in enumerate(samplers.items()):
    result = evaluate(model, sampler, problems, samples, batch_rows, seed + 1 + index, progress,
                      label)
    wall[label] = result["seconds"]
    summaries.append(summary(label, result))
  table = report.markdown(summaries)
  checks = dilemma_checks(summaries[:3])
  if position_first:
    checks += position_first_checks(summaries)
  print(f"\n{num_problems} held-out Countdown problems ({model.task.num_numbers} numbers), "
        f"{samples} samples each, {models.param_count(model.params):,}-parameter model\n")
  print(table)
  print("wall time per sampler: " + ", ".join(f"{k} {v:.1f}s" for k, v in wall.items()))
  for text, holds in checks:
    print(f"[{'holds' if holds else 'does NOT hold'}] {text}")
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  plots = report.plot(summaries, out_dir)
  results = {"problems": num_problems, "samples": samples, "seed": seed,
             "runs": [dataclasses.asdict(s) for s in summaries], "wall_seconds": wall,
             "checks": [{"claim": t, "holds": h} for t, h in checks],
             "total_seconds": time.time() - start, "plots": [str(p) for p in plots]}
  (out_dir / "results.json").write_text(json.dumps(results, indent=2))
  (out_dir / "table.md").write_text(table)
  print(f"wrote {out_dir / 'results.json'} and {', '.join(map(str, plots))} "
        f"({results['total_seconds']:.0f} s in all)")
  return results
