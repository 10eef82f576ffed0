"""One prepared accelerator benchmark: LLaDA-8B shapes in bfloat16 on one device, against LLaDA's
PyTorch loop on the same device; then LLaDA2.0-mini (mixture of experts, block diffusion) against
its official PyTorch generate.

  PYTHONPATH=. python -m experiments.bench_accelerator --out_dir=/tmp/bench_acc [--quick]
  PYTHONPATH=. python -m experiments.bench_accelerator --plan_only   # the estimate below; no device

It runs from the checkout without installing the project: it imports dllm_jax.models, .sampling
and .sharding, experiments.benchlib and tests/torch_ref (torch optional), never the data/eval
stack, TFDS, math-verify or tokenizers. The weights are random, in the real shapes, created on the
device by one compiled init with the parameter shardings as outputs (no checkpoint, no host copy);
the PyTorch model reads the same device buffers through DLPack, so both loops decode with the same
weights and no second copy of them exists.

Sections, in the order they run (an error in a setting is recorded in the JSON and the next one
runs; if one side of a comparison fails, the other side's figures are kept):
  matmul_peak      chains of n x n x n matmuls in the dtype, in JAX and in torch; the larger
                   median rate is the denominator of every MFU
  forward          the forward pass (logits at every position) at each B x L: ms, TFLOP/s, MFU
  decode           low-confidence remasking, gen 256, block 32, 2 tokens per step (128 steps),
                   greedy: the compiled JAX loop and LLaDA's `generate` as a PyTorch eager loop
                   (tests/torch_ref, SDPA, same dtype and device), timed alternately; speed ratio
  threshold_cache  Threshold(0.9) with the block cache (Fast-dLLM's dual cache)
  imh              IMH, K = 4 candidates, alpha 2, random positions, 2 tokens per step
  wedlm            WeDLM-8B streaming decoding (`sampling.stream_generate`: exact prefix cache,
                   window 16, one token per step, no stop tokens) at B in {1, 8}, its own random
                   weights made on the device after LLaDA's (both fit: 15 + 15 GiB)
  llada2_forward   LLaDA2.0-mini (DESIGN.md §14: width 2048, 20 layers, 16:4 heads, 256 experts
                   top 8 + 1 shared of width 512, layer 0 dense 5120, vocab 157,184; 16.26B
                   parameters, 30.3 GiB in bf16, its own random weights made on the device at
                   the first LLaDA2 setting and dropped after the last) forward at 8 x 1024:
                   ms and MFU from the model FLOPs of the ACTIVE parameters (1.11B in matmuls:
                   attention, the router, 8 routed experts and the shared one, the LM head), not
                   of all 15.9B
  llada2_decode    LLaDA2's official default rule (threshold 0.95 with the scheduled fallback,
                   block 32, 32 steps per block, temperature 0) with the exact block cache (the
                   loop of `block_diffusion.generate_blocks`), gen 256 after a 32-token prompt, no
                   EOS, at B in {1, 8, 32}, against the official generate as reimplemented in
                   tests/torch_ref/llada2_torch.py on the same GPU and the same weights (DLPack
                   views of the JAX buffers; only the fused query_key_value weights are copied):
                   one prompt at a time (the official generate takes one), the canvas recomputed
                   up to the current block every step, the experts run in a Python loop as the
                   official `moe_infer` does. That loop is slow, so it decodes the first
                   --llada2_torch_rows (1) rows of each batch, --llada2_torch_gen_length (64)
                   tokens each; its tokens/s does not depend on B (rows go one at a time) and its
                   shorter canvas favours it, so JAX/torch (the tokens/s ratio) is conservative.
                   Also: ms per step on both sides, JAX MFU (active FLOPs; attention charged over
                   the whole canvas, as computed), tokens per forward, and the share of the
                   torch rows' tokens the JAX loop decoded identically (bf16: close to, not
                   necessarily, 1; float32 tiny: 1, tested)
Every decode program's lowering and compile time is reported (goal: <= 60 s each).
FLOPs are model FLOPs (benchlib.forward_flops: 2 x matmul parameters per token + attention),
each side charged with what it computes: the JAX loop applies the LM head to the current block
only, LLaDA's loop to every position, IMH's candidate passes to every position; the block cache
counts one full pass per block and W-token window passes against the cached keys otherwise.
With random weights no draw reaches probability 0.9, so Threshold commits one token per step (its
worst case, 256 steps); its ms per step is the figure that carries over to real weights. The same
holds for LLaDA2's threshold 0.95 (32 steps per block, + 1 closing pass per block for the cache).

Timing: every program runs once untimed (its time is recorded as `warmup_s`; the PyTorch loop,
which compiles nothing, warms up with one forward pass of its shape), then the contenders
are called in alternating order; figures are the median of the timed runs (best also recorded).
Timed runs per setting: as many as fit in --setting_seconds, at least --min_repeats, at most
--repeats. Before each setting its cost is estimated (FLOPs at the measured peak and
--assumed_mfu, weight streaming at --assumed_bandwidth_gbs, compile at the mean measured so far);
a setting that would overrun --budget_s is skipped and recorded as skipped. Results are written to
--out_dir/bench_accelerator.json after every setting, so a timeout still returns figures.

Budget (`--plan_only` prints the estimate; assumptions: 790 TFLOP/s bf16 peak, as PyTorch measured
on an H200 of this workplace, 60% MFU, weights streamed at 4,000 GB/s, 20 s per compile (32-layer
decode programs compile in 6-10 s on 2 CPU cores at width 256), 5 ms of PyTorch eager overhead per
step, 50 us per expert with tokens per MoE layer in the official LLaDA2 PyTorch loop). One forward
of [B, 288] costs 4.1 TFLOP per row, so a low-confidence run (128 steps) is
about 1.3 s at B = 1 (weight-bound), 7 s at B = 8 and 35 s at B = 32; IMH at B = 8 evaluates 32
canvases a step (about 38 s a run). LLaDA2.0-mini: a 32-token window pass costs 2.3 GFLOP per
token (active), under the 8 ms of streaming its 31.9 GB of matmul weights even at B = 32, so a
JAX run (256 steps) is about 2.1 s at every B; the official generate is about 0.24 s a step
(0.23 s of it the assumed expert-loop overhead), 15.6 s for its 64 steps. Estimated settings, s
(compile + warm-up + timed runs):
  forward 1x1024 20, 8x1024 22, 32x512 23; decode (JAX + PyTorch) B=1 36, B=8 67, B=32 203;
  threshold_cache B=1 26, B=8 36; imh B=8 134; wedlm B=1 26, B=8 33 (weight-bound, 256 steps of a
  16-token window); llada2_forward 8x1024 20; llada2_decode (JAX + PyTorch) B=1, 8, 32 57 each:
  815 s, plus about 35 s of imports, init and peak (and WeDLM's and LLaDA2's inits).
So the whole plan needs about 14.5 min at these assumptions. With --budget_s=450 the full run stops
starting settings that would end later: at the assumptions it measures everything up to
threshold_cache B=1 in about 7.2 min, skips threshold_cache B=8, IMH, WeDLM and LLaDA2, and
prints the flags that run just those (about 7 min more; run the LLaDA2 part alone, about 4 min
with set-up, with --sections=matmul_peak,llada2_forward,llada2_decode):
  --sections=matmul_peak,threshold_cache,imh,wedlm,llada2_forward,llada2_decode \
      --cache_batches=8 --imh_batches=8 --wedlm_batches=1,8 --llada2_forward_shapes=8x1024 \
      --llada2_batches=1,8,32
--quick (--budget_s=170): forward 8x1024, decode B in {1, 8} with PyTorch, threshold_cache B=1,
wedlm B=1, no LLaDA2; about 3 min (the guard drops the last of these if the device is slower than
assumed).
Memory: the 8.0B bf16 weights take 14.9 GiB once (PyTorch aliases them); the largest transient is
the forward at 32 x 512, whose float32 logits alone are 8.3 GB; the PyTorch loop at B = 32 holds
about 11 GB of logits and softmax, IMH at B = 8 about 15 GB: under 50 GB in all, well inside an
H200's ~139 GiB. LLaDA2.0-mini adds its 30.3 GiB while its sections run (with LLaDA's and WeDLM's
30 GiB: about 60 GiB of weights), its forward at 8 x 1024 5.2 GB of float32 logits. JAX does
not preallocate (so PyTorch can share the device) unless XLA_PYTHON_CLIENT_PREALLOCATE is set.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import time
from typing import Any

_T0 = time.perf_counter()  # the time budget counts from here, imports included
# Before jax is imported: JAX and PyTorch share one device, and JAX would take 75% of it.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

from absl import app, flags  # noqa: E402

from dllm_jax import models  # noqa: E402
from experiments import accelerator_benchmark as acc  # noqa: E402
from experiments import accelerator_plan, benchlib  # noqa: E402

_OUT_DIR = flags.DEFINE_string("out_dir", "/tmp/dllm_jax_bench/accelerator",
                               "Directory for bench_accelerator.json and bench_accelerator.md.")
_QUICK = flags.DEFINE_bool("quick", False, "The short plan (about 3 min on an H200); flags "
                           "given explicitly still win.")
_PLAN_ONLY = flags.DEFINE_bool("plan_only", False, "Print the estimated plan and exit.")
_COMPILE_ONLY = flags.DEFINE_bool("compile_only", False, "Compile every program, run none "
                                  "(compile times only).")
_SECTIONS = flags.DEFINE_list("sections", list(accelerator_plan.SECTION_NAMES),
                              "Sections to run.")
_MODEL = flags.DEFINE_enum("model", "llada_8b", ["llada_8b", "llada_tiny"], "Model preset.")
_OVERRIDES = flags.DEFINE_list("overrides", [], "ModelConfig fields to change, as name=value "
                               "(for small CPU runs, e.g. num_layers=32,max_length=512).")
_DTYPE = flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float32"],
                           "Weights and compute, both sides.")
_SEED = flags.DEFINE_integer("seed", 0, "Weight and prompt seed.")
_FORWARD_SHAPES = flags.DEFINE_string("forward_shapes", "1x1024,8x1024,32x512",
                                      "Comma-separated BxL of the forward section.")
_GEN = flags.DEFINE_integer("gen_length", 256, "Generated tokens.")
_BLOCK = flags.DEFINE_integer("block_length", 32, "Semi-autoregressive block.")
_PROMPT = flags.DEFINE_integer("prompt_length", 32, "Prompt tokens (random, no padding).")
_TOKENS_PER_STEP = flags.DEFINE_integer("tokens_per_step", 2,
                                        "Low-confidence and IMH: steps = gen_length / this.")
_DECODE_BATCHES = flags.DEFINE_list("decode_batches", ["1", "8", "32"], "Low-confidence B.")
_CACHE_BATCHES = flags.DEFINE_list("cache_batches", ["1", "8"], "Threshold + block cache B.")
_IMH_BATCHES = flags.DEFINE_list("imh_batches", ["8"], "IMH B.")
_IMH_K = flags.DEFINE_integer("imh_candidates", 4, "IMH K.")
_WEDLM_BATCHES = flags.DEFINE_list("wedlm_batches", ["1", "8"], "WeDLM streaming B.")
_WEDLM_MODEL = flags.DEFINE_enum("wedlm_model", "wedlm_8b", ["wedlm_8b", "wedlm_tiny"],
                                 "Model preset of the WeDLM section (in --dtype).")
_LLADA2_MODEL = flags.DEFINE_enum("llada2_model", "llada2_mini", ["llada2_mini", "llada2_tiny"],
                                  "Model preset of the LLaDA2 sections (in --dtype).")
_LLADA2_FORWARD = flags.DEFINE_string("llada2_forward_shapes", "8x1024",
                                      "Comma-separated BxL of the LLaDA2 forward section.")
_LLADA2_BATCHES = flags.DEFINE_list("llada2_batches", ["1", "8", "32"], "LLaDA2 decode B.")
_LLADA2_GEN = flags.DEFINE_integer("llada2_gen_length", 256, "LLaDA2 decode: JAX's generated "
                                   "tokens per row.")
_LLADA2_TORCH_GEN = flags.DEFINE_integer("llada2_torch_gen_length", 64, "LLaDA2 decode: the "
                                         "official PyTorch generate's tokens per row.")
_LLADA2_TORCH_ROWS = flags.DEFINE_integer("llada2_torch_rows", 1, "LLaDA2 decode: rows of each "
                                          "batch the official generate decodes (one at a time).")
_TORCH = flags.DEFINE_enum("torch", "auto", ["auto", "on", "off"],
                           "PyTorch loop: auto = only where it runs on a GPU (JAX's); on = "
                           "wherever JAX runs (CPU too); off = never.")
_PEAK_N = flags.DEFINE_integer("peak_n", 8192, "Size of the peak matmul.")
_PEAK_CHAIN = flags.DEFINE_integer("peak_chain", 10, "Matmuls per timed call of the peak.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Most timed runs per setting.")
_MIN_REPEATS = flags.DEFINE_integer("min_repeats", 2, "Fewest timed runs per setting.")
_SETTING_SECONDS = flags.DEFINE_float("setting_seconds", 45.0,
                                      "Timed runs per setting: as many as fit in this.")
_BUDGET = flags.DEFINE_float("budget_s", 450.0, "Skip settings estimated to end after this many "
                             "seconds from the start (0: no budget).")
_ASSUMED_PEAK = flags.DEFINE_float("assumed_peak_tflops", 790.0, "Peak for --plan_only.")
_ASSUMED_MFU = flags.DEFINE_float("assumed_mfu", 0.6, "Fraction of peak the estimates assume.")
_ASSUMED_BW = flags.DEFINE_float("assumed_bandwidth_gbs", 4000.0,
                                 "Weight-streaming rate the estimates assume.")
_ASSUMED_COMPILE = flags.DEFINE_float("assumed_compile_s", 20.0,
                                      "Compile time the estimates assume before one is measured.")

_QUICK_DEFAULTS = {"forward_shapes": "8x1024", "decode_batches": ["1", "8"],
                   "cache_batches": ["1"], "imh_batches": [], "wedlm_batches": ["1"],
                   "llada2_forward_shapes": "", "llada2_batches": [],
                   "setting_seconds": 12.0, "budget_s": 170.0}


def _flag(holder: flags.FlagHolder) -> Any:
  """The flag's value, or its --quick default when --quick is on and it was not given."""
  if _QUICK.value and not flags.FLAGS[holder.name].present and holder.name in _QUICK_DEFAULTS:
    return _QUICK_DEFAULTS[holder.name]
  return holder.value


def _ints(holder: flags.FlagHolder) -> tuple[int, ...]:
  return tuple(int(x) for x in _flag(holder))


def model_config() -> models.ModelConfig:
  config = models.PRESETS[_MODEL.value](dtype=_DTYPE.value, param_dtype=_DTYPE.value)
  fields = {f.name for f in dataclasses.fields(models.ModelConfig)}
  changes = {}
  for item in _OVERRIDES.value:
    name, _, value = item.partition("=")
    if name not in fields or not value:
      raise app.UsageError(f"--overrides item {item!r}: expected name=value with name one of "
                           f"{sorted(fields)}")
    current = getattr(config, name)
    if isinstance(current, bool):
      changes[name] = value.lower() in ("1", "true")
    else:
      changes[name] = type(current)(value) if current is not None else int(value)
  return config.replace(**changes)


def settings_from_flags() -> accelerator_plan.Settings:
  try:
    return accelerator_plan.Settings(
        config=model_config(), sections=tuple(_SECTIONS.value),
        forward_shapes=tuple(benchlib.parse_settings(_flag(_FORWARD_SHAPES))),
        gen_length=_GEN.value, block_length=_BLOCK.value, prompt_length=_PROMPT.value,
        tokens_per_step=_TOKENS_PER_STEP.value, decode_batches=_ints(_DECODE_BATCHES),
        cache_batches=_ints(_CACHE_BATCHES), imh_batches=_ints(_IMH_BATCHES),
        imh_candidates=_IMH_K.value, wedlm_batches=_ints(_WEDLM_BATCHES),
        wedlm_config=models.PRESETS[_WEDLM_MODEL.value](dtype=_DTYPE.value,
                                                        param_dtype=_DTYPE.value),
        llada2_config=models.PRESETS[_LLADA2_MODEL.value](dtype=_DTYPE.value,
                                                          param_dtype=_DTYPE.value),
        llada2_forward_shapes=tuple(benchlib.parse_settings(_flag(_LLADA2_FORWARD))),
        llada2_batches=_ints(_LLADA2_BATCHES), llada2_gen_length=_LLADA2_GEN.value,
        llada2_torch_gen_length=_LLADA2_TORCH_GEN.value,
        llada2_torch_rows=_LLADA2_TORCH_ROWS.value, torch=_TORCH.value,
        seed=_SEED.value, peak_n=_PEAK_N.value, peak_chain=_PEAK_CHAIN.value,
        repeats=_REPEATS.value, min_repeats=_MIN_REPEATS.value,
        setting_seconds=_flag(_SETTING_SECONDS), budget_s=_flag(_BUDGET),
        compile_only=_COMPILE_ONLY.value, assumed_peak_tflops=_ASSUMED_PEAK.value,
        assumed_mfu=_ASSUMED_MFU.value, assumed_bandwidth_gbs=_ASSUMED_BW.value,
        assumed_compile_s=_ASSUMED_COMPILE.value)
  except ValueError as e:
    raise app.UsageError(str(e)) from e


def main(argv):
  del argv
  settings = settings_from_flags()
  if _PLAN_ONLY.value:
    rows = accelerator_plan.plan(settings, with_torch=settings.torch != "off")
    print(benchlib.markdown_table(["section", "setting", "estimated s"], rows))
    print(f"total {sum(r[2] for r in rows):.0f} s of settings (+ set-up and the peak), budget "
          f"{settings.budget_s:.0f} s")
    return
  report = {"flags": {**flags.FLAGS.flag_values_dict(),
                      **{f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)
                         if f.name != "config"}}}
  run = acc.Run(settings, pathlib.Path(_OUT_DIR.value), report, start=_T0)
  text = acc.run_all(run)
  print("\n" + text)
  print(f"\nwrote {run.out_dir / acc.JSON_NAME} and {acc.MD_NAME} ({run.elapsed():.0f} s)")


if __name__ == "__main__":
  app.run(main)
