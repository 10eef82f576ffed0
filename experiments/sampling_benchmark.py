"""Decoding-loop throughput: the compiled JAX loop against LLaDA's PyTorch eager loop.

Both loops decode the same prompts with the same weights at equal NFE: low-confidence remasking,
`gen_length / tokens_per_step` steps split evenly over blocks of `block_length`, LLaDA's linear
schedule. JAX runs `dllm_jax.sampling.generate` compiled ahead of time (compile time reported on
its own); PyTorch runs tests/torch_ref/llada_generate_torch.py on `LLaDATorch`.

Loop overhead = loop time - NFE x (time of one forward pass of the same [B, P + G] shape), as a
fraction of the loop time: what the loop adds to the model (sampling, softmax, top-k, commit,
and for PyTorch the Python per-step work). Each side is charged with its own forward: PyTorch's
gives logits at every position, as LLaDA's loop uses them; JAX's gives them only in the current
block's window, as its loop does (`Denoiser.logits_window`: the LM head over W = block_length
positions, not P + G). FLOPs and the fraction of matmul peak count the same per-side work.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import numpy as np
import torch

from dllm_jax import models
from dllm_jax import sampling
from dllm_jax.models import ModelConfig
from experiments import benchlib
from tests.torch_ref import llada_generate_torch, llada_torch

SIZES = {"20m": (256, 8), "100m": (768, 12)}  # name -> llada_sized(hidden_size, num_layers)


def parse_grid(text: str) -> list[tuple[str, int, int]]:
  """'20m:1x128,100m:8x256' -> [('20m', 1, 128), ('100m', 8, 256)] (size:batch x gen_length)."""
  grid = []
  for item in filter(None, text.split(",")):
    size, shape = item.split(":")
    if size not in SIZES:
      raise ValueError(f"unknown size {size!r}; expected one of {sorted(SIZES)}")
    batch, gen_length = shape.lower().split("x")
    grid.append((size, int(batch), int(gen_length)))
  return grid


def model_config(size: str, vocab_size: int) -> ModelConfig:
  hidden, layers = SIZES[size]
  return models.llada_sized(hidden, layers, vocab_size=vocab_size)


def run_setting(config: ModelConfig, params: models.Params, torch_model: torch.nn.Module,
                batch: int, gen_length: int, prompt_length: int, tokens_per_step: int,
                block_length: int, temperature: float, loop_repeats: int, forward_repeats: int,
                peak_gflops: float) -> dict[str, Any]:
  steps = gen_length // tokens_per_step
  block_length = min(block_length, gen_length)
  sampler = sampling.Sampler.for_model(
      config, gen_length=gen_length, block_length=block_length, steps=steps,
      remasking=sampling.LowConfidence(), temperature=temperature)
  rng = np.random.default_rng(batch * 1009 + gen_length)
  prompt = rng.integers(0, config.vocab_size - 3, (batch, prompt_length)).astype(np.int32)
  prompt_mask = np.ones_like(prompt, bool)
  canvas = np.concatenate([prompt, np.full((batch, gen_length), config.mask_token_id, np.int32)],
                          axis=1)
  canvas_mask = np.ones_like(canvas, bool)
  key = jax.random.key(0)
  denoise = models.make_denoise(config)

  loop, compile_s = benchlib.timed(lambda: sampling.generate.lower(
      sampler, denoise, params, prompt, prompt_mask, key).compile())
  forward = jax.jit(denoise).lower(params, canvas, canvas_mask).compile()
  # What the JAX loop runs per step: the LM head over the current block only (the start is an
  # argument, so XLA cannot specialise on it).
  window_forward = jax.jit(denoise.logits_window, static_argnums=4).lower(
      params, canvas, canvas_mask, prompt_length, block_length).compile()
  prompt_t, prompt_mask_t = torch.from_numpy(prompt).long(), torch.from_numpy(prompt_mask)
  canvas_t, canvas_mask_t = torch.from_numpy(canvas).long(), torch.from_numpy(canvas_mask)
  outputs: dict[str, Any] = {}

  def jax_loop():
    outputs["jax"] = jax.block_until_ready(loop(params, prompt, prompt_mask, key))

  def torch_loop():
    outputs["torch"] = llada_generate_torch.generate(
        torch_model, prompt_t, prompt_mask_t, steps=steps, gen_length=gen_length,
        block_length=block_length, temperature=temperature, remasking="low_confidence",
        mask_id=config.mask_token_id, generator=torch.Generator().manual_seed(0))

  def torch_forward():
    with torch.inference_mode():
      torch_model(canvas_t, canvas_mask_t)

  forwards = benchlib.time_interleaved(
      {"jax": lambda: forward(params, canvas, canvas_mask).block_until_ready(),
       "jax_window": lambda: window_forward(params, canvas, canvas_mask,
                                            prompt_length).block_until_ready(),
       "torch": torch_forward}, forward_repeats, warmup=1)
  loops = benchlib.time_interleaved({"jax": jax_loop, "torch": torch_loop}, loop_repeats,
                                    warmup=0)
  nfe = int(np.asarray(outputs["jax"].nfe_B)[0])
  assert nfe == steps, (nfe, steps)
  length = prompt_length + gen_length
  # Each side's own work: LLaDA's loop takes logits everywhere, the JAX loop in the window.
  flops = {"torch": benchlib.forward_flops(config, batch, length) * nfe,
           "jax": benchlib.forward_flops(config, batch, length, block_length) * nfe}
  same = np.mean(np.asarray(outputs["jax"].tokens_BL) == outputs["torch"].numpy())
  row: dict[str, Any] = {
      "batch": batch, "gen_length": gen_length, "prompt_length": prompt_length, "steps": steps,
      "block_length": block_length, "nfe": nfe, "temperature": temperature,
      "jax_compile_s": compile_s, "loop_flops": flops, "same_tokens_fraction": float(same),
      "jax_full_forward": forwards["jax"]}
  for side in ("jax", "torch"):
    t, f = loops[side], forwards["jax_window" if side == "jax" else side]
    row[side] = {
        "loop": t, "forward": f,
        "tokens_per_s_best": batch * gen_length / t["best_s"],
        "tokens_per_s_median": batch * gen_length / t["median_s"],
        "ms_per_step_best": 1e3 * t["best_s"] / nfe,
        "ms_per_step_median": 1e3 * t["median_s"] / nfe,
        "overhead_best": 1 - nfe * f["best_s"] / t["best_s"],
        "overhead_median": 1 - nfe * f["median_s"] / t["median_s"],
        "peak_fraction_best": flops[side] / t["best_s"] / 1e9 / peak_gflops}
  row["speed_ratio_best"] = loops["torch"]["best_s"] / loops["jax"]["best_s"]
  row["speed_ratio_median"] = loops["torch"]["median_s"] / loops["jax"]["median_s"]
  return row


def run(grid: list[tuple[str, int, int]], vocab_size: int, **kwargs: Any) -> list[dict[str, Any]]:
  """Every grid entry; one model (JAX params and its PyTorch copy) per size."""
  rows = []
  for size in dict.fromkeys(size for size, _, _ in grid):
    config = model_config(size, vocab_size)
    params = models.init_params(config, seed=0)
    torch_model = llada_torch.from_jax_params(config, params)
    n_params = models.param_count(params)
    for _, batch, gen_length in (g for g in grid if g[0] == size):
      row = run_setting(config, params, torch_model, batch, gen_length, **kwargs)
      row.update(size=size, params=n_params, hidden_size=config.hidden_size,
                 num_layers=config.num_layers)
      print(f"  {size} ({n_params:,} params) B={batch} G={gen_length} NFE={row['nfe']}: "
            f"jax {row['jax']['loop']['median_s']:.2f} s, "
            f"torch {row['torch']['loop']['median_s']:.2f} s (median)", flush=True)
      rows.append(row)
    del torch_model, params
  return rows


def table(rows: list[dict[str, Any]]) -> str:
  headers = ["model", "B", "G", "NFE", "JAX tok/s", "torch tok/s", "JAX ms/step",
             "torch ms/step", "JAX/torch speed best", "(median)", "JAX overhead",
             "torch overhead", "JAX % peak", "torch % peak", "JAX compile s", "same tokens"]
  body = []
  for r in rows:
    j, t = r["jax"], r["torch"]
    body.append([f"{r['size']} ({r['params'] / 1e6:.1f}M)", r["batch"], r["gen_length"],
                 r["nfe"], j["tokens_per_s_best"], t["tokens_per_s_best"],
                 j["ms_per_step_best"], t["ms_per_step_best"],
                 f"{r['speed_ratio_best']:.2f}x", f"{r['speed_ratio_median']:.2f}x",
                 f"{100 * j['overhead_best']:.0f}%", f"{100 * t['overhead_best']:.0f}%",
                 f"{100 * j['peak_fraction_best']:.0f}%", f"{100 * t['peak_fraction_best']:.0f}%",
                 r["jax_compile_s"], f"{100 * r['same_tokens_fraction']:.0f}%"])
  return benchlib.markdown_table(headers, body)


def cache_modes(num_blocks: int, prefix_variants: bool) -> dict[str, Any]:
  """The caches compared: none, Fast-dLLM's prefix and dual caches, and (with
  `prefix_variants`) the prefix cache's other window choices (see `sampling.block_cache`)."""
  modes = {"no cache": None, "prefix": sampling.BlockCache("prefix"),
           "dual": sampling.BlockCache("dual")}
  if prefix_variants:
    modes["prefix, a window per block"] = sampling.BlockCache(
        "prefix", suffix_blocks=tuple(range(1, num_blocks + 1)))
    modes["prefix, one window"] = sampling.BlockCache("prefix", suffix_blocks=(num_blocks,))
  return modes


def _agreement(outputs: dict[str, Any]) -> dict[str, float]:
  plain = np.asarray(outputs["no cache"].generated_BG)
  return {name: float(np.mean(plain == np.asarray(out.generated_BG)))
          for name, out in outputs.items() if name != "no cache"}


def run_cache(grid: list[tuple[str, int, int]], vocab_size: int, prompt_length: int,
              tokens_per_step: int, block_length: int, repeats: int,
              prefix_variants: bool = True) -> list[dict[str, Any]]:
  """JAX loop without a cache and with each cache (same sampler otherwise); speed, compile
  time and token agreement with the uncached run."""
  rows = []
  for size in dict.fromkeys(size for size, _, _ in grid):
    config = model_config(size, vocab_size)
    params = models.init_params(config, seed=0)
    denoise = models.make_denoise(config)
    for _, batch, gen_length in (g for g in grid if g[0] == size):
      sampler = sampling.Sampler.for_model(
          config, gen_length=gen_length, block_length=block_length,
          steps=gen_length // tokens_per_step, remasking=sampling.LowConfidence())
      rng = np.random.default_rng(batch * 7 + gen_length)
      prompt = rng.integers(0, config.vocab_size - 3, (batch, prompt_length)).astype(np.int32)
      mask = np.ones_like(prompt, bool)
      key = jax.random.key(0)
      loops, outputs, compile_s, cpu_s = {}, {}, {}, {}
      for name, cache in cache_modes(sampler.num_blocks, prefix_variants).items():
        compiled, compile_s[name] = benchlib.timed(lambda c=cache: sampling.generate.lower(
            sampler.replace(cache=c), denoise, params, prompt, mask, key).compile())

        def call(compiled=compiled, name=name):
          start = time.process_time()
          outputs[name] = jax.block_until_ready(compiled(params, prompt, mask, key))
          cpu_s.setdefault(name, []).append(time.process_time() - start)

        loops[name] = call
      times = benchlib.time_interleaved(loops, repeats, warmup=1)
      row = {"size": size, "params": models.param_count(params), "batch": batch,
             "gen_length": gen_length, "block_length": block_length,
             "steps": sampler.total_steps, "compile_s": compile_s,
             "agreement": _agreement(outputs)}
      # CPU time of this process (all threads; warm-up excluded): the work done, which other
      # processes on a shared machine inflate far less than the wall time.
      cpu = {name: min(samples[1:]) for name, samples in cpu_s.items()}
      for name, t in times.items():
        row[name] = {**t, "tokens_per_s_best": batch * gen_length / t["best_s"],
                     "speedup_best": times["no cache"]["best_s"] / t["best_s"],
                     "speedup_median": times["no cache"]["median_s"] / t["median_s"],
                     "cpu_s_best": cpu[name], "cpu_s_samples": cpu_s[name][1:],
                     "speedup_cpu": cpu["no cache"] / cpu[name]}
      print(f"  cache {size} B={batch} G={gen_length}: " + ", ".join(
          f"{name} {row[name]['speedup_median']:.2f}x ({row[name]['speedup_cpu']:.2f}x CPU)"
          for name in times if name != "no cache") + " (median wall)", flush=True)
      rows.append(row)
  return rows


def cache_table(rows: list[dict[str, Any]]) -> str:
  """One line per setting and cache: tokens/s and speed-up over no cache (wall time, and CPU
  time of the process), agreement, compile seconds."""
  headers = ["model", "B", "G", "block", "steps", "cache", "tok/s", "speedup best", "(median)",
             "CPU s", "CPU speedup", "token agreement", "compile s"]
  body = []
  for r in rows:
    for name in r["compile_s"]:
      agreement = r["agreement"].get(name)
      body.append([f"{r['size']} ({r['params'] / 1e6:.1f}M)", r["batch"], r["gen_length"],
                   r["block_length"], r["steps"], name, r[name]["tokens_per_s_best"],
                   f"{r[name]['speedup_best']:.2f}x", f"{r[name]['speedup_median']:.2f}x",
                   r[name]["cpu_s_best"], f"{r[name]['speedup_cpu']:.2f}x",
                   "-" if agreement is None else f"{100 * agreement:.1f}%", r["compile_s"][name]])
  return benchlib.markdown_table(headers, body)


def countdown_agreement(settings: list[tuple[int, int]], problems: int) -> list[dict[str, Any]]:
  """Token agreement of each cache with uncached greedy decoding (one token per step, as in the
  demo) on the shipped, trained Countdown model, over held-out problems (left-padded prompts),
  per (gen_length, block_length).

  Its canvas holds 13 tokens (6 prompt + 7 answer). Longer generations raise the model's
  `max_length`: RoPE runs at any position, but the model never saw positions past 13, so those
  rows measure the caches on trained weights out of their training range.
  """
  from dllm_jax.tasks import countdown_data, countdown_demo  # the task is only needed here
  model = countdown_demo.load_builtin()
  prompt, mask = countdown_data.encode_prompts(
      model.tokenizer, model.task, model.task.sample_problems("heldout", problems, seed=0))
  rows = []
  for gen_length, block_length in settings:
    config = model.config
    if prompt.shape[1] + gen_length > config.max_length:
      config = dataclasses.replace(config, max_length=prompt.shape[1] + gen_length)
    denoise = models.make_denoise(config)
    sampler = sampling.Sampler.for_model(
        config, gen_length=gen_length, block_length=block_length,
        remasking=sampling.LowConfidence())
    outputs = {name: sampling.generate(sampler.replace(cache=cache), denoise, model.params,
                                       prompt, mask, jax.random.key(0))
               for name, cache in cache_modes(sampler.num_blocks, False).items()}
    rows.append({"gen_length": gen_length, "block_length": block_length,
                 "steps": sampler.total_steps, "problems": problems,
                 "trained_length": model.config.max_length,
                 "canvas": prompt.shape[1] + gen_length, "agreement": _agreement(outputs)})
    print(f"  countdown G={gen_length} block={block_length}: {rows[-1]['agreement']}",
          flush=True)
  return rows


def countdown_table(rows: list[dict[str, Any]]) -> str:
  headers = ["G", "block", "steps", "canvas (trained)", "problems", "prefix agreement",
             "dual agreement"]
  body = [[r["gen_length"], r["block_length"], r["steps"],
           f"{r['canvas']} ({r['trained_length']})", r["problems"],
           f"{100 * r['agreement']['prefix']:.1f}%", f"{100 * r['agreement']['dual']:.1f}%"]
          for r in rows]
  return benchlib.markdown_table(headers, body)
