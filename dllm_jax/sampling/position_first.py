"""Position-first remasking (Jeon et al., "Low-Confidence Remasking Traps Flexibility").

LLaDA's low-confidence rule samples first and filters second: it draws a value at every masked
position at the temperature and commits the draws with the highest untempered probability, so a
non-top value survives only if it beats every competitor. Position-first rules rank the positions
by a score that does not look at the draws, then commit the value drawn there at the temperature.

Rule            position(s) committed                       value there
RankThenSample  highest c_i = max_v p_i(v), untempered        drawn at the sampler's temperature
EGI             first step: highest entropy of p_i            drawn at `first_temperature`
                later steps: as RankThenSample                 drawn at the sampler's temperature

Both follow the sampler's schedule (count per step). Since the score ignores the draws, the value
committed at a position is an exact sample of p_i at the temperature: TPP and low-confidence
coincide at temperature 0 only. With one token per step and temperature 1 the sequence follows
the model's joint law; with several per step it does not (the values of one step are drawn
independently from their marginals; `tests/test_position_first.py`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from dllm_jax.sampling import token_sampling
from dllm_jax.sampling.remasking import StepInputs, _Scheduled


def max_probability(logits_BGV: jax.Array) -> jax.Array:
  return jnp.max(jax.nn.softmax(logits_BGV.astype(jnp.float32), axis=-1), axis=-1)


def entropy(logits_BGV: jax.Array) -> jax.Array:
  log_p = jax.nn.log_softmax(logits_BGV.astype(jnp.float32), axis=-1)
  return -jnp.sum(jnp.where(jnp.isfinite(log_p), jnp.exp(log_p) * log_p, 0.0), axis=-1)


@dataclasses.dataclass(frozen=True)
class RankThenSample(_Scheduled):
  """TPP: commit where the model is most confident (untempered top-1 probability), the value
  drawn there at the sampler's temperature."""

  def confidence(self, inputs: StepInputs, keys_B: jax.Array) -> jax.Array:
    return max_probability(inputs.logits_BGV)


def _first_step(inputs: StepInputs) -> jax.Array:
  """Whether this is the generation's first step: block 0 runs the steps [0, steps_per_block)."""
  return (jnp.asarray(inputs.start) == 0) & (inputs.step_in_block == 0)


@dataclasses.dataclass(frozen=True)
class EGI(_Scheduled):
  """Entropy-guided initialisation: the first step commits at the highest-entropy position(s),
  the value drawn at `first_temperature`; every later step is RankThenSample."""

  first_temperature: float = 0.9

  def __post_init__(self):
    super().__post_init__()
    if not self.first_temperature >= 0:
      raise ValueError(f"EGI.first_temperature must be >= 0, got {self.first_temperature}")

  def redraw(self, inputs: StepInputs, keys_B: jax.Array, top_p: float | None,
             top_k: int | None) -> jax.Array:
    """The values of this step: at the first step drawn at `first_temperature` with the loop's
    own token keys (so the same noise, an exact draw at the other temperature)."""
    t = self.first_temperature
    logits_BGV = token_sampling.sampling_logits(inputs.logits_BGV, t, top_p, top_k)
    first_BG = token_sampling.draw_tokens(keys_B, logits_BGV, t, inputs.start, inputs.gen_length)
    return jnp.where(_first_step(inputs), first_BG, inputs.x0_BG)

  def confidence(self, inputs: StepInputs, keys_B: jax.Array) -> jax.Array:
    return jnp.where(_first_step(inputs), entropy(inputs.logits_BGV),
                     max_probability(inputs.logits_BGV))
