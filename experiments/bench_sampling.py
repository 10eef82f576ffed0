"""Decoding-loop tokens/s and ms per step: compiled JAX loop vs LLaDA's PyTorch eager loop.

  python -m experiments.bench_sampling --out_json=/tmp/bench_sampling.json

Random LLaDA-layout models ('20m' = llada_sized(256, 8), '100m' = llada_sized(768, 12), vocab
32000), low-confidence remasking, equal NFE on both sides. The default grid leaves out the
largest setting (100m, B=8, G=256) and commits 8 tokens per step to keep the run near 10 minutes
on 2 CPU cores; per-step figures do not depend on the step count. For LLaDA's usual 2 tokens
per step over the full grid (about an hour here):
  --tokens_per_step=2 --grid=20m:1x128,20m:1x256,20m:8x128,20m:8x256,100m:1x128,100m:1x256,\
100m:8x128,100m:8x256
Goals: >= 1.0x the PyTorch loop everywhere, >= 2x at ~20M params, JAX loop overhead <= 10%;
the block cache >= 3x at gen 512 (block 32).

The cache comparison decodes each `--cache_grid` setting without a cache and with the prefix
and dual caches (and the prefix cache's other window choices, `--prefix_variants`), and
reports tokens/s, CPU time and token agreement with the uncached run; `--countdown` (off by
default) adds the agreement on the shipped, trained Countdown model. Only the cache tables, and
Countdown at its own length (about 35 minutes on 2 CPU cores shared with other jobs):
  --grid= --cache_grid=20m:1x256,20m:1x512 --cache_repeats=2 --prefix_variants \
      --countdown=7x7,6x3,6x2
and the Countdown model stretched past its trained canvas (a few minutes):
  --grid= --cache_grid= --countdown=256x32 --countdown_problems=32
"""

from __future__ import annotations

import os

from absl import app, flags, logging

from experiments import benchlib, sampling_benchmark

_GRID = flags.DEFINE_string(
    "grid", "20m:1x128,20m:1x256,20m:8x128,20m:8x256,100m:1x128,100m:1x256,100m:8x128",
    "Comma-separated size:BxG (sizes: 20m, 100m).")
_VOCAB = flags.DEFINE_integer("vocab_size", 32000, "Vocabulary size.")
_PROMPT = flags.DEFINE_integer("prompt_length", 32, "Prompt tokens (no padding).")
_TOKENS_PER_STEP = flags.DEFINE_integer("tokens_per_step", 8, "steps = gen_length / this.")
_BLOCK = flags.DEFINE_integer("block_length", 32, "Semi-autoregressive block length.")
_TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "Token temperature (0 = greedy).")
_LOOP_REPEATS = flags.DEFINE_integer("loop_repeats", 2, "Timed loops per side and setting.")
_FORWARD_REPEATS = flags.DEFINE_integer("forward_repeats", 5, "Timed single forwards per side.")
_PEAK_N = flags.DEFINE_integer("peak_n", 2048, "Size of the square matmul that measures peak.")
_CACHE_GRID = flags.DEFINE_string(
    "cache_grid", "20m:1x256,20m:1x512,100m:1x512",
    "size:BxG settings for the block-cache comparison (empty: skip).")
_CACHE_REPEATS = flags.DEFINE_integer("cache_repeats", 3, "Timed loops per cache setting.")
_CACHE_TOKENS_PER_STEP = flags.DEFINE_integer(
    "cache_tokens_per_step", 2, "Tokens per step in the cache comparison (LLaDA's usual 2: a "
    "block of 32 takes 16 steps, one full pass and 15 over the block's window).")
_PREFIX_VARIANTS = flags.DEFINE_bool(
    "prefix_variants", False, "Also time the prefix cache with a window per block and with one "
    "window of the whole generated region (the cost of the default powers of two).")
_COUNTDOWN = flags.DEFINE_string(
    "countdown", "", "GxBLOCK settings for the caches' token agreement on the trained Countdown "
    "model, e.g. 7x7,6x3,6x2 (empty: skip; its canvas is 13 tokens, longer ones extend it).")
_COUNTDOWN_PROBLEMS = flags.DEFINE_integer(
    "countdown_problems", 200, "Held-out problems (of 221).")
_OUT_JSON = flags.DEFINE_string("out_json", "/tmp/dllm_jax_bench/bench_sampling.json",
                                "Where to write the JSON report.")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # Orbax logs every step of its work at INFO
  info = benchlib.machine_info()
  print(f"{info['cpu']} x {info['cpu_count']}, load {info['load_avg_start'][0]:.1f}")
  peak = benchlib.matmul_peak(_PEAK_N.value)
  print(f"float32 matmul peak: {peak['peak_gflops']:.0f} GFLOP/s (jax {peak['jax_gflops']:.0f}, "
        f"numpy {peak['numpy_gflops']:.0f}, torch {peak['torch_gflops']:.0f})", flush=True)
  rows = [] if not _GRID.value else sampling_benchmark.run(
      sampling_benchmark.parse_grid(_GRID.value), _VOCAB.value, prompt_length=_PROMPT.value,
      tokens_per_step=_TOKENS_PER_STEP.value, block_length=_BLOCK.value,
      temperature=_TEMPERATURE.value, loop_repeats=_LOOP_REPEATS.value,
      forward_repeats=_FORWARD_REPEATS.value, peak_gflops=peak["peak_gflops"])
  if rows:
    print(f"\nDecoding loop, low_confidence, T={_TEMPERATURE.value}, prompt {_PROMPT.value}, "
          f"block {_BLOCK.value}, {_TOKENS_PER_STEP.value} tokens/step; tok/s, ms/step, overhead "
          "and % peak from the best of the repeats; speed = torch time / JAX time\n")
    print(sampling_benchmark.table(rows))
  cache_rows = []
  if _CACHE_GRID.value:
    cache_rows = sampling_benchmark.run_cache(
        sampling_benchmark.parse_grid(_CACHE_GRID.value), _VOCAB.value, _PROMPT.value,
        _CACHE_TOKENS_PER_STEP.value, _BLOCK.value, _CACHE_REPEATS.value,
        _PREFIX_VARIANTS.value)
    print(f"\nBlock caches (Fast-dLLM prefix and dual caches; refreshed at each block), random "
          f"model, greedy low_confidence, block {_BLOCK.value}, {_CACHE_TOKENS_PER_STEP.value} "
          "tokens/step; speed-up over no cache; agreement = generated tokens equal to the "
          "uncached run's\n")
    print(sampling_benchmark.cache_table(cache_rows))
  countdown_rows = []
  if _COUNTDOWN.value:
    countdown_rows = sampling_benchmark.countdown_agreement(
        benchlib.parse_settings(_COUNTDOWN.value), _COUNTDOWN_PROBLEMS.value)
    print(f"\nToken agreement with uncached decoding, trained Countdown model, "
          f"{_COUNTDOWN_PROBLEMS.value} held-out problems, greedy low_confidence, one token per "
          "step; canvases past the trained length are out of its training range\n")
    print(sampling_benchmark.countdown_table(countdown_rows))
  info["load_avg_end"] = os.getloadavg()
  benchlib.write_json(_OUT_JSON.value, {"machine": info, "matmul_peak": peak, "flags": {
      "grid": _GRID.value, "vocab_size": _VOCAB.value, "prompt_length": _PROMPT.value,
      "tokens_per_step": _TOKENS_PER_STEP.value, "block_length": _BLOCK.value,
      "temperature": _TEMPERATURE.value, "loop_repeats": _LOOP_REPEATS.value,
      "forward_repeats": _FORWARD_REPEATS.value, "cache_grid": _CACHE_GRID.value,
      "cache_tokens_per_step": _CACHE_TOKENS_PER_STEP.value,
      "prefix_variants": _PREFIX_VARIANTS.value, "countdown": _COUNTDOWN.value,
      "countdown_problems": _COUNTDOWN_PROBLEMS.value},
      "sampling": rows, "cache": cache_rows, "countdown": countdown_rows})


if __name__ == "__main__":
  app.run(main)
