"""The accelerator benchmark's parts (experiments/bench_accelerator.py is the entry point and
describes what is measured, how it is timed and the time budget).

`Settings` (accelerator_plan.py) holds what to measure; `Run` holds what the sections share (the
weights on the device, the PyTorch model over the same buffers, the measured peak, the report
rewritten after every setting); each `section_*` function measures one section; `run_all` runs
the selected ones and returns the markdown tables (the LLaDA2 sections are in
accelerator_llada2.py, imported when they run). PyTorch is optional: without it the PyTorch
rows are skipped with the reason. Nothing here imports the data/eval stack.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import pathlib
import platform
import statistics
import time
import traceback
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from dllm_jax import models, sampling, sharding
from dllm_jax.models import ModelConfig
from experiments import accelerator_plan, benchlib
from experiments.accelerator_plan import (Costs, Settings, estimate_setting, timed_repeats,
                                          window_flops)

try:  # PyTorch is optional: without it the PyTorch rows are reported as skipped.
  import torch
  from tests.torch_ref import llada_generate_torch, llada_torch
  _TORCH_MISSING = None
except ImportError as e:  # pragma: no cover - depends on the machine
  torch = None
  _TORCH_MISSING = f"torch is not importable ({e})"

JSON_NAME, MD_NAME = "bench_accelerator.json", "bench_accelerator.md"


# ----------------------------------------------------------------------------------------------
# The run: context, timing, recording


@dataclasses.dataclass
class Run:
  """What the sections share: the model on the device, the peak, the report being written."""

  settings: Settings
  out_dir: pathlib.Path
  report: dict[str, Any]
  start: float = dataclasses.field(default_factory=time.perf_counter)
  params: Any = None
  denoise: Any = None
  device: Any = None
  peak_flops: float | None = None
  torch_model: Any = None
  torch_skip: str | None = None  # why the PyTorch side does not run
  torch_shares_weights: bool = False
  compile_times: list[float] = dataclasses.field(default_factory=list)
  llada2: Any = None  # accelerator_llada2.LLaDA2State, made by run_all for the LLaDA2 sections

  @property
  def config(self) -> ModelConfig:
    return self.settings.config

  def elapsed(self) -> float:
    return time.perf_counter() - self.start

  def time_left(self) -> float | None:
    budget = self.settings.budget_s
    return budget - self.elapsed() if budget > 0 else None

  def costs(self, config: ModelConfig | None = None) -> Costs:
    s = self.settings
    peak = self.peak_flops or s.assumed_peak_tflops * 1e12
    return Costs(config or s.config, peak, s.assumed_mfu, s.assumed_bandwidth_gbs * 1e9)

  def compile_guess(self) -> float:
    times = self.compile_times
    return statistics.mean(times) if times else self.settings.assumed_compile_s

  def compile(self, lower: Callable[[], Any], model_program: bool = True
              ) -> tuple[Any, dict[str, float]]:
    """Lowers and compiles; model programs' times feed the estimates of later ones."""
    lowered, lower_s = benchlib.timed(lower)
    compiled, compile_s = benchlib.timed(lowered.compile)
    if model_program:
      self.compile_times.append(lower_s + compile_s)
    return compiled, {"lower_s": lower_s, "compile_s": compile_s}

  def save(self) -> None:
    self.report["elapsed_s"] = self.elapsed()
    self.out_dir.mkdir(parents=True, exist_ok=True)
    tmp = self.out_dir / (JSON_NAME + ".tmp")
    tmp.write_text(json.dumps(self.report, indent=2, default=str))
    os.replace(tmp, self.out_dir / JSON_NAME)

  def section(self, name: str) -> dict[str, Any]:
    return self.report["sections"].setdefault(name, {"status": "ok", "rows": []})

  def setting(self, section: str, label: str, estimate_s: float,
              body: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Runs one setting unless it would overrun the budget; records its row, or its error."""
    left = self.time_left()
    if left is not None and estimate_s > left:
      row = {"setting": label, "status": "skipped",
             "reason": f"time budget: estimated {estimate_s:.0f} s, {max(left, 0):.0f} s left"}
    else:
      try:
        row = {"setting": label, "status": "ok", **body()}
      except Exception as e:  # pylint: disable=broad-except
        row = {"setting": label, "status": "error", "error": f"{type(e).__name__}: {e}"[:2000],
               "traceback": traceback.format_exc()[-4000:]}
      row["wall_s"] = time.perf_counter() - self.start
      row["memory"] = device_memory(self.device)
      free_memory()
    self.section(section)["rows"].append(row)
    self.save()
    print(f"[{self.elapsed():6.0f} s] {section} {label}: {_summary(row)}", flush=True)
    return row


def free_memory() -> None:
  gc.collect()
  if torch is not None and torch.cuda.is_available():
    torch.cuda.empty_cache()


def device_memory(device) -> dict[str, Any]:
  memory: dict[str, Any] = {}
  stats = device.memory_stats() if device is not None else None
  if stats:
    memory["jax_peak_gib"] = stats.get("peak_bytes_in_use", 0) / 2**30
    memory["jax_limit_gib"] = stats.get("bytes_limit", 0) / 2**30
  if torch is not None and torch.cuda.is_available():
    memory["torch_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
  return memory


def _summary(row: dict[str, Any]) -> str:
  if row["status"] != "ok":
    return f"{row['status']}: {row.get('reason') or row.get('error')}"
  parts = []
  for side in ("jax", "torch"):
    r = row.get(side)
    if isinstance(r, dict) and "median_s" in r:
      parts.append(f"{side} {r['median_s'] * 1e3:.1f} ms"
                   + (f" ({100 * r['mfu']:.0f}% MFU)" if r.get("mfu") is not None else ""))
  if "compile" in row:
    parts.append(f"compile {row['compile']['compile_s']:.1f} s")
  if "speed_ratio" in row:
    parts.append(f"JAX/torch {row['speed_ratio']:.2f}x")
  return ", ".join(parts)


def measure(run: Run, fns: dict[str, Callable[[], Any]],
            warmups: dict[str, Callable[[], Any]] | None = None) -> dict[str, dict[str, Any]]:
  """Each function warmed up once (by itself, or by its entry in `warmups`), then timed in
  alternating order; each must block until its work is done. The first timed round sets how
  many rounds fit (`timed_repeats`). A contender that raises is dropped and reported as
  {"status": "error", ...}, so one side's failure (PyTorch out of memory, say) keeps the other's
  figures."""
  warmups, fns = warmups or {}, dict(fns)
  results: dict[str, dict[str, Any]] = {}

  def call(name, fn):
    try:
      return benchlib.timed(fn)[1]
    except Exception as e:  # pylint: disable=broad-except
      results[name] = {"status": "error", "error": f"{type(e).__name__}: {e}"[:2000]}
      del fns[name]
      free_memory()
      return None

  first = {name: call(name, warmups.get(name, fn)) for name, fn in list(fns.items())}
  time_left = run.time_left()
  samples: dict[str, list[float]] = {name: [] for name in fns}
  repeats, r = run.settings.min_repeats, 0
  while r < repeats and fns:
    order = list(fns.items())
    for name, fn in (reversed(order) if r % 2 else order):
      t = call(name, fn)
      if t is not None:
        samples[name].append(t)
    if r == 0:
      repeats = timed_repeats(run.settings, sum(samples[name][0] for name in fns), time_left)
    r += 1
  for name in fns:
    s = samples[name]
    results[name] = {"warmup_s": first[name], "median_s": statistics.median(s), "best_s": min(s),
                     "samples_s": s}
  return results


def _timed_ok(times: dict[str, dict[str, Any]], name: str) -> dict[str, Any]:
  """`times[name]` if it was measured, else raises with its error."""
  if "median_s" not in times.get(name, {}):
    raise RuntimeError(f"{name}: {times.get(name, {}).get('error', 'not measured')}")
  return times[name]


def rates(timing: dict[str, Any], flops: float, peak_flops: float | None,
          tokens: int | None = None, steps: int | None = None) -> dict[str, Any]:
  """Median time with TFLOP/s, MFU (None without a measured peak) and, for a decode loop,
  tokens/s and ms per step."""
  t = timing["median_s"]
  out = {**timing, "flops": flops, "tflops": flops / t / 1e12,
         "mfu": flops / t / peak_flops if peak_flops else None}
  if tokens is not None:
    out["tokens_per_s"] = tokens / t
  if steps:
    out["ms_per_step"] = 1e3 * t / steps
  return out


def _sync_torch() -> None:
  if torch.cuda.is_available():
    torch.cuda.synchronize()


# ----------------------------------------------------------------------------------------------
# Set-up: weights on the device, the PyTorch model on the same buffers


def init_on_device(run: Run, config: ModelConfig) -> tuple[Any, dict[str, Any]]:
  """Random weights of `config` made on `run.device` (no host copy), distributed as
  `models.init_params` makes them: normal(0.02) matrices, unit norm scales, zero biases.

  One compiled program per distinct (shape, kind, sharding), its output placed by
  `out_shardings`, called once per parameter with that parameter's key: a handful of tiny
  compiles, where one program making all 291 tensors of LLaDA-8B compiles for minutes on a CPU.
  """
  mesh = sharding.make_mesh(data=1, model=1, devices=[run.device])
  is_sharding = lambda x: isinstance(x, jax.sharding.Sharding)
  shardings = jax.tree.leaves(sharding.param_shardings(config, mesh), is_leaf=is_sharding)
  leaves, treedef = jax.tree_util.tree_flatten_with_path(models.abstract_params(config))
  keys = jax.random.split(jax.random.key(run.settings.seed), len(leaves))

  programs: dict[tuple[Any, ...], Any] = {}
  compile_s = 0.0

  def program(shape, dtype, kind, out_sharding):
    nonlocal compile_s
    signature = (shape, dtype, kind, out_sharding)
    if signature not in programs:
      def make(key):
        if kind == "scale":
          return jnp.ones(shape, dtype)
        if kind == "bias":
          return jnp.zeros(shape, dtype)
        return 0.02 * jax.random.normal(key, shape, dtype)

      programs[signature], times = run.compile(
          lambda: jax.jit(make, out_shardings=out_sharding).lower(keys[0]), model_program=False)
      compile_s += times["lower_s"] + times["compile_s"]
    return programs[signature]

  def make_all():
    arrays = []
    for key, (path, leaf), out_sharding in zip(keys, leaves, shardings):
      name = str(getattr(path[-1], "key", path[-1]))
      kind = name if name in ("scale", "bias") else "matrix"
      arrays.append(program(leaf.shape, leaf.dtype, kind, out_sharding)(key))
    return jax.block_until_ready(jax.tree.unflatten(treedef, arrays))

  params, total_s = benchlib.timed(make_all)
  return params, {"params": models.param_count(params),
                  "matmul_params": benchlib.matmul_params(config),
                  "param_gib": sum(x.nbytes for x in jax.tree.leaves(params)) / 2**30,
                  "init": {"programs": len(programs), "compile_s": compile_s,
                           "total_s": total_s},
                  "config": dataclasses.asdict(config)}


def setup_model(run: Run) -> dict[str, Any]:
  run.device = jax.devices()[0]
  run.params, info = init_on_device(run, run.config)
  run.denoise = models.make_denoise(run.config)
  print(f"model: {info['params']:,} parameters, {info['param_gib']:.2f} GiB on {run.device} "
        f"({info['init']['programs']} init programs, {info['init']['compile_s']:.1f} s of "
        f"compiles, {info['init']['total_s']:.1f} s in all)", flush=True)
  return info


def _dlpack_tensor(x: jax.Array, transpose: bool = False) -> "torch.Tensor":
  tensor = torch.from_dlpack(x)
  return tensor.T if transpose else tensor


def _random_torch_model(config: ModelConfig, device: "torch.device", seed: int
                        ) -> "torch.nn.Module":
  """`LLaDATorch` with its own random weights made on `device` (normal(0.02), unit scales)."""
  default = torch.get_default_dtype()
  torch.set_default_dtype(llada_torch.TORCH_DTYPES[config.param_dtype])
  try:
    with torch.device(device):
      model = llada_torch.LLaDATorch(config)
  finally:
    torch.set_default_dtype(default)
  generator = torch.Generator(device).manual_seed(seed)
  with torch.no_grad():
    for parameter in model.parameters():
      if parameter.ndim == 2:
        parameter.normal_(0.0, 0.02, generator=generator)
  return model


def setup_torch(run: Run) -> dict[str, Any]:
  """The PyTorch model over the JAX weight buffers (no copy), or why there is none."""
  if run.settings.torch == "off":
    run.torch_skip = "--torch=off"
  elif torch is None:
    run.torch_skip = _TORCH_MISSING
  elif not run.settings.torch_wanted:
    run.torch_skip = (f"JAX runs on {jax.default_backend()}, not a GPU: the comparison is meant "
                      "for the GPU (--torch=on runs it here)")
  elif jax.default_backend() == "gpu" and not torch.cuda.is_available():
    run.torch_skip = "torch sees no CUDA device"
  if run.torch_skip:
    return {"status": "skipped", "reason": run.torch_skip}
  jax.block_until_ready(run.params)
  info: dict[str, Any] = {"status": "ok", "torch": torch.__version__}
  try:
    state = llada_torch.state_dict_from_jax(run.params, run.config, tensor=_dlpack_tensor)
    with torch.device("meta"):
      model = llada_torch.LLaDATorch(run.config)
    model.load_state_dict(state, strict=True, assign=True)
    info["weights"] = "the JAX buffers, through DLPack"
  except Exception as e:  # pylint: disable=broad-except
    # Without DLPack the PyTorch side gets its own random weights of the same shapes.
    device = torch.device("cuda", 0) if jax.default_backend() == "gpu" else torch.device("cpu")
    model = _random_torch_model(run.config, device, run.settings.seed)
    info["weights"] = f"independent random weights (DLPack failed: {type(e).__name__}: {e})"
  run.torch_model = model.eval().requires_grad_(False)
  run.torch_shares_weights = info["weights"].startswith("the JAX buffers")
  device = next(model.parameters()).device
  info["device"] = str(device)
  if device.type == "cuda":
    info["device_name"] = torch.cuda.get_device_name(device)
  return info


# ----------------------------------------------------------------------------------------------
# Sections


def section_matmul_peak(run: Run) -> None:
  settings = run.settings
  n, chain, dtype = settings.peak_n, settings.peak_chain, jnp.dtype(settings.config.dtype)
  flops = 2.0 * n ** 3 * chain

  def body():
    ka, kb = jax.random.split(jax.random.key(settings.seed))
    a, b = jax.block_until_ready((jax.random.normal(ka, (n, n), dtype),
                                  jax.random.normal(kb, (n, n), dtype)))
    matmul, compile_times = run.compile(lambda: jax.jit(jnp.matmul).lower(a, b),
                                        model_program=False)

    def jax_chain():
      jax.block_until_ready([matmul(a, b) for _ in range(chain)])

    fns = {"jax": jax_chain}
    if run.torch_model is not None:
      device = next(run.torch_model.parameters()).device
      a_t = torch.from_dlpack(a).to(device)
      b_t = torch.from_dlpack(b).to(device)

      def torch_chain():
        for _ in range(chain):
          torch.mm(a_t, b_t)
        _sync_torch()

      fns["torch"] = torch_chain
    times = measure(run, fns) if not settings.compile_only else {}
    row = {"n": n, "chain": chain, "dtype": dtype.name, "compile": compile_times}
    for side, t in times.items():
      row[side] = {**t, "tflops": flops / t["median_s"] / 1e12} if "median_s" in t else t
    if times:
      _timed_ok(times, "jax")
      run.peak_flops = max(row[side].get("tflops", 0) for side in times) * 1e12
      row["peak_tflops"] = run.peak_flops / 1e12
    if "torch" not in row:
      row["torch"] = {"status": "skipped", "reason": run.torch_skip}
    return row

  run.setting("matmul_peak", f"{n}^3 x {chain}", 0.0, body)


def _prompt(run: Run, batch: int, length: int, salt: int,
            config: ModelConfig | None = None) -> np.ndarray:
  """Random tokens below every special id of the model (`run.config` unless given)."""
  c = config or run.config
  special = min(t for t in (c.mask_token_id, c.eos_token_id, c.pad_token_id, c.eot_token_id,
                            c.bos_token_id) if t is not None)
  rng = np.random.default_rng(run.settings.seed * 1000 + salt)
  return rng.integers(0, special, (batch, length)).astype(np.int32)


def section_forward(run: Run) -> None:
  settings = run.settings
  for batch, length in settings.forward_shapes:
    def body(batch=batch, length=length):
      tokens = jax.device_put(_prompt(run, batch, length, batch * 7 + length), run.device)
      mask = jax.device_put(np.ones((batch, length), bool), run.device)
      compiled, compile_times = run.compile(
          lambda: jax.jit(run.denoise).lower(run.params, tokens, mask))
      row = {"batch": batch, "length": length, "compile": compile_times}
      if settings.compile_only:
        return row
      t = measure(run, {"jax": lambda: compiled(run.params, tokens, mask).block_until_ready()})
      row["jax"] = rates(_timed_ok(t, "jax"), benchlib.forward_flops(run.config, batch, length),
                         run.peak_flops, tokens=batch * length)
      return row

    run.setting("forward", f"{batch}x{length}",
                estimate_setting(settings, run.costs(), "forward", run.compile_guess(), batch,
                                 length), body)


def _decode_program(run: Run, sampler: sampling.Sampler, batch: int, salt: int):
  prompt = jax.device_put(_prompt(run, batch, run.settings.prompt_length, salt), run.device)
  mask = jax.device_put(np.ones(prompt.shape, bool), run.device)
  key = jax.random.key(run.settings.seed)
  compiled, compile_times = run.compile(lambda: sampling.generate.lower(
      sampler, run.denoise, run.params, prompt, mask, key))
  return (lambda: jax.block_until_ready(compiled(run.params, prompt, mask, key))), prompt, \
      compile_times


def section_decode(run: Run) -> None:
  """Low-confidence decoding, the compiled JAX loop against LLaDA's PyTorch loop."""
  settings = run.settings
  L, G, W, steps = settings.decode_shapes
  sampler = sampling.Sampler.for_model(run.config, gen_length=G, block_length=W, steps=steps,
                                       remasking=sampling.LowConfidence())
  for batch in settings.decode_batches:
    def body(batch=batch):
      jax_call, prompt, compile_times = _decode_program(run, sampler, batch, batch)
      row: dict[str, Any] = {"batch": batch, "prompt_length": settings.prompt_length,
                             "gen_length": G, "block_length": W, "steps": steps,
                             "compile": compile_times}
      if settings.compile_only:
        return row
      outputs: dict[str, Any] = {}
      fns = {"jax": lambda: outputs.__setitem__("jax", jax_call())}
      warmups = {}
      if run.torch_model is not None:
        device = next(run.torch_model.parameters()).device
        prompt_t = torch.from_numpy(np.array(prompt)).long().to(device)

        def torch_loop():
          outputs["torch"] = llada_generate_torch.generate(
              run.torch_model, prompt_t, None, steps=steps, gen_length=G, block_length=W,
              temperature=0.0, remasking="low_confidence", mask_id=run.config.mask_token_id)
          _sync_torch()

        def torch_warmup():  # eager PyTorch compiles nothing: one pass of the loop's shape
          with torch.inference_mode():
            run.torch_model(torch.full((batch, L), run.config.mask_token_id, device=device))
          _sync_torch()

        fns["torch"] = torch_loop
        warmups["torch"] = torch_warmup
      times = measure(run, fns, warmups)
      _timed_ok(times, "jax")
      nfe = int(np.asarray(outputs["jax"].nfe_B)[0])
      if nfe != steps:
        raise AssertionError(f"JAX loop ran {nfe} forward passes, expected {steps}")
      flops = {"jax": steps * benchlib.forward_flops(run.config, batch, L, W),
               "torch": steps * benchlib.forward_flops(run.config, batch, L)}
      for side, t in times.items():
        row[side] = (rates(t, flops[side], run.peak_flops, tokens=batch * G, steps=steps)
                     if "median_s" in t else t)
      if "median_s" in times.get("torch", {}):
        row["speed_ratio"] = times["torch"]["median_s"] / times["jax"]["median_s"]
        row["speed_ratio_best"] = times["torch"]["best_s"] / times["jax"]["best_s"]
        if run.torch_shares_weights:  # then the loops should mostly agree (float32: exactly)
          row["same_tokens_fraction"] = float(np.mean(
              np.asarray(outputs["jax"].generated_BG) == outputs["torch"][:, -G:].cpu().numpy()))
      elif "torch" not in times:
        row["torch"] = {"status": "skipped", "reason": run.torch_skip}
      return row

    run.setting("decode", f"B={batch}",
                estimate_setting(settings, run.costs(), "decode", run.compile_guess(), batch,
                                 with_torch=run.torch_model is not None), body)


def section_threshold_cache(run: Run) -> None:
  settings = run.settings
  L, G, W, _ = settings.decode_shapes
  sampler = sampling.Sampler.for_model(run.config, gen_length=G, block_length=W,
                                       remasking=sampling.Threshold(0.9),
                                       cache=sampling.BlockCache())
  for batch in settings.cache_batches:
    def body(batch=batch):
      call, _, compile_times = _decode_program(run, sampler, batch, 100 + batch)
      row = {"batch": batch, "gen_length": G, "block_length": W, "compile": compile_times}
      if settings.compile_only:
        return row
      outputs = {}
      times = measure(run, {"jax": lambda: outputs.__setitem__("jax", call())})
      _timed_ok(times, "jax")
      out = outputs["jax"]
      steps, blocks = int(out.steps), G // W
      flops = batch * (blocks * benchlib.forward_flops(run.config, 1, L, W)
                       + (steps - blocks) * window_flops(run.config, 1, L, W))
      row.update(steps=steps, full_passes=blocks, window_passes=steps - blocks,
                 nfe_mean=float(np.mean(np.asarray(out.nfe_B))),
                 jax=rates(times["jax"], flops, run.peak_flops, tokens=batch * G, steps=steps))
      return row

    run.setting("threshold_cache", f"B={batch}",
                estimate_setting(settings, run.costs(), "threshold_cache", run.compile_guess(),
                                 batch), body)


def section_imh(run: Run) -> None:
  settings = run.settings
  L, G, W, steps = settings.decode_shapes
  k = settings.imh_candidates
  sampler = sampling.Sampler.for_model(run.config, gen_length=G, block_length=W, steps=steps,
                                       remasking=sampling.IMH(alpha=2.0, num_candidates=k))
  for batch in settings.imh_batches:
    def body(batch=batch):
      call, _, compile_times = _decode_program(run, sampler, batch, 200 + batch)
      row = {"batch": batch, "candidates": k, "gen_length": G, "block_length": W,
             "steps": steps, "compile": compile_times}
      if settings.compile_only:
        return row
      outputs = {}
      times = measure(run, {"jax": lambda: outputs.__setitem__("jax", call())})
      _timed_ok(times, "jax")
      nfe = int(np.asarray(outputs["jax"].nfe_B)[0])
      # The first pass scores the initial canvas; each step evaluates K candidate canvases, the
      # LM head at every position.
      flops = (benchlib.forward_flops(run.config, batch, L)
               + steps * benchlib.forward_flops(run.config, k * batch, L))
      row.update(nfe=nfe, jax=rates(times["jax"], flops, run.peak_flops, tokens=batch * G,
                                    steps=steps))
      return row

    run.setting("imh", f"B={batch}",
                estimate_setting(settings, run.costs(), "imh", run.compile_guess(), batch), body)


def section_wedlm(run: Run) -> None:
  """WeDLM-8B streaming decoding (`sampling.stream_generate`, exact prefix cache, window W, one
  token per step, the paper's setting) at --wedlm_batches: tokens/s, ms/step, MFU, compile time.
  Its own random weights on the device; no stop tokens, so every row decodes gen_length tokens
  (random weights would stop rows at random EOS draws)."""
  settings = run.settings
  config = settings.wedlm_config
  _, G, _, _ = settings.decode_shapes
  W = settings.wedlm_window
  sampler = sampling.StreamingSampler.for_model(
      config, gen_length=G, window=W, entropy_threshold=None, position_penalty=0.1,
      eos_token_id=None, eot_token_id=None)
  state: dict[str, Any] = {}

  def model():  # made once, at the first setting that runs
    if "params" not in state:
      state["params"], state["info"] = init_on_device(run, config)
      run.section("wedlm")["model"] = state["info"]
    return state["params"]

  denoise = models.make_denoise(config)
  for batch in settings.wedlm_batches:
    def body(batch=batch):
      params = model()
      prompt = jax.device_put(_prompt(run, batch, settings.prompt_length, 300 + batch, config),
                              run.device)
      mask = jax.device_put(np.ones(prompt.shape, bool), run.device)
      key = jax.random.key(settings.seed)
      compiled, compile_times = run.compile(lambda: sampling.stream_generate.lower(
          sampler, denoise, params, prompt, mask, key))
      row = {"batch": batch, "gen_length": G, "window": W, "prompt_length": settings.prompt_length,
             "compile": compile_times}
      if settings.compile_only:
        return row
      outputs = {}
      call = lambda: outputs.__setitem__(
          "jax", jax.block_until_ready(compiled(params, prompt, mask, key)))
      times = measure(run, {"jax": call})
      _timed_ok(times, "jax")
      out = outputs["jax"]
      steps = int(out.steps)
      generated = int(np.sum(np.asarray(out.commit_step_BG) >= 0))  # [MASK] may be drawn
      if generated != batch * G:
        raise AssertionError(f"streaming decoded {generated} of {batch * G} tokens")
      row.update(steps=steps, nfe_mean=float(np.mean(np.asarray(out.nfe_B))),
                 jax=rates(times["jax"], steps * accelerator_plan.wedlm_step_flops(settings, batch),
                           run.peak_flops, tokens=batch * G, steps=steps))
      return row

    run.setting("wedlm", f"B={batch}",
                estimate_setting(settings, run.costs(), "wedlm", run.compile_guess(), batch), body)


def section_llada2_forward(run: Run) -> None:
  from experiments import accelerator_llada2  # pylint: disable=import-outside-toplevel
  accelerator_llada2.section_forward(run)


def section_llada2_decode(run: Run) -> None:
  from experiments import accelerator_llada2  # pylint: disable=import-outside-toplevel
  accelerator_llada2.section_decode(run)


SECTIONS: dict[str, Callable[[Run], None]] = {
    "matmul_peak": section_matmul_peak, "forward": section_forward, "decode": section_decode,
    "threshold_cache": section_threshold_cache, "imh": section_imh, "wedlm": section_wedlm,
    "llada2_forward": section_llada2_forward, "llada2_decode": section_llada2_decode}


# ----------------------------------------------------------------------------------------------
# Tables and main


def _pct(x: float | None) -> str:
  return "" if x is None else f"{100 * x:.0f}%"


def tables(report: dict[str, Any], settings: Settings) -> str:
  """The markdown tables of every section with rows; skipped and failed rows listed after."""
  s = report["sections"]
  out = []

  def ok(name):
    return [r for r in s.get(name, {}).get("rows", []) if r["status"] == "ok"]

  for r in ok("matmul_peak"):
    torch_t = r["torch"].get("tflops")
    if "jax" not in r:
      continue
    out.append(f"Matmul peak ({r['n']}^3 {r['dtype']}, chains of {r['chain']}): JAX "
               f"{r['jax']['tflops']:.3g} TFLOP/s"
               + (f", torch {torch_t:.3g} TFLOP/s" if torch_t else "")
               + f"; MFU denominator {r['peak_tflops']:.3g} TFLOP/s")
  rows = ok("forward")
  if rows:
    out.append("\nForward pass (logits at every position)\n")
    out.append(benchlib.markdown_table(
        ["B x L", "ms", "TFLOP/s", "MFU", "tokens/s", "compile s"],
        [[f"{r['batch']} x {r['length']}", r["jax"]["median_s"] * 1e3, r["jax"]["tflops"],
          _pct(r["jax"]["mfu"]), r["jax"]["tokens_per_s"], r["compile"]["compile_s"]]
         if "jax" in r else [f"{r['batch']} x {r['length']}", "", "", "", "",
                             r["compile"]["compile_s"]] for r in rows]))
  decode_rows = []
  for name, label in (("decode", "low-confidence"), ("threshold_cache", "Threshold(0.9) + cache"),
                      ("imh", f"IMH K={settings.imh_candidates}"),
                      ("wedlm", f"WeDLM-8B streaming W={settings.wedlm_window}, 1/step")):
    for r in ok(name):
      j, t = r.get("jax", {}), r.get("torch", {})
      decode_rows.append([
          label, r["batch"], r.get("steps", ""), j.get("tokens_per_s", ""),
          j.get("ms_per_step", ""), _pct(j.get("mfu")), t.get("tokens_per_s", ""),
          t.get("ms_per_step", ""), _pct(t.get("mfu")),
          f"{r['speed_ratio']:.2f}x" if "speed_ratio" in r else "",
          r["compile"]["lower_s"] + r["compile"]["compile_s"]])
  if decode_rows:
    _, G, W, _ = settings.decode_shapes
    out.append(f"\nDecoding, gen {G}, block {W}, prompt {settings.prompt_length}, greedy (JAX: "
               "compiled loop; torch: LLaDA's loop, eager, SDPA)\n")
    out.append(benchlib.markdown_table(
        ["sampler", "B", "steps", "JAX tok/s", "JAX ms/step", "JAX MFU", "torch tok/s",
         "torch ms/step", "torch MFU", "JAX/torch", "compile s (lower + compile)"], decode_rows))
  if ok("llada2_forward") or ok("llada2_decode"):
    from experiments import accelerator_llada2  # pylint: disable=import-outside-toplevel
    out += accelerator_llada2.tables(ok("llada2_forward"), ok("llada2_decode"), settings)
  others = [(name, r["setting"], r) for name, sec in s.items() for r in sec.get("rows", [])
            if r["status"] != "ok"]
  others += [(name, f"{r['setting']} torch", r["torch"]) for name, sec in s.items()
             for r in sec.get("rows", []) if r["status"] == "ok"
             and r.get("torch", {}).get("status") in ("error", "skipped")]
  if others:
    out.append("\nNot measured\n")
    out += [f"- {name} {label}: {r['status']}: {r.get('reason') or r.get('error')}"
            for name, label, r in others]
  return "\n".join(out)


def goals(report: dict[str, Any]) -> list[dict[str, Any]]:
  """The issue's goals for these figures, each with its measured value (None if not measured);
  recorded, never asserted."""
  s = report["sections"]

  def row(name, setting):
    for r in s.get(name, {}).get("rows", []):
      if r["setting"] == setting and r["status"] == "ok":
        return r
    return {}

  def value(r, *keys):
    for key in keys:
      r = r.get(key) if isinstance(r, dict) else None
    return r

  items = [("forward MFU at 8x1024 >= 60%", value(row("forward", "8x1024"), "jax", "mfu"), 0.6),
           ("low-confidence decode MFU at B=32 >= 50%",
            value(row("decode", "B=32"), "jax", "mfu"), 0.5),
           ("JAX >= 1.5x the PyTorch loop at B=1", value(row("decode", "B=1"), "speed_ratio"), 1.5),
           ("JAX >= 1.0x the PyTorch loop at B=32", value(row("decode", "B=32"), "speed_ratio"),
            1.0),
           ("LLaDA2 decode: JAX tokens/s >= 1.0x the official generate's at B=1",
            value(row("llada2_decode", "B=1"), "speed_ratio"), 1.0)]
  out = [{"goal": goal, "measured": v, "met": None if v is None else v >= target}
         for goal, v, target in items]
  compiles = [r["compile"]["lower_s"] + r["compile"]["compile_s"]
              for name in ("forward", "decode", "threshold_cache", "imh", "wedlm",
                           "llada2_forward", "llada2_decode")
              for r in s.get(name, {}).get("rows", []) if r["status"] == "ok"]
  worst = max(compiles) if compiles else None
  out.append({"goal": "compile <= 60 s per program (slowest)", "measured": worst,
              "met": None if worst is None else worst <= 60})
  return out


_BATCH_FLAGS = {"forward": "forward_shapes", "decode": "decode_batches",
                "threshold_cache": "cache_batches", "imh": "imh_batches",
                "wedlm": "wedlm_batches", "llada2_forward": "llada2_forward_shapes",
                "llada2_decode": "llada2_batches"}


def rerun_flags(report: dict[str, Any]) -> str | None:
  """The flags that run just the settings the time budget skipped (and the peak, for MFU)."""
  skipped: dict[str, list[str]] = {}
  for name, section in report["sections"].items():
    for r in section.get("rows", []):
      if r["status"] == "skipped" and r.get("reason", "").startswith("time budget"):
        skipped.setdefault(name, []).append(r["setting"].removeprefix("B="))
  skipped.pop("matmul_peak", None)
  if not skipped:
    return None
  parts = [f"--sections=matmul_peak,{','.join(skipped)}"]
  parts += [f"--{_BATCH_FLAGS[name]}={','.join(values)}" for name, values in skipped.items()]
  return " ".join(parts)


def machine_info() -> dict[str, Any]:
  info = {"platform": platform.platform(), "python": platform.python_version(),
          "cpu_count": os.cpu_count(), "jax": jax.__version__,
          "jax_backend": jax.default_backend(),
          "devices": [d.device_kind for d in jax.devices()],
          "torch": None if torch is None else torch.__version__}
  if torch is not None and torch.cuda.is_available():
    info["torch_cuda_device"] = torch.cuda.get_device_name(0)
  return info


def run_all(run: Run) -> str:
  """Sets up the weights (and the PyTorch model), runs the selected sections, writes the JSON
  and the markdown to `run.out_dir`, and returns the markdown."""
  report = run.report
  report.setdefault("machine", machine_info())
  report.setdefault("sections", {})
  print(f"{report['machine']['devices'][0]} ({report['machine']['jax_backend']}), jax "
        f"{jax.__version__}, torch {report['machine']['torch']}", flush=True)
  try:
    report["model"] = setup_model(run)
  except Exception as e:  # pylint: disable=broad-except
    report["model"] = {"status": "error", "error": f"{type(e).__name__}: {e}",
                       "traceback": traceback.format_exc()[-4000:]}
    run.save()
    raise
  try:
    report["torch_side"] = setup_torch(run)
  except Exception as e:  # pylint: disable=broad-except
    run.torch_skip = f"PyTorch set-up failed: {type(e).__name__}: {e}"
    report["torch_side"] = {"status": "error", "error": run.torch_skip,
                            "traceback": traceback.format_exc()[-4000:]}
  run.save()
  if any(name.startswith("llada2") for name in run.settings.sections):
    from experiments import accelerator_llada2  # pylint: disable=import-outside-toplevel
    run.llada2 = accelerator_llada2.LLaDA2State(run)
  for name, section in SECTIONS.items():
    if name not in run.settings.sections:
      report["sections"][name] = {"status": "skipped", "reason": "not in --sections", "rows": []}
      continue
    try:
      section(run)
    except Exception as e:  # pylint: disable=broad-except
      # Errors inside a setting are recorded there; this catches a section's own set-up.
      run.section(name).update(status="error", error=f"{type(e).__name__}: {e}",
                               traceback=traceback.format_exc()[-4000:])
      run.save()
    rows = run.section(name)["rows"]
    if run.section(name)["status"] == "ok" and any(r["status"] != "ok" for r in rows):
      run.section(name)["status"] = "partial"
  report["rerun_flags"] = rerun_flags(report)
  report["goals"] = goals(report)
  run.save()
  text = tables(report, run.settings)
  text += "\n\nGoals (recorded, not asserted)\n\n" + "\n".join(
      f"- {g['goal']}: " + ("not measured" if g["measured"] is None else
                           f"{g['measured']:.3g} ({'met' if g['met'] else 'not met'})")
      for g in report["goals"])
  if report["rerun_flags"]:
    text += f"\n\nSkipped for time; to run them: {report['rerun_flags']}"
  (run.out_dir / MD_NAME).write_text(text + "\n")
  return text
