"""A learned unmasking policy for the shipped Countdown model: GRPO on training problems, then
accuracy against NFE on held-out problems beside confidence-threshold and low-confidence decoding.

Tokens are the model's argmax (as in Jazbec, Olausson et al.), so every sampler but the policy is
deterministic and accuracy is Pass@1. The answer is only 7 tokens: this exercises the trainer on
a real dLLM and reward; it is not the long-generation setting where the paper's effect appears.
"""

from __future__ import annotations

import json
import pathlib
import time
from typing import Any

import jax
import numpy as np

from dllm_jax import models, policy_training, sampling
from dllm_jax.tasks import countdown, countdown_data
from dllm_jax.tasks.countdown_demo import BUILTIN, BuiltinModel, load_builtin


def _prompts(model: BuiltinModel, problems) -> tuple[np.ndarray, np.ndarray]:
  return countdown_data.encode_prompts(model.tokenizer, model.task, problems)


def grader(model: BuiltinModel, problems) -> policy_training.GradeFn:
  def grade(problem_N: np.ndarray, generated_NG: np.ndarray) -> np.ndarray:
    return np.array([countdown.verify(problems[i], model.tokenizer.decode(g))
                     for i, g in zip(problem_N, generated_NG)], bool)
  return grade


def evaluate(model: BuiltinModel, sampler: sampling.Sampler, problems, seed: int,
             policy_params=None) -> dict[str, float]:
  prompt, mask = _prompts(model, problems)
  out = sampling.generate(sampler, models.make_denoise(model.config), model.params, prompt, mask,
                          jax.random.split(jax.random.key(seed), len(problems)),
                          policy_params=policy_params)
  correct = grader(model, problems)(np.arange(len(problems)), np.asarray(out.generated_BG))
  return {"accuracy": float(correct.mean()), "nfe": float(np.asarray(out.nfe_B).mean())}


def run(out_dir: str | pathlib.Path, alpha: float = 1.0, num_steps: int = 150,
        train_problems: int = 1000, heldout_problems: int = 221, seed: int = 0,
        learning_rate: float = 1e-3, model_path: str | pathlib.Path = BUILTIN) -> dict[str, Any]:
  """Trains (or resumes) the policy in `out_dir`, evaluates it and the baselines, prints a table
  and writes results.json."""
  model = load_builtin(model_path)
  gen = countdown_data.gen_length(model.task)
  train = model.task.sample_problems("train", train_problems, seed=seed)
  prompt, mask = _prompts(model, train)
  prompt_ids = [row[m].tolist() for row, m in zip(prompt, mask)]
  rule = sampling.LearnedPolicy()
  base = sampling.Sampler.for_model(model.config, gen_length=gen)
  config = policy_training.GRPOConfig(seed=seed, num_steps=num_steps, alpha=alpha,
                                      learning_rate=learning_rate, warmup_steps=10,
                                      checkpoint_every=25)
  start = time.time()
  params, _ = policy_training.train(
      base.replace(remasking=rule), models.make_denoise(model.config), model.params, prompt_ids,
      grader(model, train), config, out_dir, pad_id=model.config.pad_token_id,
      run_config={"model": str(model_path), "train_problems": train_problems})
  train_seconds = time.time() - start
  heldout = model.task.sample_problems("heldout", heldout_problems, seed=seed)
  rows = {"learned policy": evaluate(model, base.replace(remasking=rule), heldout, seed + 1,
                                     params)}
  rows["random policy init"] = evaluate(model, base.replace(remasking=rule), heldout, seed + 1,
                                        sampling.init_policy(rule.network, seed))
  for tau in (0.5, 0.7, 0.9, 0.95):
    rows[f"threshold {tau:g}"] = evaluate(model, base.replace(remasking=sampling.Threshold(tau)),
                                          heldout, seed)
  for steps in (gen, 4, 2, 1):
    rows[f"low-confidence {steps} steps"] = evaluate(
        model, base.replace(remasking=sampling.LowConfidence(), steps=steps), heldout, seed)
  print(f"\n{heldout_problems} held-out problems, greedy tokens, GRPO alpha={alpha:g}, "
        f"{num_steps} steps in {train_seconds:.0f} s\n")
  print("| decoding | accuracy | NFE |\n|---|---|---|")
  for label, r in rows.items():
    print(f"| {label} | {r['accuracy']:.3f} | {r['nfe']:.2f} |")
  results = {"alpha": alpha, "num_steps": num_steps, "train_seconds": train_seconds,
             "heldout_problems": heldout_problems, "rows": rows}
  (pathlib.Path(out_dir) / "results.json").write_text(json.dumps(results, indent=2))
  return results
