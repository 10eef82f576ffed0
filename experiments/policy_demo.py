r"""Learned unmasking policies against the confidence heuristics on a built-in model: accuracy
against NFE on held-out problems, in semi-autoregressive blocks and in full diffusion.

  python -m experiments.policy_demo                  # the shipped lagged-difference policies (minutes)
  python -m experiments.policy_demo --train --out=runs/policies   # train them again (GRPO)
  python -m experiments.policy_demo --model=countdown --train --layouts=full --alphas=1

Prints a markdown table and writes results.json, table.md and pareto.png to --out. With
--train, each (layout, alpha) trains in --out/policies/<layout>_alpha<A>/ (rerun to resume) and
its weights are exported beside it as <layout>_alpha<A>.safetensors.
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
_STEPS = flags.DEFINE_integer("num_steps", 150, "GRPO steps (4 prompts x 8 rollouts each).")
_LR = flags.DEFINE_float("learning_rate", 1e-3, "Peak learning rate.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of problems, policy init and rollouts.")
_THRESHOLDS = flags.DEFINE_list("thresholds", [f"{t:g}" for t in policy_demo.THRESHOLDS],
                                "Threshold decoding's tau values.")
_DIVISORS = flags.DEFINE_list("step_divisors", [str(d) for d in policy_demo.STEP_DIVISORS],
                              "Low-confidence / random at gen_length / d steps.")
_BATCH = flags.DEFINE_integer("batch_rows", 256, "Rows per compiled evaluation batch.")

_NAMED = {"lagged_difference": builtin.LAGGED_DIFFERENCE, "countdown": builtin.COUNTDOWN}


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  try:
    alphas = [float(a) for a in _ALPHAS.value]
    thresholds = [float(t) for t in _THRESHOLDS.value]
    divisors = [int(d) for d in _DIVISORS.value]
  except ValueError:
    raise app.UsageError("--alphas and --thresholds take numbers, --step_divisors integers") \
        from None
  if any(d < 1 for d in divisors) or any(not 0 < t <= 1 for t in thresholds):
    raise app.UsageError("--step_divisors must be >= 1 and --thresholds in (0, 1]")
  bad = [layout for layout in _LAYOUTS.value if layout not in policy_demo.LAYOUTS]
  if bad or not _LAYOUTS.value:
    raise app.UsageError(f"--layouts takes {' and/or '.join(policy_demo.LAYOUTS)}, got "
                         f"{','.join(_LAYOUTS.value)}")
  if min(_HELDOUT.value, _TRAIN_PROBLEMS.value, _STEPS.value, _BATCH.value) < 1:
    raise app.UsageError("--heldout_problems, --train_problems, --num_steps and --batch_rows "
                         "must be >= 1")
  try:
    policy_demo.run(_OUT.value, _NAMED.get(_MODEL.value, _MODEL.value), _POLICY_DIR.value,
                    _TRAIN.value, alphas, _LAYOUTS.value, _HELDOUT.value, _TRAIN_PROBLEMS.value,
                    _STEPS.value, _LR.value, _SEED.value, _BATCH.value, thresholds, divisors)
  except (FileNotFoundError, ValueError) as e:
    raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
  app.run(main)
