"""WeDLM streaming decoding on CPU: the exact prefix cache vs recomputing every forward, and IMH.

  python -m experiments.bench_wedlm_streaming --out_json=/tmp/dllm_jax_bench/wedlm_streaming.json

A random WeDLM-8B-layout model (q/k norm, GQA 12:4, head_dim 64) of ~100M parameters (hidden
768, 12 layers, MLP 2048, vocab 32000), greedy, no EOS (every row makes `gen_length` tokens),
prompts of 32 tokens, window 16, lambda 0.02. Random weights predict nearly uniformly, so no
entropy threshold would ever be met: the LM head is scaled by `--head_scale` to spread the
entropies the way a trained model's are (the tokens per forward of each setting are reported).

Per batch size and setting (tau in {0.3, 0.6}, one token per step):
  * streaming: `stream_generate` with the prefix cache, one full run (compiled beforehand);
  * uncached: the same algorithm recomputing every forward from scratch (`prefix_cache=False`;
    the tests check it decides the same tokens). Its forward has a static shape (the canvas
    [prompt, G committed slots, 2W forward slots]), so its time per forward is constant: timed over
    its first `--uncached_steps` iterations (+ the first forward) and multiplied by the full
    run's forward count. The same extrapolation is reported for the streaming decoder beside
    its measured full run, as a check of the method;
  * IMH (K = `--imh_candidates`, one token per step) with and without the cache, the same way,
    and its time per step against K x the plain streaming step.
Goals (issue 13): streaming >= 3x the uncached loop at gen 256 one token per step; IMH with cache
>= 2x IMH without. Timing: one run per measurement (the machine is shared: see load_avg).
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from dllm_jax import models
from dllm_jax.sampling import streaming as ST
from dllm_jax.sampling.imh import IMH
from experiments import benchlib

_HIDDEN = flags.DEFINE_integer("hidden_size", 768, "Model width.")
_LAYERS = flags.DEFINE_integer("num_layers", 12, "Layers.")
_VOCAB = flags.DEFINE_integer("vocab_size", 32000, "Vocabulary size.")
_HEAD_SCALE = flags.DEFINE_float("head_scale", 16.0, "Factor on the random LM head.")
_GEN = flags.DEFINE_integer("gen_length", 256, "New tokens per row.")
_PROMPT = flags.DEFINE_integer("prompt_length", 32, "Prompt tokens.")
_WINDOW = flags.DEFINE_integer("window", 16, "Streaming window W.")
_PENALTY = flags.DEFINE_float("position_penalty", 0.02, "lambda.")
_BATCHES = flags.DEFINE_string("batches", "1,8", "Comma-separated batch sizes.")
_SETTINGS = flags.DEFINE_string("settings", "one,0.3,0.6",
                                "'one' (one token per step) and entropy thresholds tau.")
_IMH_K = flags.DEFINE_integer("imh_candidates", 4, "IMH candidates K (0: skip IMH).")
_IMH_BATCHES = flags.DEFINE_string("imh_batches", "1,8", "Batch sizes of the IMH comparison.")
_IMH_FULL = flags.DEFINE_string("imh_full_runs", "1", "IMH batch sizes run in full (the others: per "
                                "iteration x the iterations of the plain one-token-per-step run).")
_UNCACHED_STEPS = flags.DEFINE_integer("uncached_steps", 3,
                                       "Iterations the uncached loop is timed over.")
_OUT_JSON = flags.DEFINE_string("out_json", "/tmp/dllm_jax_bench/wedlm_streaming.json",
                                "Where to write the JSON report.")


def _config():
  return models.wedlm_8b(hidden_size=_HIDDEN.value, num_layers=_LAYERS.value, num_heads=12,
                         num_kv_heads=4, head_dim=64, mlp_hidden_size=2048,
                         vocab_size=_VOCAB.value, mask_token_id=_VOCAB.value - 1,
                         eos_token_id=0, pad_token_id=0, eot_token_id=None, max_length=2048)


def _timed_run(sampler, denoise, params, prompt, mask, warmup):
  """Seconds of one compiled call and its output. A first call has set-up costs (about a second
  here), so short runs are timed after a warm-up call; full runs are not (it would double the
  benchmark), which only understates their speed."""
  key = jax.random.key(0)
  compiled = ST.stream_generate.lower(sampler, denoise, params, prompt, mask, key).compile()
  if warmup:
    jax.block_until_ready(compiled(params, prompt, mask, key))
  start = time.perf_counter()
  out = jax.block_until_ready(compiled(params, prompt, mask, key))
  return time.perf_counter() - start, out


def _per_iteration(sampler, denoise, params, prompt, mask):
  """Seconds per loop iteration over the first `--uncached_steps` (the first forward, over one
  window, counts 1/K of an iteration). Shapes are static, so it does not change over a run."""
  seconds, out = _timed_run(sampler.replace(max_steps=_UNCACHED_STEPS.value), denoise, params,
                            prompt, mask, warmup=True)
  return seconds / (int(out.steps) + 1 / sampler.num_candidates)


def _measure(name, sampler, denoise, params, prompt, mask, plain_iter_s, iterations=None):
  """The streaming decoder's full run (or, if not `full`, its time per iteration times the
  `iterations`) against the uncached loop's `plain_iter_s` times the same iterations."""
  B, K = prompt.shape[0], sampler.num_candidates
  load = os.getloadavg()[0]
  stream_iter_s = _per_iteration(sampler, denoise, params, prompt, mask)
  full = iterations is None
  if full:
    seconds, out = _timed_run(sampler, denoise, params, prompt, mask, warmup=False)
    iterations = int(out.steps) + 1 / K
  else:
    seconds = stream_iter_s * iterations
  row = {"setting": name, "batch": B, "full_run": full, "stream_s": seconds,
         "iterations": iterations, "tokens_per_iteration": _GEN.value / iterations,
         "stream_tok_s": B * _GEN.value / seconds,
         "stream_ms_per_step": 1e3 * seconds / iterations,
         "stream_extrapolated_s": stream_iter_s * iterations,
         "uncached_extrapolated_s": plain_iter_s * iterations,
         "uncached_tok_s": B * _GEN.value / (plain_iter_s * iterations),
         "uncached_ms_per_step": 1e3 * plain_iter_s,
         "load_avg": (load + os.getloadavg()[0]) / 2}
  row["speedup"] = row["stream_tok_s"] / row["uncached_tok_s"]
  print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
  return row


def main(argv):
  del argv
  info = benchlib.machine_info()
  print(f"{info['cpu']} x {info['cpu_count']}, load {info['load_avg_start'][0]:.1f}", flush=True)
  config = _config()
  params = models.init_params(config, seed=0)
  params["lm_head"]["kernel"] = params["lm_head"]["kernel"] * _HEAD_SCALE.value
  denoise = models.make_denoise(config)
  n_params = models.param_count(params)
  print(f"WeDLM-layout model: {n_params / 1e6:.0f}M parameters", flush=True)
  rng = np.random.default_rng(0)
  rows, imh_rows = [], []
  plain = lambda **kw: ST.StreamingSampler.for_model(
      config, gen_length=_GEN.value, window=_WINDOW.value, position_penalty=_PENALTY.value,
      eos_token_id=None, **kw)
  for batch in [int(b) for b in _BATCHES.value.split(",") if b]:
    prompt = jnp.asarray(rng.integers(1, _VOCAB.value - 1, (batch, _PROMPT.value)), jnp.int32)
    mask = jnp.ones(prompt.shape, bool)
    # the uncached loop's iteration costs the same whatever tau (static shapes): timed once
    uncached_s = _per_iteration(plain(entropy_threshold=None, prefix_cache=False), denoise,
                                params, prompt, mask)
    for setting in filter(None, _SETTINGS.value.split(",")):
      tau = None if setting == "one" else float(setting)
      rows.append(_measure(setting, plain(entropy_threshold=tau), denoise, params, prompt, mask,
                           uncached_s))
  if _IMH_K.value:
    base = {r["batch"]: r for r in rows if r["setting"] == "one"}
    imh = plain(entropy_threshold=None, imh=IMH(num_candidates=_IMH_K.value))
    full_batches = [int(b) for b in _IMH_FULL.value.split(",") if b]
    for batch in [int(b) for b in _IMH_BATCHES.value.split(",") if b]:
      prompt = jnp.asarray(rng.integers(1, _VOCAB.value - 1, (batch, _PROMPT.value)), jnp.int32)
      mask = jnp.ones(prompt.shape, bool)
      uncached_s = _per_iteration(imh.replace(prefix_cache=False), denoise, params, prompt, mask)
      iterations = None if batch in full_batches else base[batch]["iterations"]
      row = _measure(f"imh_k{_IMH_K.value}", imh, denoise, params, prompt, mask, uncached_s,
                     iterations)
      if batch in base:
        row["step_vs_k_baseline_steps"] = (row["stream_ms_per_step"]
                                           / (_IMH_K.value * base[batch]["stream_ms_per_step"]))
      imh_rows.append(row)

  headers = ["setting", "B", "tokens/iteration", "streaming tok/s", "uncached tok/s", "speed-up",
             "streaming ms/step", "uncached ms/step", "streaming s run (per-iteration x iterations)", "load"]
  table = lambda rs: benchlib.markdown_table(headers, [
      [r["setting"], r["batch"], r["tokens_per_iteration"], r["stream_tok_s"], r["uncached_tok_s"],
       r["speedup"], r["stream_ms_per_step"], r["uncached_ms_per_step"],
       f"{r['stream_s']:.1f} ({r['stream_extrapolated_s']:.1f})" if r["full_run"] else
       f"({r['stream_extrapolated_s']:.1f})", r["load_avg"]] for r in rs])
  print(f"\nWeDLM streaming vs uncached, {n_params / 1e6:.0f}M params, gen {_GEN.value}, prompt "
        f"{_PROMPT.value}, W {_WINDOW.value}, greedy; uncached figures extrapolated from "
        f"{_UNCACHED_STEPS.value} iterations\n")
  print(table(rows))
  if imh_rows:
    print(f"\nIMH K={_IMH_K.value} (one token per step) with the prefix cache vs without\n")
    print(table(imh_rows))
    for r in imh_rows:
      if "step_vs_k_baseline_steps" in r:
        print(f"B={r['batch']}: IMH step = {r['step_vs_k_baseline_steps']:.2f} x (K x plain "
              "streaming step)")
  benchlib.write_json(_OUT_JSON.value, {
      "machine": info, "params": n_params, "flags": {
          f.name: f.value for f in (_HIDDEN, _LAYERS, _VOCAB, _HEAD_SCALE, _GEN, _PROMPT,
                                    _WINDOW, _PENALTY, _BATCHES, _SETTINGS, _IMH_K,
                                    _IMH_BATCHES, _IMH_FULL, _UNCACHED_STEPS)},
      "rows": rows, "imh_rows": imh_rows})


if __name__ == "__main__":
  app.run(main)
