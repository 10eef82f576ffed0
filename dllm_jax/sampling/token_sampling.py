"""Drawing token values from logits: temperature by Gumbel-max, top-k / top-p filtering.

Gumbel-max: argmax(logits / T + g), g ~ Gumbel(0, 1), samples softmax(logits / T) exactly; it is
LLaDA's `exp(logits) / (-log u)**T` trick written additively. The noise and the scaled logits are
float64 when `jax_enable_x64` is on (LLaDA draws in float64) and float32 otherwise; T = 0 is argmax.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dllm_jax.sampling import row_random

NEG_INF = -jnp.inf


def noise_dtype() -> jnp.dtype:
  return jnp.float64 if jax.config.jax_enable_x64 else jnp.float32


def filter_top_k(logits_BGV: jax.Array, top_k: int | None) -> jax.Array:
  """Keeps the `top_k` largest logits per position (ties at the threshold are kept)."""
  if top_k is None or top_k >= logits_BGV.shape[-1]:
    return logits_BGV
  kth = jax.lax.top_k(logits_BGV, top_k)[0][..., -1:]
  return jnp.where(logits_BGV < kth, NEG_INF, logits_BGV)


def filter_top_p(logits_BGV: jax.Array, top_p: float | None) -> jax.Array:
  """Nucleus filtering: keeps the smallest set of tokens whose probability reaches `top_p`."""
  if top_p is None or top_p >= 1.0:
    return logits_BGV
  order = jnp.argsort(-logits_BGV, axis=-1)
  sorted_logits = jnp.take_along_axis(logits_BGV, order, axis=-1)
  sorted_probs = jax.nn.softmax(sorted_logits, axis=-1)
  # A token is dropped when the mass strictly before it already exceeds top_p.
  mass_before = jnp.cumsum(sorted_probs, axis=-1) - sorted_probs
  drop_sorted = mass_before > top_p
  drop = jnp.take_along_axis(drop_sorted, jnp.argsort(order, axis=-1), axis=-1)
  return jnp.where(drop, NEG_INF, logits_BGV)


def sampling_logits(logits_BGV: jax.Array, temperature: float, top_p: float | None,
                    top_k: int | None) -> jax.Array:
  """The logits of the distribution tokens are drawn from (before noise)."""
  if temperature > 0:
    logits_BGV = logits_BGV.astype(noise_dtype()) / temperature
  return filter_top_p(filter_top_k(logits_BGV, top_k), top_p)


def draw_tokens(keys_B: jax.Array, sample_logits_BGV: jax.Array, temperature: float,
                start: jax.Array | int = 0, gen_length: int | None = None) -> jax.Array:
  """One token per position from softmax(sample_logits) (argmax when temperature is 0).

  For a window [start, start + G) of a region of `gen_length` positions the noise is that of
  the whole region sliced to the window, so the draws do not depend on the window.
  """
  if temperature <= 0:
    return jnp.argmax(sample_logits_BGV, axis=-1).astype(jnp.int32)
  B, G, V = sample_logits_BGV.shape
  draw = lambda keys, shape: row_random.gumbel(keys, shape, noise_dtype())
  gumbel = row_random.window_draws(draw, keys_B, start, G, gen_length, V)
  return jnp.argmax(sample_logits_BGV.astype(noise_dtype()) + gumbel, axis=-1).astype(jnp.int32)
