"""Independent Metropolis-Hastings (IMH) toward the globally tempered target p(x | prompt)^alpha.

One step, given the canvas x with revealed set O and its logits from the previous forward pass:
  1. pick the position(s) i to commit with a position rule (Random or LowConfidence, the latter
     ranking positions by their most probable value);
  2. draw K candidates v_1..v_K for them independently from q(v) ∝ p(x_i = v | x_O)^alpha;
  3. evaluate the K candidate canvases in one batched forward pass and score each with the
     mean-field estimate of its suffix mass over the positions j still masked afterwards:
       log w(v) = sum_j log sum_u p(x_j = u | x_O, x_i = v)^alpha;
  4. run an independent MH chain over the candidates in order (state s = 1; candidate k replaces
     s with probability min(1, w(v_k) / w(v_s))) and commit v_s;
  5. keep v_s's logits as the next step's logits: the sequential depth equals the baselines',
     the compute per step is K forward passes.
Why it targets pi_alpha: under the mean-field approximation the alpha-tempered mass of v is
q(v) * w(v) (up to a constant), so w is the importance weight of the proposal q. K = 1 is
plain locally tempered decoding. With one position per step, exact suffix mass and K -> infinity
it samples pi_alpha; with the mean-field weight the distance to pi_alpha stops falling near K = 4
(measured: README, "IMH and its target"). With several positions per step, v is the joint value at
all of them, drawn from the product of their marginals, and w does not correct for the
dependence between them: the claim above does not hold then, even with exact suffix mass.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from dllm_jax.sampling import row_random
from dllm_jax.sampling.remasking import LowConfidence, Random


@dataclasses.dataclass(frozen=True)
class IMH:
  """The IMH rule. Candidates are drawn at temperature 1 / alpha; tokens per step follow the
  sampler's schedule (steps = gen_length commits one token per step)."""

  alpha: float = 2.0
  num_candidates: int = 4
  positions: Random | LowConfidence = Random()
  uses_schedule = True

  def __post_init__(self):
    if not self.alpha >= 1:
      raise ValueError(f"IMH.alpha must be >= 1 (the target is p^alpha), got {self.alpha}")
    if self.num_candidates < 1:
      raise ValueError(f"IMH.num_candidates (K) must be >= 1, got {self.num_candidates}")
    if not isinstance(self.positions, (Random, LowConfidence)):
      raise ValueError("IMH.positions must be Random() or LowConfidence(), got "
                       f"{type(self.positions).__name__}")
    if self.positions.alg_temp:
      raise ValueError("IMH.positions does not take alg_temp")

  @property
  def temperature(self) -> float:
    return 1.0 / self.alpha


def gather_positions(chosen_BG: jax.Array, max_chosen: int) -> tuple[jax.Array, jax.Array]:
  """Indices [B, M] of the chosen positions (padded with unchosen ones) and their validity."""
  order_BG = jnp.argsort(~chosen_BG, axis=-1, stable=True)
  index_BM = order_BG[:, :max_chosen]
  return index_BM, jnp.take_along_axis(chosen_BG, index_BM, axis=-1)


def draw_candidates(keys_B: jax.Array, logits_BMV: jax.Array, alpha: float,
                    num_candidates: int) -> jax.Array:
  """K independent draws [K, B, M] from softmax(alpha * logits) by Gumbel-max."""
  gumbel_BKMV = row_random.gumbel(keys_B, (num_candidates, *logits_BMV.shape[1:]))
  gumbel_KBMV = jnp.swapaxes(gumbel_BKMV, 0, 1)
  return jnp.argmax(alpha * logits_BMV + gumbel_KBMV, axis=-1).astype(jnp.int32)


def place_candidates(gen_BG: jax.Array, index_BM: jax.Array, valid_BM: jax.Array,
                     values_KBM: jax.Array) -> jax.Array:
  """The K candidate generation regions [K, B, G]: gen with the chosen positions filled."""
  current_BM = jnp.take_along_axis(gen_BG, index_BM, axis=-1)

  def place(values_BM):
    values_BM = jnp.where(valid_BM, values_BM, current_BM)
    return jax.vmap(lambda g, i, v: g.at[i].set(v))(gen_BG, index_BM, values_BM)

  return jax.vmap(place)(values_KBM)


def suffix_log_mass(logits_KBGV: jax.Array, remaining_BG: jax.Array, alpha: float) -> jax.Array:
  """log w [K, B]: sum over still-masked j of log sum_u p(x_j = u | candidate)^alpha."""
  log_p = jax.nn.log_softmax(logits_KBGV, axis=-1)
  log_mass_KBG = jax.nn.logsumexp(alpha * log_p, axis=-1)
  return jnp.sum(jnp.where(remaining_BG, log_mass_KBG, 0.0), axis=-1)


def run_chain(keys_B: jax.Array, log_w_KB: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The independent MH chain over candidates 0..K-1: the final state [B] and accepted moves."""
  K, B = log_w_KB.shape
  log_u_KB = jnp.log(row_random.uniform(keys_B, (K,), minval=1e-38)).T

  def body(k, carry):
    state_B, accepted_B = carry
    current_B = jnp.take_along_axis(log_w_KB, state_B[None], axis=0)[0]
    accept_B = log_u_KB[k] < log_w_KB[k] - current_B
    return jnp.where(accept_B, k, state_B), accepted_B + accept_B

  return jax.lax.fori_loop(1, K, body, (jnp.zeros((B,), jnp.int32), jnp.zeros((B,), jnp.int32)))
