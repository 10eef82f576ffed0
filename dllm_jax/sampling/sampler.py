"""The sampler configuration: a frozen, hashable dataclass used as a static jit argument."""

from __future__ import annotations

import dataclasses
from typing import Any

from dllm_jax.sampling.block_cache import BlockCache
from dllm_jax.sampling.imh import IMH
from dllm_jax.sampling.learned_policy import LearnedPolicy
from dllm_jax.sampling.position_first import EGI, RankThenSample
from dllm_jax.sampling.remasking import (DreamOrigin, Entropy, LowConfidence, MaskGitPlus, Random,
                                         Threshold, TopKMargin, WeDLMEntropy)
from dllm_jax.sampling.rollout_imh import RolloutIMH
from dllm_jax.sampling.schedule import DreamSchedule, LinearSchedule
from dllm_jax.sampling.smc import SMC

RULES = (Random, LowConfidence, MaskGitPlus, TopKMargin, Entropy, WeDLMEntropy, DreamOrigin,
         Threshold, IMH, RolloutIMH, SMC, RankThenSample, EGI, LearnedPolicy)


@dataclasses.dataclass(frozen=True)
class Sampler:
  """How to decode `gen_length` tokens after a prompt.

  The generated region is split into blocks of `block_length` decoded left to right
  (`block_length=None` is full diffusion, one block). `steps` forward passes are split evenly
  over the blocks and `schedule` decides how many tokens each commits (default: `gen_length`
  steps, one token per step). `Threshold` takes no `steps`: each block runs until complete.

  Tokens are drawn at `temperature` (0 = argmax, the default) after optional top-k / top-p
  filtering. IMH, RolloutIMH and SMC draw at temperature 1 / alpha and take no `temperature`.
  `cfg_scale` > 0 adds classifier-free guidance (the unconditional canvas masks the prompt):
  logits = uncond + (cfg_scale + 1) * (cond - uncond). `forbid_eos` sets the EOS logit to -inf;
  `eos_confidence_inf` gives positions whose draw is EOS or EOT the lowest priority.
  `cache=BlockCache("dual" | "prefix")` reuses keys and values within a block (see `block_cache`).
  """

  gen_length: int
  mask_token_id: int
  block_length: int | None = None
  steps: int | None = None
  remasking: Any = LowConfidence()
  schedule: LinearSchedule | DreamSchedule = LinearSchedule()
  temperature: float | None = None
  top_p: float | None = None
  top_k: int | None = None
  cfg_scale: float = 0.0
  eos_token_id: int | None = None
  eot_token_id: int | None = None
  forbid_eos: bool = False
  eos_confidence_inf: bool = False
  cache: BlockCache | None = None

  def __post_init__(self):
    g, b = self.gen_length, self.block_len
    if g < 1:
      raise ValueError(f"gen_length must be >= 1, got {g}")
    if not 1 <= b <= g:
      raise ValueError(f"block_length must be in [1, gen_length={g}], got {b}")
    if g % b:
      raise ValueError(f"gen_length ({g}) must be divisible by block_length ({b})")
    if not isinstance(self.remasking, RULES):
      raise ValueError(f"remasking must be one of {[r.__name__ for r in RULES]}, got "
                       f"{self.remasking!r}")
    if not isinstance(self.schedule, (LinearSchedule, DreamSchedule)):
      raise ValueError(f"schedule must be LinearSchedule() or DreamSchedule(), got "
                       f"{self.schedule!r}")
    if self.remasking.uses_schedule:
      steps = self.total_steps
      if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
      if steps % self.num_blocks:
        raise ValueError(f"steps ({steps}) must be divisible by the number of blocks "
                         f"({self.num_blocks} = gen_length {g} / block_length {b})")
    elif self.steps is not None:
      raise ValueError(f"{type(self.remasking).__name__} runs each block until it is complete; "
                       "leave steps unset")
    if isinstance(self.remasking, (IMH, SMC)):
      name = type(self.remasking).__name__
      if self.temperature is not None:
        raise ValueError(f"{name} draws from p**alpha (temperature 1/alpha); set "
                         f"{name}(alpha=...) instead of temperature")
      if self.top_p is not None or self.top_k is not None:
        raise ValueError(f"{name}'s weights assume untruncated proposals; top_p/top_k "
                         f"are not supported with {name}")
    elif self.temperature is not None and self.temperature < 0:
      raise ValueError(f"temperature must be >= 0, got {self.temperature}")
    if self.top_p is not None and not 0 < self.top_p <= 1:
      raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
    if self.top_k is not None and self.top_k < 1:
      raise ValueError(f"top_k must be >= 1, got {self.top_k}")
    if self.cfg_scale < 0:
      raise ValueError(f"cfg_scale must be >= 0, got {self.cfg_scale}")
    if self.mask_token_id < 0:
      raise ValueError(f"mask_token_id must be >= 0, got {self.mask_token_id}")
    if self.forbid_eos and self.eos_token_id is None:
      raise ValueError("forbid_eos needs eos_token_id")
    if self.eos_confidence_inf and self.eos_token_id is None and self.eot_token_id is None:
      raise ValueError("eos_confidence_inf needs eos_token_id or eot_token_id")
    if self.cache is not None:
      if not isinstance(self.cache, BlockCache):
        raise ValueError(f"cache must be BlockCache(...) or None, got {self.cache!r}")
      if isinstance(self.remasking, (IMH, SMC)):
        raise ValueError(f"{type(self.remasking).__name__} scores with full forward passes; it "
                         "takes no cache")

  @classmethod
  def for_model(cls, config: Any, **fields: Any) -> Sampler:
    """A sampler with the model's special token ids (a `ModelConfig` or anything with them)."""
    ids = dict(mask_token_id=config.mask_token_id, eos_token_id=config.eos_token_id,
               eot_token_id=getattr(config, "eot_token_id", None))
    return cls(**{**ids, **fields})

  def replace(self, **changes: Any) -> Sampler:
    return dataclasses.replace(self, **changes)

  @property
  def block_len(self) -> int:
    return self.block_length or self.gen_length

  @property
  def num_blocks(self) -> int:
    return self.gen_length // self.block_len

  @property
  def total_steps(self) -> int:
    """Iterations of the decode loop: `steps`, or at most `gen_length` for Threshold and
    LearnedPolicy."""
    if not self.remasking.uses_schedule:
      return self.gen_length
    return self.steps if self.steps is not None else self.gen_length

  @property
  def steps_per_block(self) -> int:
    return max(self.total_steps // self.num_blocks, 1)

  @property
  def token_temperature(self) -> float:
    if isinstance(self.remasking, (IMH, SMC)):
      return self.remasking.temperature
    return self.temperature or 0.0

  @property
  def max_commits_per_step(self) -> int:
    """An upper bound on the positions one scheduled step commits."""
    if isinstance(self.schedule, DreamSchedule):
      return self.block_len
    return -(-self.block_len // self.steps_per_block)
