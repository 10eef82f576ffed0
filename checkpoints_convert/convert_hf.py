r"""Converts a LLaDA, Dream or WeDLM Hugging Face checkpoint (safetensors) to a dllm_jax checkpoint.

  python -m checkpoints_convert.convert_hf --hf_dir=/path/to/LLaDA-8B-Instruct \
      --out_dir=/path/to/llada_8b_instruct

With --hub_id (needs the `convert` extra and network access) the checkpoint is first downloaded
from the Hugging Face hub into --hf_dir.
"""

import sys

import tqdm
from absl import app, flags, logging

from dllm_jax import checkpoint, user_errors

_HF_DIR = flags.DEFINE_string("hf_dir", None, "HF checkpoint directory (config.json + safetensors).",
                              required=True)
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Where to write the Orbax checkpoint.",
                               required=True)
_HUB_ID = flags.DEFINE_string("hub_id", None, "Download this hub repo into --hf_dir first, "
                              "e.g. GSAI-ML/LLaDA-8B-Instruct.")
_PARAM_DTYPE = flags.DEFINE_enum("param_dtype", None, ["float32", "bfloat16", "float16"],
                                 "Storage dtype (default: the checkpoint's).")
_DTYPE = flags.DEFINE_enum("dtype", None, ["float32", "bfloat16", "float16"],
                           "Compute dtype recorded in the config (default: param_dtype).")
_BUFFER_MB = flags.DEFINE_integer("buffer_mb", 64, "Host memory to fill before each write.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing --out_dir.")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # Orbax logs every step of its work at INFO
  if _HUB_ID.value:
    try:
      from huggingface_hub import snapshot_download  # pylint: disable=import-outside-toplevel
    except ImportError as e:
      raise app.UsageError("--hub_id needs huggingface_hub: pip install 'dllm_jax[convert]'") from e
    snapshot_download(_HUB_ID.value, local_dir=_HF_DIR.value,
                      allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.py"])
  bar = tqdm.tqdm(unit="tensor", file=sys.stderr, disable=None)  # off outside a terminal

  def progress(done: int, total: int) -> None:
    bar.total = total
    bar.update(done - bar.n)

  try:
    config = user_errors.exit_on_user_error(lambda: checkpoint.convert_hf(
        _HF_DIR.value, _OUT_DIR.value, param_dtype=_PARAM_DTYPE.value, dtype=_DTYPE.value,
        overwrite=_OVERWRITE.value, buffer_bytes=_BUFFER_MB.value * 2**20, progress=progress),
                                            "--out_dir")
  finally:
    bar.close()
  print(f"wrote {_OUT_DIR.value} ({config.family}, {config.num_layers} layers, params "
        f"{config.param_dtype})")


if __name__ == "__main__":
  app.run(main)
