r"""Trains a learned unmasking policy with GRPO on a converted LLaDA / Dream checkpoint.

  python -m experiments.train_policy --checkpoint=/ckpt/llada_jax \
      --data_path=/data/gsm8k_train.jsonl --gen_length=256 --block_length=32 --alpha=1 \
      --output_dir=runs/policy_semi_ar_alpha1

The data file holds one problem per line with `question` (or `problem`) and `answer` (GSM8K's
"#### 42" suffix is understood); answers are graded by the math grader. Rerun the same command
to resume from the latest checkpoint in --output_dir (or with a larger --num_steps to train on);
metrics are appended to metrics.jsonl, and the policy is exported with the decoding it was
trained for (gen_length, block_length, temperature) and every GRPO setting as
<output_dir>/policy.safetensors, which `experiments/run.py --remasking=learned_policy
--policy=...` reads.
Multi-host: as experiments/run.py (--coordinator_address ... or --distributed).
"""

from __future__ import annotations

import pathlib
import sys

from absl import app, flags, logging

from dllm_jax import user_errors  # light: no JAX, so the first line appears at once

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "dllm_jax checkpoint directory.",
                                  required=True)
_TOKENIZER = flags.DEFINE_string("tokenizer_dir", None,
                                 "Tokenizer files (default: <checkpoint>/tokenizer).")
_DATA = flags.DEFINE_string("data_path", None, "JSONL of question/answer records.",
                            required=True)
_LIMIT = flags.DEFINE_integer("limit", None, "Only the first N problems.")
_CHAT = flags.DEFINE_enum("chat_template", "auto", ["auto", "none"],
                          "auto: the checkpoint's chat template; none: plain prompts.")
_GEN = flags.DEFINE_integer("gen_length", 256, "Tokens to generate (L).")
_BLOCK = flags.DEFINE_integer("block_length", None, "Block length (default: gen_length, "
                              "full diffusion).")
_TEMPERATURE = flags.DEFINE_float("temperature", None, "dLLM token temperature (default: "
                                  "argmax).")
_POLICY_TEMPERATURE = flags.DEFINE_float("policy_temperature", 1.0,
                                         "Unmask with probability sigmoid(logit / this).")
_ALPHA = flags.DEFINE_float("alpha", 1.0, "Reward correct * ((L - NFE + 1) / L) ** alpha.")
_GROUP = flags.DEFINE_integer("group_size", 8, "Rollouts per prompt (G).")
_PROMPTS = flags.DEFINE_integer("prompts_per_step", 4, "Prompts per training step.")
_STEPS = flags.DEFINE_integer("num_steps", 1000, "Training steps.")
_ITERATIONS = flags.DEFINE_integer("iterations", 2, "Optimiser steps per batch of rollouts.")
_CLIP = flags.DEFINE_float("clip_eps", 0.5, "Ratio clipping.")
_LR = flags.DEFINE_float("learning_rate", 3e-5, "Peak Adam learning rate (cosine decay).")
_WARMUP = flags.DEFINE_integer("warmup_steps", 100, "Linear warm-up (optimiser steps).")
_WD = flags.DEFINE_float("weight_decay", 0.1, "AdamW weight decay.")
_GRAD_CLIP = flags.DEFINE_float("grad_clip", 0.2, "Global gradient-norm clip.")
_ENTROPY = flags.DEFINE_float("entropy_coef", 0.0, "Entropy bonus (per masked position).")
_DROP = flags.DEFINE_bool("drop_zero_variance", False, "Average the objective over groups whose "
                          "rewards differ.")
_IMITATE = flags.DEFINE_float("imitate_threshold", None, "Warm start: first imitate "
                              "Threshold(tau)'s decisions for --imitation_steps steps.")
_IMITATION_STEPS = flags.DEFINE_integer("imitation_steps", 0, "Warm-start steps.")
_IMITATION_LR = flags.DEFINE_float("imitation_learning_rate", 1e-3, "Warm-start Adam lr.")
_IMITATION_ITERATIONS = flags.DEFINE_integer("imitation_iterations", 4, "Warm-start Adam steps "
                                             "per batch of rollouts.")
_IMITATION_COSINE = flags.DEFINE_bool("imitation_cosine", False, "Decay the warm start's lr "
                                      "to 0 by a cosine over its steps.")
_CKPT_EVERY = flags.DEFINE_integer("checkpoint_every", 50, "Save every N steps.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the policy init, prompt order and rollouts.")
_MESH = flags.DEFINE_string("mesh", "data=-1,model=1", "data=D,model=M (-1: the rest).")
_OUTPUT = flags.DEFINE_string("output_dir", None, "Checkpoints and metrics.", required=True)
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "Multi-host coordinator.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-host process count.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "jax.distributed.initialize() with "
                                 "auto-detected settings.")


def main(argv):
  del argv
  print(f"train_policy: loading {_CHECKPOINT.value} ...", file=sys.stderr, flush=True)
  logging.set_verbosity(logging.WARNING)
  try:
    # Errors a person can fix from the message alone: one line, without a traceback.
    out = user_errors.exit_on_user_error(_train, "--output_dir")
  except KeyboardInterrupt:
    sys.exit(f"\ninterrupted: rerun the same command to resume from the last checkpoint in "
             f"{_OUTPUT.value}")
  print(f"done: policy in {out}")


def _train():
  if pathlib.Path(_OUTPUT.value).is_file():
    raise NotADirectoryError(f"--output_dir {_OUTPUT.value} is a file; name a directory (a new "
                             "one, or a training run's to resume it)")
  from dllm_jax import policy_training  # pylint: disable=import-outside-toplevel
  from dllm_jax.eval import experiment  # pylint: disable=import-outside-toplevel
  experiment.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                                    _DISTRIBUTED.value)
  config = policy_training.GRPOConfig(
      seed=_SEED.value, num_steps=_STEPS.value, prompts_per_step=_PROMPTS.value,
      group_size=_GROUP.value, alpha=_ALPHA.value, clip_eps=_CLIP.value,
      iterations=_ITERATIONS.value, learning_rate=_LR.value, warmup_steps=_WARMUP.value,
      weight_decay=_WD.value, grad_clip=_GRAD_CLIP.value, checkpoint_every=_CKPT_EVERY.value,
      entropy_coef=_ENTROPY.value, drop_zero_variance=_DROP.value,
      imitate_threshold=_IMITATE.value, imitation_steps=_IMITATION_STEPS.value,
      imitation_learning_rate=_IMITATION_LR.value,
      imitation_iterations=_IMITATION_ITERATIONS.value,
      imitation_cosine=_IMITATION_COSINE.value)
  return policy_training.train_from_checkpoint(
      checkpoint_dir=_CHECKPOINT.value, tokenizer_dir=_TOKENIZER.value, data_path=_DATA.value,
      limit=_LIMIT.value, chat_template=_CHAT.value, mesh_spec=_MESH.value,
      output_dir=_OUTPUT.value, policy_temperature=_POLICY_TEMPERATURE.value, config=config,
      sampler_fields={"gen_length": _GEN.value, "block_length": _BLOCK.value,
                      "temperature": _TEMPERATURE.value})


if __name__ == "__main__":
  app.run(main)
