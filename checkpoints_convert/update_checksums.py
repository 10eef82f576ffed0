r"""Rewrites a dllm_jax checkpoint's checksums.json to cover config.json and the tokenizer files as
they are now (a checkpoint written by an older dllm_jax, or one whose config.json or tokenizer
files were changed on purpose). The params/ files are first checked against their checksums.

  python -m checkpoints_convert.update_checksums --ckpt_dir=/path/to/llada_jax
"""

from absl import app, flags, logging

from dllm_jax import checkpoint, user_errors

_CKPT_DIR = flags.DEFINE_string("ckpt_dir", None, "dllm_jax checkpoint directory.", required=True)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # Orbax logs every step of its work at INFO
  path = user_errors.exit_on_user_error(lambda: checkpoint.update_checksums(_CKPT_DIR.value))
  print(f"wrote {path}")


if __name__ == "__main__":
  app.run(main)
