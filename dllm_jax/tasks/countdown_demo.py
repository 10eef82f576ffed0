"""The main demo: the shipped Countdown model decoded on held-out problems by the free baselines
(random and low-confidence remasking, random at temperature 1/alpha, TPP, EGI) and by IMH, n
samples each, compared as DESIGN §15 asks (`dllm_jax.eval.compare`): Pass@k with paired bootstrap
SEs, NFE beside every number, answer diversity, and verdicts: the dilemma's claims as paired
differences, every sampler against the hull of the other baselines and their mixtures at
compute-matched k. `experiments/tradeoff.py` is the full comparison (more samplers, and enough
baseline samples that compute-matched Pass@k is measured rather than bounded).
"""

from __future__ import annotations

import pathlib
import time
from typing import Any


from dllm_jax import models, sampling
from dllm_jax.eval import compare
from dllm_jax.tasks import builtin, countdown, countdown_data, tradeoff
from dllm_jax.tasks.builtin import BuiltinModel

BUILTIN = builtin.COUNTDOWN


def load_builtin(path: str | pathlib.Path = BUILTIN) -> BuiltinModel:
  """A built-in Countdown model (the shipped one by default)."""
  model = builtin.load_builtin(path)
  if not isinstance(model.task, countdown.CountdownTask):
    raise ValueError(f"{path} holds a model of another task ({type(model.task).__name__}); "
                     "the Countdown demo needs a Countdown model")
  return model


def baseline_samplers(model: BuiltinModel, temperature: float = 1.0, alpha: float = 2.0,
                      egi_first_temperature: float | None = None) -> dict[str, sampling.Sampler]:
  """The free baselines, one token per step: random and low-confidence remasking, TPP and EGI at
  `temperature` (EGI's first step 1.5x hotter by default: Jeon et al.'s 0.9 to 0.6), and random
  order at temperature 1/alpha (per-token tempering, IMH's K = 1 without its extra forward)."""
  first = 1.5 * temperature if egi_first_temperature is None else egi_first_temperature
  base = sampling.Sampler.for_model(model.config, gen_length=countdown_data.gen_length(model.task),
                                    temperature=temperature)
  return {
      f"random T={temperature:g}": base.replace(remasking=sampling.Random()),
      f"low-confidence T={temperature:g}": base.replace(remasking=sampling.LowConfidence()),
      f"random T=1/{alpha:g}": base.replace(remasking=sampling.Random(), temperature=1 / alpha),
      f"TPP T={temperature:g}": base.replace(remasking=sampling.RankThenSample()),
      f"EGI T={first:g} then {temperature:g}": base.replace(
          remasking=sampling.EGI(first_temperature=first)),
  }


def imh_samplers(model: BuiltinModel, alpha: float = 2.0,
                 num_candidates: int = 8) -> dict[str, sampling.Sampler]:
  base = sampling.Sampler.for_model(model.config, gen_length=countdown_data.gen_length(model.task))
  return {f"IMH alpha={alpha:g} K={num_candidates}": base.replace(
      remasking=sampling.IMH(alpha=alpha, num_candidates=num_candidates))}


def dilemma_claims(comparison: tradeoff.Comparison) -> list[compare.Verdict]:
  """The paper's dilemma and Jeon et al.'s claims, as paired differences over problems (the
  demo's baselines in `baseline_samplers`' order: random, low-confidence, tempered, TPP, EGI)."""
  rand, lowc, _, tpp, egi = [d.samples for d in comparison.draws.values() if d.samples.baseline]
  n, boot = comparison.samples, comparison.bootstrap
  curve = {s.label: compare.pass_curves(s) for s in (rand, lowc, tpp, egi)}
  gain = lambda s: curve[s.label][:, n] - curve[s.label][:, 1]
  entropy = lambda s: compare.answer_entropy_P(s, n)
  return [
      compare.paired_difference(f"{lowc.label} has a higher Pass@1 than {rand.label}",
                                curve[lowc.label][:, 1], curve[rand.label][:, 1], boot),
      compare.paired_difference(f"{rand.label} gains more from Pass@1 to Pass@{n} than "
                                f"{lowc.label}", gain(rand), gain(lowc), boot),
      compare.paired_difference(f"{lowc.label}'s answers have a lower entropy than "
                                f"{rand.label}'s (nats)", entropy(rand), entropy(lowc), boot),
      compare.paired_difference(f"{tpp.label} explores more than {lowc.label} (Pass@{n})",
                                curve[tpp.label][:, n], curve[lowc.label][:, n], boot),
      compare.paired_difference(f"{egi.label} explores more than {tpp.label} (Pass@{n})",
                                curve[egi.label][:, n], curve[tpp.label][:, n], boot),
  ]


def run_demo(out_dir: str | pathlib.Path, num_problems: int = 200, samples: int = 16,
             batch_rows: int = 800, seed: int = 0, temperature: float = 1.0, alpha: float = 2.0,
             num_candidates: int = 8, model_path: str | pathlib.Path = BUILTIN,
             baseline_samples: int | None = None, egi_first_temperature: float | None = None,
             bootstrap_resamples: int = 1000) -> dict[str, Any]:
  """Runs the demo, prints the table and the verdicts, writes table.md, verdicts.md,
  results.json and tradeoff.png. The baselines draw `baseline_samples` per problem (default n:
  fast, and their compute-matched points against IMH are then lower bounds; 0: as many as
  compute matching needs)."""
  start = time.time()
  model = load_builtin(model_path)
  problems = model.task.sample_problems("heldout", num_problems, seed=seed)
  comparison = tradeoff.compare_samplers(
      model, problems, baseline_samplers(model, temperature, alpha, egi_first_temperature),
      imh_samplers(model, alpha, num_candidates), samples,
      baseline_samples=samples if baseline_samples is None else baseline_samples or None,
      batch_rows=batch_rows, seed=seed, bootstrap_resamples=bootstrap_resamples,
      title=f"countdown ({num_problems} held-out problems)")
  claims = [v.line() for v in dilemma_claims(comparison)]
  wall = {label: d.seconds for label, d in comparison.draws.items()}
  print(f"\n{num_problems} held-out Countdown problems ({model.task.num_numbers} numbers), "
        f"{samples} samples each (baselines {comparison.all_samples[-1].num_samples}), "
        f"{models.param_count(model.params):,}-parameter model; +- is one bootstrap SE over "
        "problems\n")
  table = comparison.table()
  print(table)
  print("wall time per sampler: " + ", ".join(f"{k} {v:.1f}s" for k, v in wall.items()))
  print("\n".join(claims + comparison.verdict_lines()))
  out_dir = pathlib.Path(out_dir)
  results = tradeoff.write(comparison, out_dir, extra_lines=claims,
                           extra={"claims": claims, "wall_seconds": wall,
                                  "total_seconds": time.time() - start, "seed": seed})
  print(f"wrote {out_dir}/table.md, verdicts.md, results.json and tradeoff.png "
        f"({results['total_seconds']:.0f} s in all)")
  return results
