"""Block diffusion speed on CPU: the exact block cache against recomputing the canvas every step,
and the MoE layer's expert kernels (ragged_dot, tiled) against the dense all-experts oracle.

  python -m experiments.bench_block_diffusion --out_json=/tmp/bench_block_diffusion.json

Prints one markdown table per comparison (ratios measured in this run, the sides timed
alternately) and writes everything to --out_json. Goals (issue 26): cache >= 3x at gen 256,
MoE layer >= 10x the dense oracle at 256 experts. Random weights: the decoder commits the
scheduled token per step (threshold 0.95 is never met), so both sides make the same number of
forward passes.

Measured (2 CPU cores, medians; the README's block diffusion speed paragraph has the rest): the
cache defaults (width 256, 4 layers), load 5-7: cache 4.81x (2.34 s vs 11.3 s);
--hidden_size=128 --num_layers=2 --repeats=3 at load ~8: 2.90x (1.50 s vs 4.35 s, same tokens).
--parts=moe --moe_repeats=20 (512 tokens, width 256), load ~1.9, three runs: tiled 11.6x, 11.8x,
11.3x the dense oracle (e.g. 0.020 s vs 0.234 s), ragged_dot 0.20-0.22x (XLA:CPU masks the rows
over all experts); --moe_tokens=32/128/256/2048: 4.8x/6.9x/8.9x/14.5x; --moe_width=2048
--moe_expert_width=512 --moe_paths=tiled,dense (LLaDA2.0-mini's layer): 8.3x at 256 tokens
(0.675 s vs 5.63 s), 14.8x at 1024 (0.906 s vs 13.4 s).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import numpy as np
from absl import app, flags
from flax import nnx

from dllm_jax import models
from dllm_jax.models.moe import MoE
from dllm_jax.sampling import block_diffusion as bd
from experiments import benchlib

_GEN = flags.DEFINE_integer("gen_length", 256, "Generated tokens.")
_PROMPT = flags.DEFINE_integer("prompt_length", 64, "Prompt tokens.")
_BATCH = flags.DEFINE_integer("batch", 1, "Rows.")
_HIDDEN = flags.DEFINE_integer("hidden_size", 256, "Decoder model width.")
_LAYERS = flags.DEFINE_integer("num_layers", 4, "Decoder model layers.")
_EXPERTS = flags.DEFINE_integer("moe_experts", 256, "Experts of the MoE-layer benchmark.")
_TOKENS = flags.DEFINE_integer("moe_tokens", 512, "Tokens of the MoE-layer benchmark.")
_MOE_WIDTH = flags.DEFINE_integer("moe_width", 256, "Model width of the MoE-layer benchmark "
                                  "(LLaDA2.0-mini: 2048).")
_MOE_EXPERT_WIDTH = flags.DEFINE_integer("moe_expert_width", 64, "Expert hidden width of the "
                                         "MoE-layer benchmark (LLaDA2.0-mini: 512).")
_MOE_PATHS = flags.DEFINE_list("moe_paths", ["ragged_dot", "tiled", "dense"],
                               "MoE expert paths to time (MoE.experts' `path`).")
_MOE_REPEATS = flags.DEFINE_integer("moe_repeats", 10, "Timed calls per MoE path (short calls "
                                    "on a loaded machine need more than the decoders).")
_PARTS = flags.DEFINE_list("parts", ["cache", "moe"], "Which comparisons to run.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls per side.")
_OUT_JSON = flags.DEFINE_string("out_json", "/tmp/dllm_jax_bench/bench_block_diffusion.json",
                                "Where to write the JSON results.")


def _decoder_config() -> models.ModelConfig:
  H = _HIDDEN.value
  return models.llada2_tiny(
      vocab_size=8192, hidden_size=H, num_layers=_LAYERS.value, num_heads=H // 64,
      num_kv_heads=max(1, H // 256), head_dim=64, rotary_dim=32, mlp_hidden_size=4 * H,
      expert_hidden_size=H // 2, num_experts=16, experts_per_token=4, expert_groups=4,
      groups_per_token=2, mask_token_id=8000, eos_token_id=8001, pad_token_id=8001,
      max_length=4096, attention_block=32)


def cache_vs_recompute() -> dict:
  config = _decoder_config()
  params = models.init_params(config, seed=0)
  denoise = models.make_denoise(config)
  prompt = np.random.default_rng(0).integers(0, 7999, (_BATCH.value, _PROMPT.value))
  decoder = bd.BlockDiffusion(gen_length=_GEN.value)
  plain = dataclasses.replace(decoder, exact_cache=False)
  outs = {}

  def run(d, name):
    def call():
      out = bd.generate_blocks(d, denoise, params, prompt, mask_id=8000, eos_id=8001,
                               pad_id=8001)
      outs[name] = out
      return out
    return call

  times = benchlib.time_interleaved({"exact block cache": run(decoder, "cache"),
                                     "recompute canvas": run(plain, "plain")},
                                    _REPEATS.value)
  same = bool((outs["cache"].tokens == outs["plain"].tokens).all())
  return {"config": dataclasses.asdict(config), "times": times, "same_tokens": same,
          "forward_passes": outs["cache"].forward_passes,
          "speedup": times["recompute canvas"]["median_s"] / times["exact block cache"]["median_s"]}


def moe_paths() -> dict:
  """The MoE layer's expert paths against the dense oracle, on one routing, timed alternately."""
  width, expert_width = _MOE_WIDTH.value, _MOE_EXPERT_WIDTH.value
  config = models.llada2_tiny(hidden_size=width, num_experts=_EXPERTS.value, experts_per_token=8,
                              expert_groups=8, groups_per_token=4,
                              expert_hidden_size=expert_width)
  layer = MoE(config, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(layer)
  x = jax.random.normal(jax.random.key(0), (1, _TOKENS.value, width))
  fns = {path: jax.jit(functools.partial(lambda state, x, path: nnx.merge(graphdef, state)(
      x, path=path), path=path)) for path in _MOE_PATHS.value}
  outs = {path: np.asarray(fn(state, x)) for path, fn in fns.items()}
  times = benchlib.time_interleaved(
      {path: functools.partial(lambda fn: fn(state, x).block_until_ready(), fn)
       for path, fn in fns.items()}, _MOE_REPEATS.value, untimed_before=1)
  result = {"experts": _EXPERTS.value, "tokens": _TOKENS.value, "width": width,
            "expert_width": expert_width, "times": times}
  if "dense" in fns:
    result["max_abs_diff"] = {p: float(np.abs(o - outs["dense"]).max()) for p, o in outs.items()}
    result["speedup"] = {p: times["dense"]["median_s"] / t["median_s"] for p, t in times.items()}
  return result


def main(argv):
  del argv
  report = {"machine": benchlib.machine_info()}
  if "cache" in _PARTS.value:
    cache = report["cache"] = cache_vs_recompute()
    print(f"\nBlock diffusion decoding, gen {_GEN.value}, prompt {_PROMPT.value}, batch "
          f"{_BATCH.value}, block 32, {_LAYERS.value} layers of width {_HIDDEN.value} "
          "(16 experts)")
    print(benchlib.markdown_table(
        ["decoder", "median s", "forward passes", "same tokens", "speedup"],
        [[name, t["median_s"], cache["forward_passes"], cache["same_tokens"],
          cache["speedup"] if name == "exact block cache" else 1.0]
         for name, t in cache["times"].items()]))
  if "moe" in _PARTS.value:
    moe = report["moe"] = moe_paths()
    print(f"\nMoE layer, {moe['experts']} experts (top 8), {moe['tokens']} tokens, width "
          f"{moe['width']}, expert width {moe['expert_width']}, load average "
          f"{next(iter(moe['times'].values()))['load_avg']:.1f}")
    print(benchlib.markdown_table(
        ["path", "median s", "best s", "max |diff| vs dense", "speedup vs dense"],
        [[name, t["median_s"], t["best_s"], moe.get("max_abs_diff", {}).get(name, "-"),
          moe.get("speedup", {}).get(name, "-")] for name, t in moe["times"].items()]))
  benchlib.write_json(_OUT_JSON.value, report)


if __name__ == "__main__":
  app.run(main)
