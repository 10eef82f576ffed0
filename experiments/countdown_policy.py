r"""Trains a learned unmasking policy for the shipped Countdown model on CPU and compares it on
held-out problems with threshold and low-confidence decoding (accuracy and NFE).

  python -m experiments.countdown_policy --alpha=1 --out=runs/countdown_policy_alpha1
"""

from absl import app, flags, logging

from dllm_jax.tasks import countdown_policy

_OUT = flags.DEFINE_string("out", "countdown_policy", "Checkpoints, metrics and results.")
_ALPHA = flags.DEFINE_float("alpha", 1.0, "Reward correct * ((L - NFE + 1) / L) ** alpha.")
_STEPS = flags.DEFINE_integer("num_steps", 150, "GRPO steps (4 prompts x 8 rollouts each).")
_LR = flags.DEFINE_float("learning_rate", 1e-3, "Peak learning rate.")
_TRAIN = flags.DEFINE_integer("train_problems", 1000, "Training problems drawn.")
_HELDOUT = flags.DEFINE_integer("heldout_problems", 221, "Held-out problems evaluated.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed.")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  countdown_policy.run(_OUT.value, _ALPHA.value, _STEPS.value, _TRAIN.value, _HELDOUT.value,
                       _SEED.value, _LR.value)


if __name__ == "__main__":
  app.run(main)
