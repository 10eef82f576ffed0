"""One prepared accelerator benchmark: LLaDA-8B shapes in bfloat16 on one device, against LLaDA's
PyTorch loop on the same device.

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
  wedlm            WeDLM-8B streaming decoding: a reported gap until that family is in the tree
Every decode program's lowering and compile time is reported (goal: <= 60 s each).
FLOPs are model FLOPs (benchlib.forward_flops: 2 x matmul parameters per token + attention),
each side charged with what it computes: the JAX loop applies the LM head to the current block
only, LLaDA's loop to every position, IMH's candidate passes to every position; the block cache
counts one full pass per block and W-token window passes against the cached keys otherwise.
With random weights no draw reaches probability 0.9, so Threshold commits one token per step (its
worst case, 256 steps); its ms per step is the figure that carries over to real weights.

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
step). One forward of [B, 288] costs 4.1 TFLOP per row, so a low-confidence run (128 steps) is
about 1.3 s at B = 1 (weight-bound), 7 s at B = 8 and 35 s at B = 32; IMH at B = 8 evaluates 32
canvases a step (about 38 s a run). Estimated settings, s (compile + warm-up + timed runs):
  forward 1x1024 20, 8x1024 22, 32x512 23; decode (JAX + PyTorch) B=1 36, B=8 67, B=32 203;
  threshold_cache B=1 26, B=8 36; imh B=8 134: 566 s, plus about 35 s of imports, init and peak.
So the whole plan needs about 10 min at these assumptions (about 7.5 min at 75% MFU and 10 s
compiles). With --budget_s=450 the full run stops starting settings that would end later: at the
assumptions it measures everything up to threshold_cache B=1 in about 7.2 min, skips
threshold_cache B=8 and IMH, and prints the flags that run just those (about 3.5 min more):
  --sections=matmul_peak,threshold_cache,imh --cache_batches=8 --imh_batches=8
--quick (--budget_s=170): forward 8x1024, decode B in {1, 8} with PyTorch, threshold_cache B=1;
about 3 min (the guard drops threshold_cache B=1 if the device is slower than assumed).
Memory: the 8.0B bf16 weights take 14.9 GiB once (PyTorch aliases them); the largest transient is
the forward at 32 x 512, whose float32 logits alone are 8.3 GB; the PyTorch loop at B = 32 holds
about 11 GB of logits and softmax, IMH at B = 8 about 15 GB: under 50 GB in all, well inside an
H200's ~139 GiB. JAX does not preallocate (so PyTorch can share the device) unless
XLA_PYTHON_CLIENT_PREALLOCATE is set.
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

_T0 = time.perf_counter()  # the time budget counts from here, imports included
# Before jax is imported: JAX and PyTorch share one device, and JAX would take 75% of it.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

from dllm_jax import models, sampling, sharding  # noqa: E402
from dllm_jax.models import ModelConfig  # noqa: E402
from experiments import benchlib  # noqa: E402

try:  # PyTorch is optional: without it the PyTorch rows are reported as skipped.
  import torch  # noqa: E402
  from tests.torch_ref import llada_generate_torch, llada_torch  # noqa: E402
  _TORCH_MISSING = None
except ImportError as e:  # pragma: no cover - depends on the machine
  torch = None
  _TORCH_MISSING = f"torch is not importable ({e})"

_OUT_DIR = flags.DEFINE_string("out_dir", "/tmp/dllm_jax_bench/accelerator",
                               "Directory for bench_accelerator.json and bench_accelerator.md.")
_QUICK = flags.DEFINE_bool("quick", False, "The short plan (about 3 min on an H200); flags "
                           "given explicitly still win.")
_PLAN_ONLY = flags.DEFINE_bool("plan_only", False, "Print the estimated plan and exit.")
_COMPILE_ONLY = flags.DEFINE_bool("compile_only", False, "Compile every program, run none "
                                  "(compile times only).")
_SECTIONS = flags.DEFINE_list("sections", ["matmul_peak", "forward", "decode", "threshold_cache",
                                           "imh", "wedlm"], "Sections to run.")
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
_TORCH_STEP_OVERHEAD = 0.005  # s per step of PyTorch eager work the estimates assume

_QUICK_DEFAULTS = {"forward_shapes": "8x1024", "decode_batches": ["1", "8"],
                   "cache_batches": ["1"], "imh_batches": [], "wedlm_batches": ["1"],
                   "setting_seconds": 12.0, "budget_s": 170.0}
JSON_NAME, MD_NAME = "bench_accelerator.json", "bench_accelerator.md"


def _flag(holder: flags.FlagHolder) -> Any:
  """The flag's value, or its --quick default when --quick is on and it was not given."""
  if _QUICK.value and not flags.FLAGS[holder.name].present and holder.name in _QUICK_DEFAULTS:
    return _QUICK_DEFAULTS[holder.name]
  return holder.value


def _ints(holder: flags.FlagHolder) -> list[int]:
  return [int(x) for x in _flag(holder)]


def model_config() -> ModelConfig:
  config = models.PRESETS[_MODEL.value](dtype=_DTYPE.value, param_dtype=_DTYPE.value)
  changes = {}
  for item in _OVERRIDES.value:
    name, _, value = item.partition("=")
    fields = {f.name: f for f in dataclasses.fields(ModelConfig)}
    if name not in fields or not value:
      raise ValueError(f"--overrides item {item!r}: expected name=value with name one of "
                       f"{sorted(fields)}")
    current = getattr(config, name)
    if isinstance(current, bool):
      changes[name] = value.lower() in ("1", "true")
    else:
      changes[name] = type(current)(value) if current is not None else int(value)
  return config.replace(**changes)


# ----------------------------------------------------------------------------------------------
# FLOPs and estimates


def window_flops(config: ModelConfig, batch: int, length: int, width: int) -> float:
  """Model FLOPs of a block-cache window pass: `width` tokens through every layer, attending to
  `length` cached keys, and the LM head over the window."""
  c = config
  head = c.hidden_size * c.vocab_size
  per_token = (2 * (benchlib.matmul_params(c) - head)
               + 4 * length * c.num_heads * c.head_dim * c.num_layers + 2 * head)
  return float(per_token * width * batch)


@dataclasses.dataclass(frozen=True)
class Costs:
  """Estimates: FLOPs at `peak_flops` x `mfu`, never faster than streaming the weights once."""

  config: ModelConfig
  peak_flops: float
  mfu: float
  bandwidth: float  # bytes / s

  def pass_s(self, flops: float) -> float:
    weight_bytes = (benchlib.matmul_params(self.config)
                    * jnp.dtype(self.config.param_dtype).itemsize)
    return max(flops / (self.peak_flops * self.mfu), weight_bytes / self.bandwidth)


def _decode_shapes() -> tuple[int, int, int, int]:
  """P + G, G, W and the scheduled steps."""
  gen, block = _GEN.value, min(_BLOCK.value, _GEN.value)
  return _PROMPT.value + gen, gen, block, gen // _TOKENS_PER_STEP.value


def estimate_runs(costs: Costs, section: str, batch: int, length: int = 0,
                  with_torch: bool = False) -> dict[str, tuple[float, float]]:
  """Estimated seconds of (the warm-up, one timed run) of each contender of a setting."""
  c = costs.config
  if section == "forward":
    t = costs.pass_s(benchlib.forward_flops(c, batch, length))
    return {"jax": (t, t)}
  L, G, W, steps = _decode_shapes()
  if section == "decode":
    t = steps * costs.pass_s(benchlib.forward_flops(c, batch, L, W))
    runs = {"jax": (t, t)}
    if with_torch:  # PyTorch warms up with one forward pass (it has nothing to compile)
      step = costs.pass_s(benchlib.forward_flops(c, batch, L)) + _TORCH_STEP_OVERHEAD
      runs["torch"] = (step, steps * step)
    return runs
  if section == "threshold_cache":  # worst case: one token per step
    blocks = G // W
    t = (blocks * costs.pass_s(benchlib.forward_flops(c, batch, L, W))
         + (G - blocks) * costs.pass_s(window_flops(c, batch, L, W)))
    return {"jax": (t, t)}
  if section == "imh":
    t = (steps + 1) * costs.pass_s(benchlib.forward_flops(c, _IMH_K.value * batch, L))
    return {"jax": (t, t)}
  raise ValueError(section)


def timed_repeats(round_s: float, time_left: float | None) -> int:
  """Timed runs of a setting whose contenders take `round_s` in all, once each."""
  fit = _flag(_SETTING_SECONDS)
  if time_left is not None:
    fit = min(fit, time_left)
  return max(_MIN_REPEATS.value, min(_REPEATS.value, int(fit // max(round_s, 1e-9))))


def estimate_setting(costs: Costs, section: str, compile_s: float, batch: int,
                     length: int = 0, with_torch: bool = False) -> float:
  if _COMPILE_ONLY.value:
    return compile_s
  runs = estimate_runs(costs, section, batch, length, with_torch)
  repeats = timed_repeats(sum(t for _, t in runs.values()), None)
  return compile_s + sum(warm + repeats * t for warm, t in runs.values())


def plan(costs: Costs, compile_s: float, with_torch: bool) -> list[tuple[str, str, float]]:
  """(section, setting, estimated seconds) of every setting the flags ask for."""
  rows = []
  if "forward" in _SECTIONS.value:
    for batch, length in benchlib.parse_settings(_flag(_FORWARD_SHAPES)):
      rows.append(("forward", f"{batch}x{length}",
                   estimate_setting(costs, "forward", compile_s, batch, length)))
  for section, holder in (("decode", _DECODE_BATCHES), ("threshold_cache", _CACHE_BATCHES),
                          ("imh", _IMH_BATCHES)):
    if section in _SECTIONS.value:
      rows += [(section, f"B={b}", estimate_setting(costs, section, compile_s, b,
                                                    with_torch=with_torch))
               for b in _ints(holder)]
  return rows


# ----------------------------------------------------------------------------------------------
# The run: context, timing, recording


def _torch_wanted() -> bool:
  return _TORCH.value == "on" or (_TORCH.value == "auto" and jax.default_backend() == "gpu")


@dataclasses.dataclass
class Run:
  """What the sections share: the model on the device, the peak, the report being written."""

  config: ModelConfig
  out_dir: pathlib.Path
  report: dict[str, Any]
  start: float = _T0
  params: Any = None
  denoise: Any = None
  device: Any = None
  peak_flops: float | None = None
  torch_model: Any = None
  torch_skip: str | None = None  # why the PyTorch side does not run
  torch_shares_weights: bool = False
  compile_times: list[float] = dataclasses.field(default_factory=list)

  def elapsed(self) -> float:
    return time.perf_counter() - self.start

  def time_left(self) -> float | None:
    budget = _flag(_BUDGET)
    return budget - self.elapsed() if budget > 0 else None

  def costs(self) -> Costs:
    peak = self.peak_flops or _ASSUMED_PEAK.value * 1e12
    return Costs(self.config, peak, _ASSUMED_MFU.value, _ASSUMED_BW.value * 1e9)

  def compile_guess(self) -> float:
    times = self.compile_times
    return statistics.mean(times) if times else _ASSUMED_COMPILE.value

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
  repeats, r = _MIN_REPEATS.value, 0
  while r < repeats and fns:
    order = list(fns.items())
    for name, fn in (reversed(order) if r % 2 else order):
      t = call(name, fn)
      if t is not None:
        samples[name].append(t)
    if r == 0:
      repeats = timed_repeats(sum(samples[name][0] for name in fns), time_left)
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
  keys = jax.random.split(jax.random.key(_SEED.value), len(leaves))

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


def _random_torch_model(config: ModelConfig, device: "torch.device") -> "torch.nn.Module":
  """`LLaDATorch` with its own random weights made on `device` (normal(0.02), unit scales)."""
  default = torch.get_default_dtype()
  torch.set_default_dtype(llada_torch.TORCH_DTYPES[config.param_dtype])
  try:
    with torch.device(device):
      model = llada_torch.LLaDATorch(config)
  finally:
    torch.set_default_dtype(default)
  generator = torch.Generator(device).manual_seed(_SEED.value)
  with torch.no_grad():
    for parameter in model.parameters():
      if parameter.ndim == 2:
        parameter.normal_(0.0, 0.02, generator=generator)
  return model


def setup_torch(run: Run) -> dict[str, Any]:
  """The PyTorch model over the JAX weight buffers (no copy), or why there is none."""
  if _TORCH.value == "off":
    run.torch_skip = "--torch=off"
  elif torch is None:
    run.torch_skip = _TORCH_MISSING
  elif not _torch_wanted():
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
    model = _random_torch_model(run.config, device)
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
  n, chain, dtype = _PEAK_N.value, _PEAK_CHAIN.value, jnp.dtype(_DTYPE.value)
  flops = 2.0 * n ** 3 * chain

  def body():
    ka, kb = jax.random.split(jax.random.key(_SEED.value))
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
    times = measure(run, fns) if not _COMPILE_ONLY.value else {}
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


def _prompt(run: Run, batch: int, length: int, salt: int) -> np.ndarray:
  """Random tokens below every special id of the model."""
  c = run.config
  special = min(t for t in (c.mask_token_id, c.eos_token_id, c.pad_token_id, c.eot_token_id,
                            c.bos_token_id) if t is not None)
  rng = np.random.default_rng(_SEED.value * 1000 + salt)
  return rng.integers(0, special, (batch, length)).astype(np.int32)


def section_forward(run: Run) -> None:
  for batch, length in benchlib.parse_settings(_flag(_FORWARD_SHAPES)):
    def body(batch=batch, length=length):
      tokens = jax.device_put(_prompt(run, batch, length, batch * 7 + length), run.device)
      mask = jax.device_put(np.ones((batch, length), bool), run.device)
      compiled, compile_times = run.compile(
          lambda: jax.jit(run.denoise).lower(run.params, tokens, mask))
      row = {"batch": batch, "length": length, "compile": compile_times}
      if _COMPILE_ONLY.value:
        return row
      t = measure(run, {"jax": lambda: compiled(run.params, tokens, mask).block_until_ready()})
      row["jax"] = rates(_timed_ok(t, "jax"), benchlib.forward_flops(run.config, batch, length),
                         run.peak_flops, tokens=batch * length)
      return row

    run.setting("forward", f"{batch}x{length}",
                estimate_setting(run.costs(), "forward", run.compile_guess(), batch, length),
                body)


def _decode_program(run: Run, sampler: sampling.Sampler, batch: int, salt: int):
  prompt = jax.device_put(_prompt(run, batch, _PROMPT.value, salt), run.device)
  mask = jax.device_put(np.ones(prompt.shape, bool), run.device)
  key = jax.random.key(_SEED.value)
  compiled, compile_times = run.compile(lambda: sampling.generate.lower(
      sampler, run.denoise, run.params, prompt, mask, key))
  return (lambda: jax.block_until_ready(compiled(run.params, prompt, mask, key))), prompt, \
      compile_times


def section_decode(run: Run) -> None:
  """Low-confidence decoding, the compiled JAX loop against LLaDA's PyTorch loop."""
  L, G, W, steps = _decode_shapes()
  sampler = sampling.Sampler.for_model(run.config, gen_length=G, block_length=W, steps=steps,
                                       remasking=sampling.LowConfidence())
  for batch in _ints(_DECODE_BATCHES):
    def body(batch=batch):
      jax_call, prompt, compile_times = _decode_program(run, sampler, batch, batch)
      row: dict[str, Any] = {"batch": batch, "prompt_length": _PROMPT.value, "gen_length": G,
                             "block_length": W, "steps": steps, "compile": compile_times}
      if _COMPILE_ONLY.value:
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
                estimate_setting(run.costs(), "decode", run.compile_guess(), batch,
                                 with_torch=run.torch_model is not None), body)


def section_threshold_cache(run: Run) -> None:
  L, G, W, _ = _decode_shapes()
  sampler = sampling.Sampler.for_model(run.config, gen_length=G, block_length=W,
                                       remasking=sampling.Threshold(0.9),
                                       cache=sampling.BlockCache())
  for batch in _ints(_CACHE_BATCHES):
    def body(batch=batch):
      call, _, compile_times = _decode_program(run, sampler, batch, 100 + batch)
      row = {"batch": batch, "gen_length": G, "block_length": W, "compile": compile_times}
      if _COMPILE_ONLY.value:
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
                estimate_setting(run.costs(), "threshold_cache", run.compile_guess(), batch),
                body)


def section_imh(run: Run) -> None:
  L, G, W, steps = _decode_shapes()
  k = _IMH_K.value
  sampler = sampling.Sampler.for_model(run.config, gen_length=G, block_length=W, steps=steps,
                                       remasking=sampling.IMH(alpha=2.0, num_candidates=k))
  for batch in _ints(_IMH_BATCHES):
    def body(batch=batch):
      call, _, compile_times = _decode_program(run, sampler, batch, 200 + batch)
      row = {"batch": batch, "candidates": k, "gen_length": G, "block_length": W,
             "steps": steps, "compile": compile_times}
      if _COMPILE_ONLY.value:
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
                estimate_setting(run.costs(), "imh", run.compile_guess(), batch), body)


def section_wedlm(run: Run) -> None:
  """WeDLM-8B streaming decoding at --wedlm_batches: tokens/s, ms/step, MFU, compile time.

  Not written yet: the WeDLM family and its streaming decoder were not in the tree when this
  benchmark was written. To add it, make the WeDLM-8B weights with `init_on_device(run, config)`
  and time its streaming decoder per batch with `run.setting`, `measure` and `rates`, as
  `section_decode` does.
  """
  missing = "the WeDLM family and its streaming decoder are not in this tree yet"
  if "wedlm_8b" in models.PRESETS:
    missing = "models.wedlm_8b exists, but this section has not been written for it yet"
  section = run.section("wedlm")
  section.update(status="not_available", reason=missing)
  for batch in _ints(_WEDLM_BATCHES):
    section["rows"].append({"setting": f"B={batch}", "status": "not_available",
                            "reason": missing})
  run.save()
  print(f"wedlm: not available ({missing})", flush=True)


SECTIONS: dict[str, Callable[[Run], None]] = {
    "matmul_peak": section_matmul_peak, "forward": section_forward, "decode": section_decode,
    "threshold_cache": section_threshold_cache, "imh": section_imh, "wedlm": section_wedlm}


# ----------------------------------------------------------------------------------------------
# Tables and main


def _pct(x: float | None) -> str:
  return "" if x is None else f"{100 * x:.0f}%"


def tables(report: dict[str, Any]) -> str:
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
                      ("imh", f"IMH K={_IMH_K.value}")):
    for r in ok(name):
      j, t = r.get("jax", {}), r.get("torch", {})
      decode_rows.append([
          label, r["batch"], r.get("steps", ""), j.get("tokens_per_s", ""),
          j.get("ms_per_step", ""), _pct(j.get("mfu")), t.get("tokens_per_s", ""),
          t.get("ms_per_step", ""), _pct(t.get("mfu")),
          f"{r['speed_ratio']:.2f}x" if "speed_ratio" in r else "",
          r["compile"]["lower_s"] + r["compile"]["compile_s"]])
  if decode_rows:
    out.append(f"\nDecoding, gen {_GEN.value}, block {min(_BLOCK.value, _GEN.value)}, prompt "
               f"{_PROMPT.value}, greedy (JAX: compiled loop; torch: LLaDA's loop, eager, SDPA)\n")
    out.append(benchlib.markdown_table(
        ["sampler", "B", "steps", "JAX tok/s", "JAX ms/step", "JAX MFU", "torch tok/s",
         "torch ms/step", "torch MFU", "JAX/torch", "compile s (lower + compile)"], decode_rows))
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
            1.0)]
  out = [{"goal": goal, "measured": v, "met": None if v is None else v >= target}
         for goal, v, target in items]
  compiles = [r["compile"]["lower_s"] + r["compile"]["compile_s"]
              for name in ("forward", "decode", "threshold_cache", "imh")
              for r in s.get(name, {}).get("rows", []) if r["status"] == "ok"]
  worst = max(compiles) if compiles else None
  out.append({"goal": "compile <= 60 s per program (slowest)", "measured": worst,
              "met": None if worst is None else worst <= 60})
  return out


_BATCH_FLAGS = {"forward": "forward_shapes", "decode": "decode_batches",
                "threshold_cache": "cache_batches", "imh": "imh_batches"}


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


def main(argv):
  del argv
  config = model_config()
  if _PLAN_ONLY.value:
    costs = Costs(config, _ASSUMED_PEAK.value * 1e12, _ASSUMED_MFU.value, _ASSUMED_BW.value * 1e9)
    rows = plan(costs, _ASSUMED_COMPILE.value, with_torch=_TORCH.value != "off")
    print(benchlib.markdown_table(["section", "setting", "estimated s"], rows))
    print(f"total {sum(r[2] for r in rows):.0f} s of settings (+ set-up and the peak), budget "
          f"{_flag(_BUDGET):.0f} s")
    return
  unknown = sorted(set(_SECTIONS.value) - set(SECTIONS))
  if unknown:
    raise app.UsageError(f"unknown --sections {unknown}; expected some of {list(SECTIONS)}")
  flag_values = {h.name: _flag(h) for h in (_FORWARD_SHAPES, _DECODE_BATCHES, _CACHE_BATCHES,
                                           _IMH_BATCHES, _WEDLM_BATCHES, _SETTING_SECONDS,
                                           _BUDGET)}
  report = {"machine": machine_info(), "flags": {**flags.FLAGS.flag_values_dict(), **flag_values},
            "sections": {}}
  run = Run(config, pathlib.Path(_OUT_DIR.value), report)
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
  for name, section in SECTIONS.items():
    if name not in _SECTIONS.value:
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
  text = tables(report)
  text += "\n\nGoals (recorded, not asserted)\n\n" + "\n".join(
      f"- {g['goal']}: " + ("not measured" if g["measured"] is None else
                           f"{g['measured']:.3g} ({'met' if g['met'] else 'not met'})")
      for g in report["goals"])
  if report["rerun_flags"]:
    text += f"\n\nSkipped for time; to run them: {report['rerun_flags']}"
  print("\n" + text)
  (run.out_dir / MD_NAME).write_text(text + "\n")
  print(f"\nwrote {run.out_dir / JSON_NAME} and {MD_NAME} ({run.elapsed():.0f} s)")


if __name__ == "__main__":
  app.run(main)
