"""What the accelerator benchmark measures (`Settings`) and what it is expected to cost.

The estimates let the benchmark keep inside its time budget and let `--plan_only` print the plan
without a device: each pass costs its model FLOPs at the peak times an assumed MFU, and never
less than streaming the weights once; each program costs the assumed (later: the mean measured)
compile time.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from dllm_jax.models import ModelConfig
from experiments import benchlib

SECTION_NAMES = ("matmul_peak", "forward", "decode", "threshold_cache", "imh", "wedlm",
                 "llada2_forward", "llada2_decode")
TORCH_STEP_OVERHEAD = 0.005  # s per step of PyTorch eager work the estimates assume
# s per expert with tokens per MoE layer in the official PyTorch loop (its Python loop launches
# a handful of small kernels per expert); an assumption until measured
TORCH_EXPERT_OVERHEAD = 50e-6
LLADA2_THRESHOLD = 0.95  # LLaDA2's default rule: threshold 0.95, block 32, steps = block


@dataclasses.dataclass(frozen=True)
class Settings:
  """What to measure and how much time to spend on it (the entry point's flags)."""

  config: ModelConfig
  sections: tuple[str, ...] = SECTION_NAMES
  forward_shapes: tuple[tuple[int, int], ...] = ((1, 1024), (8, 1024), (32, 512))
  gen_length: int = 256
  block_length: int = 32
  prompt_length: int = 32
  tokens_per_step: int = 2           # low-confidence and IMH: steps = gen_length / this
  decode_batches: tuple[int, ...] = (1, 8, 32)
  cache_batches: tuple[int, ...] = (1, 8)
  imh_batches: tuple[int, ...] = (8,)
  imh_candidates: int = 4
  wedlm_batches: tuple[int, ...] = (1, 8)
  wedlm_config: ModelConfig | None = None  # the WeDLM section's model (WeDLM-8B)
  wedlm_window: int = 16
  llada2_config: ModelConfig | None = None  # the LLaDA2 sections' model (LLaDA2.0-mini)
  llada2_forward_shapes: tuple[tuple[int, int], ...] = ((8, 1024),)
  llada2_batches: tuple[int, ...] = (1, 8, 32)
  llada2_gen_length: int = 256
  llada2_torch_gen_length: int = 64  # the official generate's tokens per row (it is slow)
  llada2_torch_rows: int = 1         # rows of each batch it decodes (one prompt at a time)
  torch: str = "auto"                # auto: only on a GPU; on: wherever JAX runs; off
  seed: int = 0
  peak_n: int = 8192
  peak_chain: int = 10
  repeats: int = 5                   # most timed runs per setting
  min_repeats: int = 2               # fewest
  setting_seconds: float = 45.0      # timed runs per setting: as many as fit in this
  budget_s: float = 450.0            # 0: no budget
  compile_only: bool = False
  assumed_peak_tflops: float = 790.0
  assumed_mfu: float = 0.6
  assumed_bandwidth_gbs: float = 4000.0
  assumed_compile_s: float = 20.0

  def __post_init__(self):
    unknown = sorted(set(self.sections) - set(SECTION_NAMES))
    if unknown:
      raise ValueError(f"unknown sections {unknown}; expected some of {list(SECTION_NAMES)}")
    if self.torch not in ("auto", "on", "off"):
      raise ValueError(f"torch must be auto, on or off, got {self.torch!r}")
    llada2 = self.llada2_config
    if llada2 is not None and any(s.startswith("llada2") for s in self.sections):
      if not llada2.attention_block:
        raise ValueError("the llada2 sections need a block diffusion model (attention_block)")
      if self.prompt_length % llada2.attention_block:
        raise ValueError(f"--prompt_length={self.prompt_length} must be a multiple of the "
                         f"LLaDA2 block {llada2.attention_block} (the generation then starts a "
                         "block, on both sides), or leave llada2_* out of --sections")
      if not 0 < self.llada2_torch_gen_length <= self.llada2_gen_length:
        raise ValueError("--llada2_torch_gen_length must be in [1, --llada2_gen_length]")

  @property
  def decode_shapes(self) -> tuple[int, int, int, int]:
    """P + G, G, W and the scheduled steps of the decode sections."""
    gen, block = self.gen_length, min(self.block_length, self.gen_length)
    return self.prompt_length + gen, gen, block, gen // self.tokens_per_step

  @property
  def llada2_shapes(self) -> tuple[int, int, int]:
    """Canvas length L, generated tokens G and block W of the LLaDA2 decode section (JAX)."""
    W = self.llada2_config.attention_block
    G = self.llada2_gen_length
    return self.prompt_length + -(-G // W) * W, G, W

  @property
  def torch_wanted(self) -> bool:
    return self.torch == "on" or (self.torch == "auto" and jax.default_backend() == "gpu")


# ----------------------------------------------------------------------------------------------
# FLOPs and estimates


def window_flops(config: ModelConfig, batch: int, length: int, width: int) -> float:
  """Model FLOPs of a block-cache window pass: `width` tokens through every layer (a mixture of
  experts: its active parameters), attending to `length` cached keys, and the LM head over the
  window."""
  c = config
  head = c.hidden_size * c.vocab_size
  per_token = (2 * (benchlib.matmul_params(c, active=True) - head)
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
    weight_bytes = (benchlib.matmul_params(self.config)  # every expert: an upper bound
                    * jnp.dtype(self.config.param_dtype).itemsize)
    return max(flops / (self.peak_flops * self.mfu), weight_bytes / self.bandwidth)


def torch_moe_overhead(config: ModelConfig, tokens: int) -> float:
  """The official PyTorch MoE loop's launch cost for one forward of `tokens` tokens: the experts
  expected to receive a token, per MoE layer, at TORCH_EXPERT_OVERHEAD each."""
  E, k = config.num_experts, config.experts_per_token
  if not E:
    return 0.0
  busy = E * (1 - (1 - k / E) ** tokens)
  layers = sum(map(config.is_moe_layer, range(config.num_layers)))
  return layers * busy * TORCH_EXPERT_OVERHEAD


def llada2_decode_runs(settings: Settings, costs: Costs, batch: int, with_torch: bool
                       ) -> dict[str, tuple[float, float]]:
  """LLaDA2 decoding, worst case (random weights: one token per step, G steps): the JAX loop
  prefills the prompt's blocks, then a W-token window pass per step against the cache (and one
  closing pass per block); the
  official generate decodes `llada2_torch_rows` rows one at a time, recomputing the canvas up
  to the current block each step (warm-up: one forward)."""
  c = costs.config
  L, G, W = settings.llada2_shapes
  P = settings.prompt_length
  t = costs.pass_s(benchlib.forward_flops(c, batch, P, 1)) + (G + -(-G // W)) * costs.pass_s(
      window_flops(c, batch, L, W))
  runs = {"jax": (t, t)}
  if with_torch:
    Gt, rows = settings.llada2_torch_gen_length, min(batch, settings.llada2_torch_rows)
    ends = [P + (i // W + 1) * W for i in range(Gt)]  # canvas recomputed at each step
    step_s = [costs.pass_s(benchlib.forward_flops(c, 1, end)) + TORCH_STEP_OVERHEAD
              + torch_moe_overhead(c, end) for end in ends]
    runs["torch"] = (step_s[-1], rows * sum(step_s))
  return runs


def estimate_runs(settings: Settings, costs: Costs, section: str, batch: int, length: int = 0,
                  with_torch: bool = False) -> dict[str, tuple[float, float]]:
  """Estimated seconds of (the warm-up, one timed run) of each contender of a setting."""
  c = costs.config
  if section == "llada2_decode":
    return llada2_decode_runs(settings, costs, batch, with_torch)
  if section in ("forward", "llada2_forward"):
    t = costs.pass_s(benchlib.forward_flops(c, batch, length))
    return {"jax": (t, t)}
  L, G, W, steps = settings.decode_shapes
  if section == "decode":
    t = steps * costs.pass_s(benchlib.forward_flops(c, batch, L, W))
    runs = {"jax": (t, t)}
    if with_torch:  # PyTorch warms up with one forward pass (it has nothing to compile)
      step = costs.pass_s(benchlib.forward_flops(c, batch, L)) + TORCH_STEP_OVERHEAD
      runs["torch"] = (step, steps * step)
    return runs
  if section == "threshold_cache":  # worst case: one token per step
    blocks = G // W
    t = (blocks * costs.pass_s(benchlib.forward_flops(c, batch, L, W))
         + (G - blocks) * costs.pass_s(window_flops(c, batch, L, W)))
    return {"jax": (t, t)}
  if section == "imh":
    t = (steps + 1) * costs.pass_s(benchlib.forward_flops(c, settings.imh_candidates * batch, L))
    return {"jax": (t, t)}
  if section == "wedlm":  # one token per step: G window passes against the prefix cache
    t = G * costs.pass_s(wedlm_step_flops(settings, batch))
    return {"jax": (t, t)}
  raise ValueError(section)


def wedlm_step_flops(settings: Settings, batch: int) -> float:
  """Model FLOPs of one streaming step: the 2W forward slots (the window and W more masks)
  through every layer against the whole key buffer (P + G + 2W keys: what the static-shape
  attention computes), LM head included."""
  W = settings.wedlm_window
  L = settings.prompt_length + settings.gen_length + 2 * W
  return window_flops(settings.wedlm_config or settings.config, batch, L, 2 * W)


def timed_repeats(settings: Settings, round_s: float, time_left: float | None) -> int:
  """Timed runs of a setting whose contenders take `round_s` in all, once each."""
  fit = settings.setting_seconds
  if time_left is not None:
    fit = min(fit, time_left)
  return max(settings.min_repeats, min(settings.repeats, int(fit // max(round_s, 1e-9))))


def estimate_setting(settings: Settings, costs: Costs, section: str, compile_s: float, batch: int,
                     length: int = 0, with_torch: bool = False) -> float:
  """Estimated seconds of a setting: compile, warm-ups and the timed runs."""
  if settings.compile_only:
    return compile_s
  runs = estimate_runs(settings, costs, section, batch, length, with_torch)
  repeats = timed_repeats(settings, sum(t for _, t in runs.values()), None)
  return compile_s + sum(warm + repeats * t for warm, t in runs.values())


def plan(settings: Settings, with_torch: bool) -> list[tuple[str, str, float]]:
  """(section, setting, estimated seconds) of every setting asked for, at the assumed peak."""
  costs = Costs(settings.config, settings.assumed_peak_tflops * 1e12, settings.assumed_mfu,
                settings.assumed_bandwidth_gbs * 1e9)
  llada2 = dataclasses.replace(costs, config=settings.llada2_config or settings.config)
  compile_s, rows = settings.assumed_compile_s, []
  if "forward" in settings.sections:
    for batch, length in settings.forward_shapes:
      rows.append(("forward", f"{batch}x{length}",
                   estimate_setting(settings, costs, "forward", compile_s, batch, length)))
  for section, batches in (("decode", settings.decode_batches),
                           ("threshold_cache", settings.cache_batches),
                           ("imh", settings.imh_batches), ("wedlm", settings.wedlm_batches)):
    if section in settings.sections:
      rows += [(section, f"B={b}", estimate_setting(settings, costs, section, compile_s, b,
                                                    with_torch=with_torch)) for b in batches]
  if "llada2_forward" in settings.sections:
    rows += [("llada2_forward", f"{b}x{n}", estimate_setting(
        settings, llada2, "llada2_forward", compile_s, b, n)) for b, n in
             settings.llada2_forward_shapes]
  if "llada2_decode" in settings.sections:
    rows += [("llada2_decode", f"B={b}", estimate_setting(
        settings, llada2, "llada2_decode", compile_s, b, with_torch=with_torch))
             for b in settings.llada2_batches]
  return rows
