r"""Writes a dllm_jax checkpoint back as Hugging Face safetensors in its family's key layout.

  python -m checkpoints_convert.export_hf --ckpt_dir=/path/to/llada_jax --out_dir=/path/to/hf
"""

from absl import app, flags, logging

from dllm_jax import checkpoint

_CKPT_DIR = flags.DEFINE_string("ckpt_dir", None, "dllm_jax checkpoint directory.", required=True)
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Output HF checkpoint directory.", required=True)
_MAX_SHARD_GB = flags.DEFINE_float("max_shard_gb", 5.0, "Largest safetensors shard, in GiB.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing --out_dir.")


def main(argv):
  del argv
  files = checkpoint.export_hf(_CKPT_DIR.value, _OUT_DIR.value,
                               max_shard_bytes=int(_MAX_SHARD_GB.value * 2**30),
                               overwrite=_OVERWRITE.value)
  logging.info("wrote %d file(s) to %s", len(files), _OUT_DIR.value)


if __name__ == "__main__":
  app.run(main)
