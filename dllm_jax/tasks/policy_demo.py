"""Learned unmasking policies on a built-in model, against the confidence heuristics.

For each layout (semi-autoregressive blocks of 8, or full diffusion: one block) and each reward
exponent alpha, a policy is trained with GRPO (`dllm_jax.policy_training`) on training problems,
or the shipped one is loaded. Then every decoder runs on the same held-out problems and the
results are a table, a Pareto plot of accuracy against NFE, and a verdict per policy: whether it
lies above the hull of its layout's heuristics at its NFE by more than 2 SE (paired bootstrap over
problems; `compare.cost_verdict`):

  learned policy (each alpha)   Threshold(tau), tau in 0.3..0.99
  low-confidence and random remasking at 1, 2, 3, 4, 8, 16, 32 steps (>= one per block)

Tokens are the dLLM's argmax (as in Jazbec, Olausson et al.), so every heuristic is
deterministic and accuracy is Pass@1; the policy samples its positions (Bernoulli, at the
temperature recorded in its file) with one fixed key per row. +- is the standard error over
problems, sqrt(p (1 - p) / n). Each learned row is compared with the heuristics' hull at its NFE
(`hull`: the upper concave envelope of the heuristics' (NFE, accuracy) points, which mixing two
decoders attains; flat outside their NFE range) and with Threshold's alone, in standard errors
of the difference. Nothing is tuned on the held-out split: training problems come from the
train split, and every setting is fixed before evaluation. Evaluations are kept in
`evaluations.jsonl` under --out, so a rerun only evaluates what is new.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import pathlib
import time
from typing import Any, Sequence

import jax
import numpy as np
import tqdm

from dllm_jax import models, policy_training, sampling
from dllm_jax.eval import compare
from dllm_jax.tasks import builtin
from dllm_jax.tasks.builtin import BuiltinModel

ALPHAS = (0.3, 1.0, 3.0, 10.0)
SEMI_AR_BLOCK = 8
LAYOUTS = ("semi_ar", "full")
THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.97, 0.99)
STEP_COUNTS = (1, 2, 3, 4, 8, 16, 32)
SHIPPED_POLICIES = builtin.ASSETS / "lagged_difference_policies"


@dataclasses.dataclass(frozen=True)
class Recipe:
  """How the demo trains a policy (every field is recorded in the exported file). The defaults
  are the shipped semi-AR policies' recipe; each alpha imitates its own tau (README)."""
  num_steps: int = 100
  learning_rate: float = 3e-5
  warmup_steps: int = 10
  prompts_per_step: int = 4
  temperature: float = 1.0
  entropy_coef: float = 0.0
  drop_zero_variance: bool = False
  imitate_threshold: float | None = 0.9
  imitation_steps: int = 20
  imitation_learning_rate: float = 5e-4
  imitation_iterations: int = 16
  imitation_cosine: bool = True   # decay the warm start's lr to 0 (cosine)
  seed: int = 0
  train_problems: int = 4096


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
               step_counts: Sequence[int] = STEP_COUNTS) -> dict[str, sampling.Sampler]:
  """The baselines of one layout, by label: Threshold at each tau, and low-confidence and random
  remasking at each step count (counts below the block count or above gen_length are left
  out)."""
  base = sampling.Sampler.for_model(model.config, gen_length=model.gen_length,
                                    block_length=block_length(model, layout))
  out = {f"threshold {tau:g}": base.replace(remasking=sampling.Threshold(tau))
         for tau in thresholds}
  counts = sorted({s for s in step_counts
                   if base.num_blocks <= s <= model.gen_length and s % base.num_blocks == 0},
                  reverse=True)
  for name, rule in (("low-confidence", sampling.LowConfidence()), ("random", sampling.Random())):
    out.update({f"{name} {s} steps": base.replace(remasking=rule, steps=s) for s in counts})
  return out


def policy_sampler(model: BuiltinModel, layout: str, temperature: float = 1.0
                   ) -> sampling.Sampler:
  return sampling.Sampler.for_model(model.config, gen_length=model.gen_length,
                                    block_length=block_length(model, layout),
                                    remasking=sampling.LearnedPolicy(temperature=temperature))


def grpo_config(recipe: Recipe, alpha: float) -> policy_training.GRPOConfig:
  return policy_training.GRPOConfig(
      seed=recipe.seed, num_steps=recipe.num_steps, alpha=alpha,
      prompts_per_step=recipe.prompts_per_step, learning_rate=recipe.learning_rate,
      warmup_steps=recipe.warmup_steps, entropy_coef=recipe.entropy_coef,
      drop_zero_variance=recipe.drop_zero_variance,
      imitate_threshold=recipe.imitate_threshold if recipe.imitation_steps else None,
      imitation_steps=recipe.imitation_steps if recipe.imitate_threshold is not None else 0,
      imitation_learning_rate=recipe.imitation_learning_rate,
      imitation_iterations=recipe.imitation_iterations,
      imitation_cosine=recipe.imitation_cosine, checkpoint_every=25)


def train_policy(model: BuiltinModel, layout: str, alpha: float, directory: str | pathlib.Path,
                 recipe: Recipe = Recipe(), progress: bool = True) -> tuple[Any, float]:
  """GRPO for one (layout, alpha) in `directory` (resumed if it holds checkpoints); returns the
  policy params and this call's training seconds."""
  problems = model.task.sample_problems("train", recipe.train_problems, seed=recipe.seed)
  prompt, mask = model.encode_prompts(problems)
  start = time.time()
  params, _ = policy_training.train(
      policy_sampler(model, layout, recipe.temperature), models.make_denoise(model.config),
      model.params, [row[m].tolist() for row, m in zip(prompt, mask)], grader(model, problems),
      grpo_config(recipe, alpha), directory, pad_id=model.config.pad_token_id, progress=progress,
      run_config={"model_config": repr(model.config), "task": repr(model.task),
                  "train_problems": recipe.train_problems})
  return params, time.time() - start


def policy_metadata(model: BuiltinModel, model_name: str, layout: str, alpha: float,
                    recipe: Recipe, train_seconds: float | None = None) -> dict[str, Any]:
  """What an exported policy file records: the decoding it was trained for and how."""
  sampler = policy_sampler(model, layout, recipe.temperature)
  return {"gen_length": sampler.gen_length,
          "block_length": sampler.block_length or sampler.gen_length,
          "temperature": recipe.temperature, "alpha": alpha, "layout": layout,
          "model": model_name,
          "grpo": dataclasses.asdict(grpo_config(recipe, alpha)),
          "train_problems": recipe.train_problems, "train_seconds": train_seconds}


def _file_digest(path: pathlib.Path) -> str:
  return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


class EvaluationCache:
  """Rows already evaluated (same problems, seed and decoder), kept in a JSONL file."""

  def __init__(self, path: pathlib.Path, setting: dict[str, Any]):
    self.path, self.setting = path, setting
    self.rows: dict[str, dict[str, Any]] = {}
    if path.exists():
      for line in path.read_text().splitlines():
        record = json.loads(line)
        if record.pop("setting") == setting:
          key = record.pop("key")
          self.rows[key] = {  # per-problem arrays (`_P`) come back as arrays
              k: np.asarray(v) if k.endswith("_P") else v for k, v in record.items()}

  def get(self, key: str) -> dict[str, Any] | None:
    return self.rows.get(key)

  def put(self, key: str, row: dict[str, Any]) -> None:
    self.rows[key] = row
    with open(self.path, "a", encoding="utf-8") as f:
      plain = {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in row.items()}
      f.write(json.dumps({"key": key, "setting": self.setting, **plain}) + "\n")


def run(out_dir: str | pathlib.Path, model_path: str | pathlib.Path = builtin.LAGGED_DIFFERENCE,
        policy_dir: str | pathlib.Path | None = SHIPPED_POLICIES, train: bool = False,
        alphas: Sequence[float] = ALPHAS, layouts: Sequence[str] = LAYOUTS,
        heldout_problems: int = 512, recipe: Recipe = Recipe(), batch_rows: int = 256,
        thresholds: Sequence[float] = THRESHOLDS, step_counts: Sequence[int] = STEP_COUNTS,
        compare_dirs: Sequence[str | pathlib.Path] = (), progress: bool = True
        ) -> dict[str, Any]:
  """Trains (`train=True`: into `out_dir`/policies, resumable, then exported there with their
  settings) or loads (from `policy_dir`) one policy per (layout, alpha), evaluates everything on
  held-out problems (policies of `compare_dirs` too, labelled by directory name), prints the
  table and writes results.json, table.md and pareto.png to `out_dir`."""
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  model = builtin.load_builtin(model_path)
  seed = recipe.seed
  heldout = model.task.sample_problems("heldout", heldout_problems, seed=seed)
  cache = EvaluationCache(out_dir / "evaluations.jsonl",
                          {"model": pathlib.Path(model_path).name,
                           "heldout_problems": heldout_problems,
                           "seed": seed})
  train_seconds: dict[str, float | None] = {}
  jobs: list[tuple[dict[str, Any], str, Any]] = []  # (row, cache key, (sampler, params) thunk)
  for layout in layouts:
    for alpha in alphas:
      sources = [("learned policy", None)] + [(f"{pathlib.Path(d).name} policy", d)
                                              for d in compare_dirs]
      for label, directory in sources:
        if directory is None and train:
          work = out_dir / "policies" / f"{layout}_alpha{alpha:g}"
          params, _ = train_policy(model, layout, alpha, work, recipe, progress)
          # over every resumption of the run, not this call's alone
          seconds = policy_training.train_seconds(work)
          train_seconds[f"{layout} alpha {alpha:g}"] = seconds
          path = policy_file(out_dir / "policies", layout, alpha)
          sampling.save_policy_params(path, params,
                                      policy_metadata(model, pathlib.Path(model_path).name, layout,
                                                      alpha, recipe, seconds))
        else:
          directory = directory if directory is not None else policy_dir
          if directory is None:
            raise ValueError("pass policy_dir (trained policies) or train=True")
          path = policy_file(directory, layout, alpha)
        metadata = sampling.read_policy_metadata(path)
        temperature = metadata.get("temperature", 1.0)
        row = {"layout": layout, "decoding": f"{label}, alpha {alpha:g}", "kind": "learned",
               "alpha": alpha, "temperature": temperature,
               "grpo": metadata.get("grpo")}
        jobs.append((row, f"{layout}|policy {_file_digest(path)} at {temperature:g}",
                     lambda layout=layout, path=path, t=temperature: (
                         policy_sampler(model, layout, t), sampling.load_policy_params(path))))
    for label, sampler in heuristics(model, layout, thresholds, step_counts).items():
      kind = label.rsplit(" ", 2)[0] if "steps" in label else "threshold"
      jobs.append(({"layout": layout, "decoding": label, "kind": kind},
                   f"{layout}|{label}", lambda sampler=sampler: (sampler, None)))
  rows = []
  bar = tqdm.tqdm(jobs, desc="evaluating", unit="decoder", disable=not progress)
  for row, key, make in bar:
    bar.set_postfix_str(f"{row['layout']} {row['decoding']}")
    result = cache.get(key)
    if result is None:
      sampler, params = make()
      result = evaluate(model, sampler, heldout, seed + 1, params, batch_rows)
      cache.put(key, result)
    rows.append({**row, **result})
  add_hull_margins(rows)
  table = markdown_table(rows)
  lines = [v.line() for v in verdicts(rows, seed)]
  print(f"\n{heldout_problems} held-out problems, gen_length {model.gen_length}, greedy tokens; "
        f"semi_ar = blocks of {SEMI_AR_BLOCK}, full = one block; +- is one standard error\n")
  print(table)
  print("\n".join(lines))
  rows = [{k: v for k, v in r.items() if not k.endswith("_P")} for r in rows]
  results = {"model": pathlib.Path(model_path).name, "heldout_problems": heldout_problems,
             "seed": seed, "train_seconds": train_seconds, "rows": rows, "verdicts": lines}
  (out_dir / "results.json").write_text(json.dumps(results, indent=2))
  (out_dir / "table.md").write_text(table + "\n" + "".join(f"- {line}\n" for line in lines))
  plot = pareto_plot(rows, out_dir / "pareto.png")
  print(f"wrote {out_dir / 'results.json'}, {out_dir / 'table.md'} and {plot}")
  return results


def upper_hull(points: Sequence[tuple[float, float, float]]) -> list[tuple[float, float, float]]:
  """The upper concave envelope of (nfe, accuracy, stderr) points, by increasing NFE, from the
  most accurate point at the lowest NFE up to the most accurate point overall."""
  best: dict[float, tuple[float, float, float]] = {}
  for p in points:
    if p[0] not in best or p[1] > best[p[0]][1]:
      best[p[0]] = p
  hull: list[tuple[float, float, float]] = []
  for p in sorted(best.values()):
    if hull and p[1] <= hull[-1][1]:
      continue  # more NFE for no more accuracy: never on the front
    while len(hull) >= 2 and ((hull[-1][1] - hull[-2][1]) * (p[0] - hull[-2][0])
                              <= (p[1] - hull[-2][1]) * (hull[-1][0] - hull[-2][0])):
      hull.pop()
    hull.append(p)
  return hull


def hull_at(hull: Sequence[tuple[float, float, float]], nfe: float) -> tuple[float, float]:
  """(accuracy, stderr) of the hull at `nfe`: linear between its points (stderr too), flat
  outside them."""
  if nfe <= hull[0][0]:
    return hull[0][1], hull[0][2]
  for (x0, y0, s0), (x1, y1, s1) in zip(hull, hull[1:]):
    if nfe <= x1:
      w = (nfe - x0) / (x1 - x0)
      return y0 + w * (y1 - y0), s0 + w * (s1 - s0)
  return hull[-1][1], hull[-1][2]


def add_hull_margins(rows: list[dict[str, Any]]) -> None:
  """Adds to each learned row the heuristics' hull at its NFE (`hull`), Threshold's alone
  (`threshold_hull`), and the margins over them in standard errors of the difference."""
  for layout in {r["layout"] for r in rows}:
    mine = [r for r in rows if r["layout"] == layout]
    for name, kinds in (("hull", None), ("threshold_hull", ("threshold",))):
      points = [(r["nfe"], r["accuracy"], r["stderr"]) for r in mine
                if r["kind"] != "learned" and (kinds is None or r["kind"] in kinds)]
      if not points:
        continue
      hull = upper_hull(points)
      for r in mine:
        if r["kind"] == "learned":
          accuracy, stderr = hull_at(hull, r["nfe"])
          r[name] = accuracy
          r[f"{name}_margin_se"] = (r["accuracy"] - accuracy) / max(
              math.hypot(r["stderr"], stderr), 1e-9)


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
  lines = ["| layout | decoding | accuracy | NFE | heuristics' hull at this NFE (margin) | "
           "Threshold's curve (margin) |", "|---|---|---|---|---|---|"]
  for r in rows:
    margins = [f"{r[k]:.3f} ({r[k + '_margin_se']:+.1f} SE)" if k in r else ""
               for k in ("hull", "threshold_hull")]
    lines.append(f"| {r['layout']} | {r['decoding']} | {r['accuracy']:.3f} +- "
                 f"{r['stderr']:.3f} | {r['nfe']:.2f} | {margins[0]} | {margins[1]} |")
  return "\n".join(lines) + "\n"


def pareto_plot(rows: Sequence[dict[str, Any]], path: pathlib.Path) -> pathlib.Path:
  """Accuracy against NFE (log scale), one panel per layout: each kind of decoder, every learned
  policy with its standard error, and the heuristics' hull (dashed)."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  layouts = list(dict.fromkeys(r["layout"] for r in rows))
  sources = list(dict.fromkeys(r["decoding"].rsplit(",", 1)[0] for r in rows
                               if r["kind"] == "learned"))
  colors = {source: f"C{3 + i}" for i, source in enumerate(sources)}  # C0-C2: heuristics
  fig, axes = plt.subplots(1, len(layouts), figsize=(6 * len(layouts), 4.5), squeeze=False,
                           sharey=True)
  for ax, layout in zip(axes[0], layouts):
    mine = [r for r in rows if r["layout"] == layout]
    for kind, marker in (("threshold", "o"), ("low-confidence", "s"), ("random", "x")):
      series = sorted((r["nfe"], r["accuracy"]) for r in mine if r["kind"] == kind)
      if series:
        ax.plot(*zip(*series), marker=marker, markersize=5, label=kind, alpha=0.8)
    hull = upper_hull([(r["nfe"], r["accuracy"], r["stderr"]) for r in mine
                       if r["kind"] != "learned"])
    if hull:
      ax.plot([p[0] for p in hull], [p[1] for p in hull], "k--", lw=1, label="heuristics' hull")
    for source in dict.fromkeys(r["decoding"].rsplit(",", 1)[0] for r in mine
                                if r["kind"] == "learned"):
      points = sorted((r["nfe"], r["accuracy"], r["stderr"]) for r in mine
                      if r["kind"] == "learned" and r["decoding"].startswith(source + ","))
      ax.errorbar([p[0] for p in points], [p[1] for p in points], [p[2] for p in points],
                  fmt="*", markersize=11, capsize=3, label=source, color=colors[source])
    ax.set(xlabel="NFE", xscale="log", title=layout.replace("_", "-"))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  axes[0][0].set_ylabel("accuracy (held-out)")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path
