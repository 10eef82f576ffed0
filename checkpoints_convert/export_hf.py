r"""Writes a dllm_jax checkpoint back as Hugging Face safetensors in its family's key layout, with
the tokenizer files the checkpoint carries.

  python -m checkpoints_convert.export_hf --ckpt_dir=/path/to/llada_jax --out_dir=/path/to/hf
"""

from absl import app, flags, logging

from dllm_jax import checkpoint, user_errors

_CKPT_DIR = flags.DEFINE_string("ckpt_dir", None, "dllm_jax checkpoint directory.", required=True)
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Output HF checkpoint directory.", required=True)
_MAX_SHARD_GB = flags.DEFINE_float("max_shard_gb", 5.0, "Largest safetensors shard, in GiB.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing --out_dir.")
_VERIFY = flags.DEFINE_bool("verify_checkpoint", True, "Check the checkpoint's files against "
                            "their checksums first (--noverify_checkpoint skips it).")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # Orbax logs every step of its work at INFO
  files = user_errors.exit_on_user_error(lambda: checkpoint.export_hf(
      _CKPT_DIR.value, _OUT_DIR.value, max_shard_bytes=int(_MAX_SHARD_GB.value * 2**30),
      overwrite=_OVERWRITE.value, verify_checksums=_VERIFY.value), "--out_dir")
  print(f"wrote {_OUT_DIR.value} ({len(files)} safetensors file(s), config.json, tokenizer "
        "files)")


if __name__ == "__main__":
  app.run(main)
