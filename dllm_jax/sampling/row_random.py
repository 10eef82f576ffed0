"""Random draws with one key per batch row.

Row b's randomness at iteration t comes from `fold_in(keys_B[b], t)` alone, so a sample does not
depend on which batch, shard or process it is decoded in: experiments can give every
(problem, sample) pair its own key and split the work any way they like.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def row_keys(rng: jax.Array, batch: int) -> jax.Array:
  """[B] keys: `rng` itself when it is already one key per row, else `split(rng, B)`."""
  if rng.ndim == 0:
    return jax.random.split(rng, batch)
  if rng.shape != (batch,):
    raise ValueError(f"rng must be one key or one key per row ({batch}), got shape {rng.shape}")
  return rng


def step_keys(keys_B: jax.Array, steps_B: jax.Array, num: int) -> list[jax.Array]:
  """`num` independent [B] key arrays for each row's iteration count `steps_B`."""
  keys_BN = jax.vmap(lambda k, t: jax.random.split(jax.random.fold_in(k, t), num))(keys_B,
                                                                                   steps_B)
  return [keys_BN[:, i] for i in range(num)]


def uniform(keys_B: jax.Array, shape: tuple[int, ...], minval: float = 0.0) -> jax.Array:
  """U(minval, 1) draws of `shape` per row: [B, *shape]."""
  return jax.vmap(lambda k: jax.random.uniform(k, shape, jnp.float32, minval))(keys_B)


def gumbel(keys_B: jax.Array, shape: tuple[int, ...], dtype: jnp.dtype = jnp.float32
           ) -> jax.Array:
  """Standard Gumbel draws of `shape` per row: [B, *shape]."""
  return jax.vmap(lambda k: jax.random.gumbel(k, shape, dtype))(keys_B)


def window_draws(draw, keys_B: jax.Array, start: jax.Array | int, width: int,
                 gen_length: int | None, *event_shape: int) -> jax.Array:
  """`draw(keys_B, (gen_length, *event_shape))` sliced to positions [start, start + width):
  scoring only a window of the generated region leaves every position's draws unchanged."""
  if gen_length is None or gen_length == width:
    return draw(keys_B, (width, *event_shape))
  return jax.lax.dynamic_slice_in_dim(draw(keys_B, (gen_length, *event_shape)), start, width,
                                      axis=1)
