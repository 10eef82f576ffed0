r"""Learned unmasking policies against the confidence heuristics on a built-in model: accuracy
against NFE on held-out problems, in semi-autoregressive blocks and in full diffusion.

  python -m experiments.policy_demo                  # the shipped lagged-difference policies
  python -m experiments.policy_demo --train --out=runs/policies   # train them again
  python -m experiments.policy_demo --model=countdown --train --layouts=full --alphas=1

Prints a markdown table and writes results.json, table.md and pareto.png to --out. With
--train, each (layout, alpha) trains in --out/policies/<layout>_alpha<A>/ (rerun to resume) and
its weights are exported beside it as <layout>_alpha<A>.safetensors, with every training setting
in the file's metadata. Evaluations are cached in --out/evaluations.jsonl (rerun: only new ones).
"""

from absl import app, flags, logging

from dllm_jax.tasks import builtin, policy_demo

_MODEL = flags.DEFINE_string("model", "lagged_difference", "lagged_difference, countdown (the shipped "
                             "models) or a model directory written by experiments/train_tiny.")
_OUT = flags.DEFINE_string("out", "policy_demo", "Where results (and trained policies) go.")
_TRAIN = flags.DEFINE_bool("train", False, "Train the policies (GRPO) instead of loading them.")
_POLICY_DIR = flags.DEFINE_string("policy_dir", str(policy_demo.SHIPPED_POLICIES),
                                  "Trained policies (<layout>_alpha<A>.safetensors).")
_ALPHAS = flags.DEFINE_list("alphas", [f"{a:g}" for a in policy_demo.ALPHAS],
                            "Reward exponents: reward = correct * ((L - NFE + 1) / L) ** alpha.")
_LAYOUTS = flags.DEFINE_list("layouts", list(policy_demo.LAYOUTS),
                             f"semi_ar (blocks of {policy_demo.SEMI_AR_BLOCK}) and/or full.")
_HELDOUT = flags.DEFINE_integer("heldout_problems", 512, "Held-out problems evaluated.")
_TRAIN_PROBLEMS = flags.DEFINE_integer("train_problems", 4096, "Training problems drawn.")
_RECIPE = policy_demo.Recipe()
_STEPS = flags.DEFINE_integer("num_steps", _RECIPE.num_steps, "GRPO steps.")
_LR = flags.DEFINE_float("learning_rate", _RECIPE.learning_rate, "Peak learning rate (cosine).")
_WARMUP = flags.DEFINE_integer("warmup_steps", _RECIPE.warmup_steps, "Linear warm-up steps.")
_PROMPTS = flags.DEFINE_integer("prompts_per_step", _RECIPE.prompts_per_step,
                                "Prompts per GRPO step (8 rollouts each).")
_POLICY_TEMPERATURE = flags.DEFINE_float("policy_temperature", _RECIPE.temperature,
                                         "Policy temperature of rollouts (and evaluation).")
_ENTROPY = flags.DEFINE_float("entropy_coef", _RECIPE.entropy_coef, "Entropy bonus.")
_DROP = flags.DEFINE_bool("drop_zero_variance", _RECIPE.drop_zero_variance,
                          "Average the GRPO objective over groups whose rewards differ.")
_IMITATE = flags.DEFINE_float("imitate_threshold", _RECIPE.imitate_threshold,
                              "Warm start: imitate Threshold(tau) first (0: no warm start).")
_IMITATION_STEPS = flags.DEFINE_integer("imitation_steps", _RECIPE.imitation_steps,
                                        "Warm-start steps (0: none).")
_IMITATION_LR = flags.DEFINE_float("imitation_learning_rate", _RECIPE.imitation_learning_rate,
                                   "Warm-start Adam learning rate.")
_IMITATION_ITERATIONS = flags.DEFINE_integer(
    "imitation_iterations", _RECIPE.imitation_iterations,
    "Warm-start Adam steps per batch.")
_IMITATION_COSINE = flags.DEFINE_bool("imitation_cosine", _RECIPE.imitation_cosine,
                                      "Decay the warm start's learning rate to 0 (cosine).")
_SEED = flags.DEFINE_integer("seed", _RECIPE.seed, "Seed of problems, policy init and rollouts.")
_THRESHOLDS = flags.DEFINE_list("thresholds", [f"{t:g}" for t in policy_demo.THRESHOLDS],
                                "Threshold decoding's tau values.")
_STEP_COUNTS = flags.DEFINE_list("step_counts", [str(d) for d in policy_demo.STEP_COUNTS],
                                 "Low-confidence / random at these step counts.")
_COMPARE = flags.DEFINE_list("compare", [], "Directories of other policies to evaluate beside "
                             "(e.g. older ones).")
_BATCH = flags.DEFINE_integer("batch_rows", 256, "Rows per compiled evaluation batch.")

_NAMED = {"lagged_difference": builtin.LAGGED_DIFFERENCE, "countdown": builtin.COUNTDOWN}


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  try:
    alphas = [float(a) for a in _ALPHAS.value]
    thresholds = [float(t) for t in _THRESHOLDS.value]
    counts = [int(d) for d in _STEP_COUNTS.value]
  except ValueError:
    raise app.UsageError("--alphas and --thresholds take numbers, --step_counts integers") \
        from None
  if any(d < 1 for d in counts) or any(not 0 < t <= 1 for t in thresholds):
    raise app.UsageError("--step_counts must be >= 1 and --thresholds in (0, 1]")
  bad = [layout for layout in _LAYOUTS.value if layout not in policy_demo.LAYOUTS]
  if bad or not _LAYOUTS.value:
    raise app.UsageError(f"--layouts takes {' and/or '.join(policy_demo.LAYOUTS)}, got "
                         f"{','.join(_LAYOUTS.value)}")
  if min(_HELDOUT.value, _TRAIN_PROBLEMS.value, _STEPS.value, _BATCH.value,
         _PROMPTS.value) < 1:
    raise app.UsageError("--heldout_problems, --train_problems, --num_steps, --prompts_per_step "
                         "and --batch_rows must be >= 1")
  imitate = _IMITATE.value if _IMITATE.value and _IMITATION_STEPS.value else None
  print("loading the model and problems ...", flush=True)
  try:
    recipe = policy_demo.Recipe(
        num_steps=_STEPS.value, learning_rate=_LR.value, warmup_steps=_WARMUP.value,
        prompts_per_step=_PROMPTS.value, temperature=_POLICY_TEMPERATURE.value,
        entropy_coef=_ENTROPY.value, drop_zero_variance=_DROP.value, imitate_threshold=imitate,
        imitation_steps=_IMITATION_STEPS.value if imitate else 0,
        imitation_learning_rate=_IMITATION_LR.value,
        imitation_iterations=_IMITATION_ITERATIONS.value,
        imitation_cosine=_IMITATION_COSINE.value, seed=_SEED.value,
        train_problems=_TRAIN_PROBLEMS.value)
    policy_demo.run(_OUT.value, _NAMED.get(_MODEL.value, _MODEL.value), _POLICY_DIR.value,
                    _TRAIN.value, alphas, _LAYOUTS.value, _HELDOUT.value, recipe, _BATCH.value,
                    thresholds, counts, _COMPARE.value)
  except (FileNotFoundError, ValueError) as e:
    raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
  app.run(main)
