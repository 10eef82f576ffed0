r"""Trains a built-in model (a tiny masked diffusion model) on CPU; resumable.

  python -m experiments.train_tiny --workdir=/tmp/countdown_train \
      --export_dir=dllm_jax/assets/countdown_tiny
  python -m experiments.train_tiny --task=lagged_difference --steps=2000 --batch_size=128 \
      --workdir=/tmp/lagged_difference_train --export_dir=dllm_jax/assets/lagged_difference_tiny
  python -m experiments.train_tiny --task=grid_path --steps=1000 --batch_size=128 \
      --workdir=/tmp/grid_path_train --export_dir=dllm_jax/assets/grid_path_tiny

Checkpoints (params, optimizer state, step) go to --workdir every --checkpoint_every steps; a
rerun with the same flags resumes from the latest one. At the end the parameters are written
with `dllm_jax.checkpoint.save` to --export_dir, beside train_config.json and train_log.txt.
"""

import dataclasses
import json
import pathlib
import shutil
import time

from absl import app, flags, logging

_WORKDIR = flags.DEFINE_string("workdir", None, "Training checkpoints.", required=True)
_EXPORT = flags.DEFINE_string("export_dir", None, "Where to write the trained model.")
_TASK = flags.DEFINE_enum("task", "countdown", ["countdown", "lagged_difference", "grid_path"],
                          "countdown: 3-7 token expressions; lagged_difference: up to 32 digits; "
                          "grid_path: Hamiltonian paths of 16-19 cells.")
_NUM_NUMBERS = flags.DEFINE_integer("num_numbers", 3, "Numbers per Countdown problem.")
_MAX_NUMBER = flags.DEFINE_integer("max_number", 9, "Numbers are 1..max_number.")
_GEN_LENGTH = flags.DEFINE_integer("gen_length", 32, "lagged_difference: generated tokens.")
_HIDDEN = flags.DEFINE_integer("hidden_size", 128, "Model width.")
_LAYERS = flags.DEFINE_integer("num_layers", 4, "Transformer blocks.")
_STEPS = flags.DEFINE_integer("steps", 4000, "Optimizer steps.")
_BATCH = flags.DEFINE_integer("batch_size", 256, "Sequences per step.")
_LR = flags.DEFINE_float("learning_rate", 2e-3, "Peak learning rate (AdamW, cosine decay).")
_SEED = flags.DEFINE_integer("seed", 0, "Initialisation, masking and batch seed.")
_CHECKPOINT_EVERY = flags.DEFINE_integer("checkpoint_every", 250, "Steps between checkpoints.")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # Orbax logs every step of its work at INFO
  import numpy as np  # pylint: disable=import-outside-toplevel
  from dllm_jax import checkpoint, models, training  # pylint: disable=import-outside-toplevel
  from dllm_jax.tasks import builtin, countdown, countdown_data, grid_path, lagged_difference  # pylint: disable=import-outside-toplevel

  if _TASK.value == "countdown":
    task = countdown.CountdownTask(num_numbers=_NUM_NUMBERS.value, max_number=_MAX_NUMBER.value)
    canvas = countdown_data.prompt_width(task) + countdown_data.gen_length(task)
  elif _TASK.value == "grid_path":
    task = grid_path.GridPathTask()
    canvas = task.prompt_width + task.gen_length
  else:
    task = lagged_difference.LaggedDifferenceTask(gen_length=_GEN_LENGTH.value)
    canvas = task.prompt_width + task.gen_length
  tokenizer = builtin.task_tokenizer(task)
  model_config = builtin.tiny_model_config(tokenizer, canvas, _HIDDEN.value, _LAYERS.value)
  train_config = training.TrainConfig(
      seed=_SEED.value, num_steps=_STEPS.value, batch_size=_BATCH.value,
      learning_rate=_LR.value, checkpoint_every=_CHECKPOINT_EVERY.value)
  workdir = pathlib.Path(_WORKDIR.value)
  workdir.mkdir(parents=True, exist_ok=True)
  log_path = workdir / "train_log.txt"  # appended to across resumed invocations

  def log(line):
    with open(log_path, "a") as f:
      f.write(line + "\n")
    print(line, flush=True)

  if _TASK.value == "countdown":
    bank = countdown_data.AnswerBank.build(task, tokenizer)
    log(f"{bank.num_problems} training problems, {len(bank.answers_MG)} answers")
    batch_fn = lambda step: bank.sample_batch(np.random.default_rng([train_config.seed, step]),
                                              train_config.batch_size)
  elif _TASK.value == "grid_path":
    bank = grid_path.PathBank.build(task)  # every training problem, all their answers
    log(f"{len(bank.problems)} training problems, {len(bank.answers_MG)} answers")
    batch_fn = lambda step: bank.sample_batch(np.random.default_rng([train_config.seed, step]),
                                              train_config.batch_size)
  else:
    batch_fn = lambda step: lagged_difference.sample_batch(
        task, tokenizer, np.random.default_rng([train_config.seed, step]), train_config.batch_size)
  log(f"{models.param_count(models.init_params(model_config))} parameters")

  start = time.time()
  params, _ = training.train(model_config, train_config, batch_fn, _WORKDIR.value, log=log)
  log(f"wall time of this invocation: {time.time() - start:.0f} s")
  if _EXPORT.value:
    export = pathlib.Path(_EXPORT.value)
    checkpoint.save(export, params, model_config, overwrite=True)
    (export / "train_config.json").write_text(json.dumps(
        {"task": builtin.task_record(task), "model": dataclasses.asdict(model_config), "train": train_config.to_dict()},
        indent=2))
    shutil.copy(log_path, export / "train_log.txt")
    print(f"wrote {export}")


if __name__ == "__main__":
  app.run(main)
