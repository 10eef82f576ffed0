"""How many tokens each step of a block commits.

`steps` forward passes are split evenly over the blocks; a schedule decides, for step j of
`steps_per_block`, how many of the block's masked positions to commit.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class LinearSchedule:
  """LLaDA: a block of n masks over s steps commits n // s per step, one more in the first n % s."""

  def counts(self, step_in_block: jax.Array, steps_per_block: int, block_length: int,
             masked_in_block_B: jax.Array) -> jax.Array:
    # LLaDA counts from the block's size: every block starts fully masked.
    base, extra = divmod(block_length, steps_per_block)
    count = base + (step_in_block < extra).astype(jnp.int32)
    return jnp.full(masked_in_block_B.shape, count, jnp.int32)


@dataclasses.dataclass(frozen=True)
class DreamSchedule:
  """Dream: timesteps t_j = linspace(1, eps, s + 1); step j commits floor(m * (1 - t_{j+1} / t_j))
  of the m positions still masked, and everything left at the last step."""

  eps: float = 1e-3

  def __post_init__(self):
    if not 0 < self.eps < 1:
      raise ValueError(f"DreamSchedule.eps must be in (0, 1), got {self.eps}")

  def transfer_probability(self, step_in_block: jax.Array, steps_per_block: int) -> jax.Array:
    timesteps = jnp.linspace(1.0, self.eps, steps_per_block + 1)
    t, s = timesteps[step_in_block], timesteps[step_in_block + 1]
    return jnp.where(step_in_block == steps_per_block - 1, 1.0, 1.0 - s / t)

  def counts(self, step_in_block: jax.Array, steps_per_block: int, block_length: int,
             masked_in_block_B: jax.Array) -> jax.Array:
    del block_length
    p = self.transfer_probability(step_in_block, steps_per_block)
    counts = jnp.floor(masked_in_block_B * p).astype(jnp.int32)
    return jnp.where(step_in_block == steps_per_block - 1, masked_in_block_B, counts)


Schedule = LinearSchedule | DreamSchedule
