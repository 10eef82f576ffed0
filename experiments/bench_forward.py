"""Forward-pass tokens/s, JAX vs the PyTorch reference, and the HF converter's speed and memory.

  python -m experiments.bench_forward --out_json=/tmp/bench_forward.json

Prints two markdown tables (forward pass; converter) and writes everything to --out_json.
Goals: JAX >= 1.0x PyTorch forward speed; converter peak RSS <= 2x the largest shard.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import tempfile

from absl import app, flags

from dllm_jax import models
from experiments import benchlib, converter_benchmark, forward_benchmark

_HIDDEN = flags.DEFINE_integer("hidden_size", 768, "Model width (llada_sized).")
_LAYERS = flags.DEFINE_integer("num_layers", 12, "Transformer blocks.")
_VOCAB = flags.DEFINE_integer("vocab_size", 32000, "Vocabulary size.")
_SETTINGS = flags.DEFINE_string("settings", "1x256,8x256,4x512",
                                 "Comma-separated BxL, float32 (empty: none).")
_BF16_SETTINGS = flags.DEFINE_string("bf16_settings", "1x256",
                                     "Comma-separated BxL, bfloat16 weights and compute (empty: "
                                     "none). Neither side has native bf16 matmuls on AVX2 CPUs.")
_REPEATS = flags.DEFINE_integer("repeats", 7, "Timed calls per side and setting.")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed calls per side and setting.")
_REFERENCE = flags.DEFINE_enum("reference", "llada_torch", forward_benchmark.REFERENCES,
                               "PyTorch reference: plain LLaDATorch or transformers Llama+SDPA.")
_PEAK_N = flags.DEFINE_integer("peak_n", 2048, "Size of the square matmul that measures peak.")
_CONVERTER = flags.DEFINE_bool("converter", True, "Also benchmark checkpoint.convert_hf.")
_CONV_DIMS = flags.DEFINE_list("converter_dims", ["1024", "16", "2816", "32000"],
                               "d_model, n_layers, mlp_hidden, vocab of the converted checkpoint "
                               "(default: 271M params, 1.08 GB float32).")
_CONV_SHARDS = flags.DEFINE_integer("converter_shards", 5, "Shards of the converted checkpoint.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Scratch directory (default: a temp dir).")
_OUT_JSON = flags.DEFINE_string("out_json", "/tmp/dllm_jax_bench/bench_forward.json",
                                "Where to write the JSON report.")


def main(argv):
  del argv
  config = models.llada_sized(_HIDDEN.value, _LAYERS.value, vocab_size=_VOCAB.value)
  n_params = models.param_count(models.abstract_params(config))
  info = benchlib.machine_info()
  print(f"model llada_sized({_HIDDEN.value}, {_LAYERS.value}, vocab_size={_VOCAB.value}): "
        f"{n_params:,} parameters ({benchlib.matmul_params(config):,} in matmuls); "
        f"{info['cpu']} x {info['cpu_count']}, load {info['load_avg_start'][0]:.1f}")
  peak = benchlib.matmul_peak(_PEAK_N.value)
  print(f"float32 matmul peak: {peak['peak_gflops']:.0f} GFLOP/s (jax {peak['jax_gflops']:.0f}, "
        f"numpy {peak['numpy_gflops']:.0f}, torch {peak['torch_gflops']:.0f})", flush=True)
  plan = {"float32": benchlib.parse_settings(_SETTINGS.value),
          "bfloat16": benchlib.parse_settings(_BF16_SETTINGS.value)}
  rows = forward_benchmark.run(config, plan, _REPEATS.value, _WARMUP.value, _REFERENCE.value,
                               peak["peak_gflops"])
  report = {"machine": info, "model": {"config": dataclasses.asdict(config), "params": n_params,
                                       "matmul_params": benchlib.matmul_params(config)},
            "reference": _REFERENCE.value, "matmul_peak": peak, "forward": rows}
  print(f"\nForward pass ({_REFERENCE.value} reference; speed ratio = torch time / JAX time)\n")
  print(forward_benchmark.table(rows))
  if _CONVERTER.value:
    d_model, n_layers, mlp_hidden, vocab = (int(x) for x in _CONV_DIMS.value)
    with tempfile.TemporaryDirectory(dir=_WORKDIR.value) as scratch:
      conv = converter_benchmark.run(pathlib.Path(scratch) / "ckpt", d_model, n_layers,
                                     mlp_hidden, vocab, _CONV_SHARDS.value)
    report["converter"] = conv
    print("\n" + converter_benchmark.table(conv))
  report["machine"]["load_avg_end"] = os.getloadavg()
  benchlib.write_json(_OUT_JSON.value, report)


if __name__ == "__main__":
  app.run(main)
