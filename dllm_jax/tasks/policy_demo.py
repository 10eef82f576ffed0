"""Learned unmasking policies on a built-in model, against the confidence heuristics.

For each layout (semi-autoregressive blocks of 8, or full diffusion: one block) and each reward
exponent alpha, a policy is trained with GRPO (`dllm_jax.policy_training`) on training problems,
or the shipped one is loaded. Then every decoder runs on the same held-out problems and the
results are a table, a Pareto plot of accuracy against NFE, and a verdict per policy: whether it
lies above the hull of its layout's heuristics at its NFE by more than 2 SE (paired bootstrap over
problems; `compare.cost_verdict`):

  learned policy (each alpha)   Threshold(tau), tau in 0.5..0.95
  low-confidence and random remasking at gen_length, /2, /4, /8 steps

Tokens are the dLLM's argmax (as in Jazbec, Olausson et al.), so every heuristic is
deterministic and accuracy is Pass@1; the policy samples its positions (Bernoulli, policy
temperature 1) with one fixed key per row. Nothing is tuned on the held-out split: training
problems come from the train split, and every setting is fixed before evaluation.
"""

from __future__ import annotations

import json
import math
import pathlib
import time
from typing import Any, Sequence

import jax
import numpy as np

from dllm_jax import models, policy_training, sampling
from dllm_jax.eval import compare
from dllm_jax.tasks import builtin
from dllm_jax.tasks.builtin import BuiltinModel

ALPHAS = (0.3, 1.0, 3.0, 10.0)
SEMI_AR_BLOCK = 8
LAYOUTS = ("semi_ar", "full")
THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
STEP_DIVISORS = (1, 2, 4, 8)
SHIPPED_POLICIES = builtin.ASSETS / "lagged_difference_policies"


def block_length(model: BuiltinModel, layout: str) -> int | None:
  if layout not in LAYOUTS:
    raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
  return min(SEMI_AR_BLOCK, model.gen_length) if layout == "semi_ar" else None


def policy_file(directory: str | pathlib.Path, layout: str, alpha: float) -> pathlib.Path:
  return pathlib.Path(directory) / f"{layout}_alpha{alpha:g}.safetensors"


def grader(model: BuiltinModel, problems: Sequence) -> policy_training.GradeFn:
  def grade(problem_N: np.ndarray, generated_NG: np.ndarray) -> np.ndarray:
    return np.array([model.verify(problems[i], g) for i, g in zip(problem_N, generated_NG)],
                    bool)
  return grade


def evaluate(model: BuiltinModel, sampler: sampling.Sampler, problems: Sequence, seed: int,
             policy_params=None, batch_rows: int = 256) -> dict[str, Any]:
  """Accuracy (with its standard error) and mean NFE over `problems`, one row each; and the
  per-problem correctness and NFE (`correct_P`, `nfe_P`) for the paired verdicts."""
  prompt, mask = model.encode_prompts(problems)
  keys = jax.random.split(jax.random.key(seed), len(problems))
  denoise = models.make_denoise(model.config)
  generated, nfe = [], []
  for lo in range(0, len(problems), batch_rows):
    out = sampling.generate(sampler, denoise, model.params, prompt[lo:lo + batch_rows],
                            mask[lo:lo + batch_rows], keys[lo:lo + batch_rows],
                            policy_params=policy_params)
    generated.append(np.asarray(out.generated_BG))
    nfe.append(np.asarray(out.nfe_B))
  correct = grader(model, problems)(np.arange(len(problems)), np.concatenate(generated))
  accuracy = float(correct.mean())
  nfe_P = np.concatenate(nfe).astype(np.float64)
  return {"accuracy": accuracy, "stderr": math.sqrt(accuracy * (1 - accuracy) / len(problems)),
          "nfe": float(nfe_P.mean()), "correct_P": correct, "nfe_P": nfe_P}


def verdicts(rows: Sequence[dict[str, Any]], seed: int = 0) -> list[compare.Verdict]:
  """Each learned policy against the hull of its layout's heuristics in the (NFE, accuracy)
  plane, paired over problems (`compare.cost_verdict`)."""
  out = []
  for layout in dict.fromkeys(r["layout"] for r in rows):
    mine = [r for r in rows if r["layout"] == layout]
    heuristics_ = {r["decoding"]: (r["correct_P"], r["nfe_P"]) for r in mine
                   if r["kind"] != "learned"}
    if not heuristics_:
      continue
    bootstrap = compare.Bootstrap.draw(len(mine[0]["correct_P"]), 1000, seed)
    out += [compare.cost_verdict(f"{layout}: {r['decoding']}", r["correct_P"], r["nfe_P"],
                                 heuristics_, bootstrap) for r in mine if r["kind"] == "learned"]
  return out


def heuristics(model: BuiltinModel, layout: str, thresholds: Sequence[float] = THRESHOLDS,
               step_divisors: Sequence[int] = STEP_DIVISORS) -> dict[str, sampling.Sampler]:
  """The baselines of one layout, by label: Threshold at each tau, and low-confidence and random
  remasking at gen_length / d steps for each divisor d (step counts below the block count are
  left out)."""
  base = sampling.Sampler.for_model(model.config, gen_length=model.gen_length,
                                    block_length=block_length(model, layout))
  blocks = base.num_blocks
  out = {f"threshold {tau:g}": base.replace(remasking=sampling.Threshold(tau))
         for tau in thresholds}
  step_counts = sorted({s for s in (model.gen_length // d for d in step_divisors)
                        if s >= blocks}, reverse=True)
  for name, rule in (("low-confidence", sampling.LowConfidence()), ("random", sampling.Random())):
    out.update({f"{name} {s} steps": base.replace(remasking=rule, steps=s) for s in step_counts})
  return out


def policy_sampler(model: BuiltinModel, layout: str) -> sampling.Sampler:
  return sampling.Sampler.for_model(model.config, gen_length=model.gen_length,
                                    block_length=block_length(model, layout),
                                    remasking=sampling.LearnedPolicy())


def train_policy(model: BuiltinModel, layout: str, alpha: float, directory: str | pathlib.Path,
                 num_steps: int, train_problems: int, learning_rate: float, seed: int,
                 progress: bool = True) -> tuple[Any, float]:
  """GRPO for one (layout, alpha) in `directory` (resumed if it holds checkpoints); returns the
  policy params and this call's training seconds."""
  problems = model.task.sample_problems("train", train_problems, seed=seed)
  prompt, mask = model.encode_prompts(problems)
  config = policy_training.GRPOConfig(seed=seed, num_steps=num_steps, alpha=alpha,
                                      learning_rate=learning_rate, warmup_steps=10,
                                      checkpoint_every=25)
  start = time.time()
  params, _ = policy_training.train(
      policy_sampler(model, layout), models.make_denoise(model.config), model.params,
      [row[m].tolist() for row, m in zip(prompt, mask)], grader(model, problems), config,
      directory, pad_id=model.config.pad_token_id, progress=progress,
      run_config={"model_config": repr(model.config), "task": repr(model.task),
                  "train_problems": train_problems})
  return params, time.time() - start


def run(out_dir: str | pathlib.Path, model_path: str | pathlib.Path = builtin.LAGGED_DIFFERENCE,
        policy_dir: str | pathlib.Path | None = SHIPPED_POLICIES, train: bool = False,
        alphas: Sequence[float] = ALPHAS, layouts: Sequence[str] = LAYOUTS,
        heldout_problems: int = 512, train_problems: int = 4096, num_steps: int = 150,
        learning_rate: float = 1e-3, seed: int = 0, batch_rows: int = 256,
        thresholds: Sequence[float] = THRESHOLDS, step_divisors: Sequence[int] = STEP_DIVISORS,
        progress: bool = True) -> dict[str, Any]:
  """Trains (`train=True`: into `out_dir`/policies, resumable, then exported there) or loads
  (from `policy_dir`) one policy per (layout, alpha), evaluates everything on held-out problems,
  prints the table and writes results.json and pareto.png to `out_dir`."""
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  model = builtin.load_builtin(model_path)
  heldout = model.task.sample_problems("heldout", heldout_problems, seed=seed)
  rows: list[dict[str, Any]] = []
  train_seconds: dict[str, float] = {}
  for layout in layouts:
    for alpha in alphas:
      label = f"learned policy, alpha {alpha:g}"
      if train:
        work = out_dir / "policies" / f"{layout}_alpha{alpha:g}"
        params, seconds = train_policy(model, layout, alpha, work, num_steps, train_problems,
                                       learning_rate, seed, progress)
        train_seconds[f"{layout} alpha {alpha:g}"] = seconds
        sampling.save_policy_params(policy_file(out_dir / "policies", layout, alpha), params)
      else:
        if policy_dir is None:
          raise ValueError("pass policy_dir (trained policies) or train=True")
        params = sampling.load_policy_params(policy_file(policy_dir, layout, alpha))
      result = evaluate(model, policy_sampler(model, layout), heldout, seed + 1, params,
                        batch_rows)
      rows.append({"layout": layout, "decoding": label, "kind": "learned", "alpha": alpha,
                   **result})
    for label, sampler in heuristics(model, layout, thresholds, step_divisors).items():
      rows.append({"layout": layout, "decoding": label, "kind": label.rsplit(" ", 2)[0]
                   if "steps" in label else "threshold",
                   **evaluate(model, sampler, heldout, seed + 1, None, batch_rows)})
  table = markdown_table(rows)
  lines = [v.line() for v in verdicts(rows, seed)]
  print(f"\n{heldout_problems} held-out problems, gen_length {model.gen_length}, greedy tokens; "
        f"semi_ar = blocks of {SEMI_AR_BLOCK}, full = one block; +- is one standard error\n")
  print(table)
  print("\n".join(lines))
  rows = [{k: v for k, v in r.items() if not k.endswith("_P")} for r in rows]
  results = {"model": str(model_path), "heldout_problems": heldout_problems, "seed": seed,
             "train_seconds": train_seconds, "rows": rows, "verdicts": lines}
  (out_dir / "results.json").write_text(json.dumps(results, indent=2))
  (out_dir / "table.md").write_text(table + "\n" + "".join(f"- {line}\n" for line in lines))
  plot = pareto_plot(rows, out_dir / "pareto.png")
  print(f"wrote {out_dir / 'results.json'}, {out_dir / 'table.md'} and {plot}")
  return results


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
  lines = ["| layout | decoding | accuracy | NFE |", "|---|---|---|---|"]
  lines += [f"| {r['layout']} | {r['decoding']} | {r['accuracy']:.3f} +- {r['stderr']:.3f} | "
            f"{r['nfe']:.2f} |" for r in rows]
  return "\n".join(lines) + "\n"


def pareto_plot(rows: Sequence[dict[str, Any]], path: pathlib.Path) -> pathlib.Path:
  """Accuracy against NFE, one panel per layout, one series per kind of decoder."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  layouts = list(dict.fromkeys(r["layout"] for r in rows))
  fig, axes = plt.subplots(1, len(layouts), figsize=(6 * len(layouts), 4.5), squeeze=False,
                           sharey=True)
  for ax, layout in zip(axes[0], layouts):
    for kind, marker in (("learned", "*"), ("threshold", "o"), ("low-confidence", "s"),
                         ("random", "x")):
      series = sorted((r["nfe"], r["accuracy"]) for r in rows
                      if r["layout"] == layout and r["kind"] == kind)
      if series:
        ax.plot(*zip(*series), marker=marker, markersize=10 if kind == "learned" else 6,
                label=kind)
    ax.set(xlabel="NFE", title=layout.replace("_", "-"))
    ax.grid(alpha=0.3)
  axes[0][0].set_ylabel("accuracy (held-out)")
  axes[0][-1].legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path
