"""IMH whose candidates are scored by rollouts: the suffix mass is estimated by completing each
candidate canvas, not by the mean-field product (DESIGN.md §15).

One step is IMH's (`imh.py`): pick the position(s) i, draw K candidates v_k from
q(v) ∝ p(x_i = v | x_O)^alpha, evaluate the K candidate canvases in one batched pass, run the
independent MH chain over the candidates with weights w(v_k), commit the chain's final state.
Only the weight differs. The target's marginal at i is ∝ q(v) S(v) with the suffix mass
  S(v) = sum over completions y of the still-masked positions of p(y | x_O, x_i = v)^alpha.
Each candidate gets R independent rollouts. A rollout completes the candidate canvas: its masked
positions in a uniformly random order (earlier blocks first), `rollout_tokens_per_step` of them
per forward pass, each value drawn from the locally tempered proposal
r_j(u) = p_j(u)^alpha / Z_j, Z_j = sum_u p_j(u)^alpha (p_j: the model's marginal at j given the
canvas so far). The rollout's estimate is the importance weight of its completion y,
  S_hat = p(y)^alpha / r(y) = product over the rollout's positions of Z_j,
and w(v) = (1/R) sum_r S_hat_r.
What it estimates, exactly: with one token per rollout step and a model whose conditionals are
those of one joint (the oracle; for a real model, p(y) is the product of its conditionals along
the rollout's order), E[S_hat] = sum_y r(y) p(y)^alpha / r(y) = S(v): the estimate is unbiased.
The chain keeps each candidate's estimate once drawn, so it is a pseudo-marginal independent MH
chain (Andrieu & Roberts 2009) on (v, w): its stationary law has v-marginal ∝ q(v) E[w(v)]
= the target's, for every R >= 1. With K - 1 moves the committed value's law is the chain's law
after K - 1 steps from q: it reaches the target as K -> infinity, and faster with larger R (less
variance in w). Its exact law is `oracle_exact.rollout_imh_distribution`.
With c = `rollout_tokens_per_step` > 1 the rollout draws c positions at once from the product of
their marginals and S_hat multiplies their Z_j: it is then unbiased for the suffix mass of that
chunked, mean-field-within-a-chunk joint, not of p; with c >= the number of masked positions it
is the mean-field weight itself (IMH, no rollout pass). `greedy=True` completes with the most
probable value instead and scores S_hat = p(y)^alpha of that single completion: a lower bound on
S(v) (one term of its sum), biased, and the chain does not target p^alpha then.
Measured on exact laws (20 random joints, V = 3, L = 4, alpha = 2, one token per step; README,
"IMH and its target"): mean TV to p^alpha at K = 1, 2, 4, 8, 16 is 0.092, 0.025, 0.0036,
0.0002, 3e-6 with R = 1 (0.092, 0.023, 0.0032, 0.00017, 2.5e-6 with R = 2), where the
mean-field weight stops at 0.045.
Cost (NFE): a rollout from a canvas with m masked positions after the candidate takes
ceil(m / c) - 1 passes (the first uses the candidate's own pass), so a step costs
K (1 + R (ceil(m / c) - 1)) passes; with one token per step and L positions a sample costs
1 + K L + K R (L - 1)(L - 2) / 2. K = 1 runs no rollouts (there is no chain to weigh).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from dllm_jax.sampling import row_random
from dllm_jax.sampling.imh import IMH
from dllm_jax.sampling.remasking import select_top_k


@dataclasses.dataclass(frozen=True)
class RolloutIMH(IMH):
  """IMH with R rollouts per candidate estimating its suffix mass (see the module docstring)."""

  num_rollouts: int = 1
  rollout_tokens_per_step: int = 1
  greedy: bool = False

  def __post_init__(self):
    super().__post_init__()
    if self.num_rollouts < 1:
      raise ValueError(f"RolloutIMH.num_rollouts (R) must be >= 1, got {self.num_rollouts}")
    if self.rollout_tokens_per_step < 1:
      raise ValueError("RolloutIMH.rollout_tokens_per_step must be >= 1, got "
                       f"{self.rollout_tokens_per_step}")


def rollout_log_mass(keys_B: jax.Array, forward: Callable[[jax.Array], jax.Array],
                     cand_gen_KBG: jax.Array, cand_logits_KBGV: jax.Array,
                     remaining_BG: jax.Array, block_G: jax.Array, rule: RolloutIMH
                     ) -> tuple[jax.Array, jax.Array]:
  """log w [K, B] (the mean over R rollouts of S_hat) and the rollout passes per row [B].

  `forward(gen_XG) -> logits [X, G, V]` evaluates X = K * R * B generation regions (row order
  k, r, b); `remaining_BG` marks the positions still masked in every candidate canvas."""
  K, B, G = cand_gen_KBG.shape
  R, c, alpha = rule.num_rollouts, rule.rollout_tokens_per_step, rule.alpha
  tile = lambda x_KB: jnp.broadcast_to(x_KB[:, None], (K, R, *x_KB.shape[1:])).reshape(
      K * R * B, *x_KB.shape[2:])
  # Row b's draws, rearranged to rows (k, r, b).
  per_row = lambda x_BKR: jnp.moveaxis(x_BKR, 0, 2).reshape(K * R * B, *x_BKR.shape[3:])
  order_key, token_key = jax.vmap(lambda k: jax.random.split(k, 2), out_axes=1)(keys_B)
  # Earlier blocks first, a uniformly random order inside a block.
  priority_XG = block_G[None] + per_row(row_random.uniform(order_key, (K, R, G)))
  remaining_XG = jnp.broadcast_to(remaining_BG[None], (K * R, B, G)).reshape(K * R * B, G)
  count_X = jnp.full((K * R * B,), c, jnp.int32)

  def commit_chunk(gen_XG, logits_XGV, remaining_XG, log_s_X, j):
    chunk_XG = select_top_k(-priority_XG, remaining_XG, count_X)
    log_p_XGV = jax.nn.log_softmax(logits_XGV, axis=-1)
    if rule.greedy:
      tokens_XG = jnp.argmax(log_p_XGV, axis=-1).astype(jnp.int32)
      gain_XG = alpha * jnp.take_along_axis(log_p_XGV, tokens_XG[..., None], axis=-1)[..., 0]
    else:
      keys = jax.vmap(jax.random.fold_in, (0, None))(token_key, j)
      gumbel_XGV = per_row(row_random.gumbel(keys, (K, R, *logits_XGV.shape[1:])))
      tokens_XG = jnp.argmax(alpha * log_p_XGV + gumbel_XGV, axis=-1).astype(jnp.int32)
      gain_XG = jax.nn.logsumexp(alpha * log_p_XGV, axis=-1)  # log Z_j
    log_s_X = log_s_X + jnp.sum(jnp.where(chunk_XG, gain_XG, 0.0), axis=-1)
    return jnp.where(chunk_XG, tokens_XG, gen_XG), remaining_XG & ~chunk_XG, log_s_X

  gen_XG, remaining_XG, log_s_X = commit_chunk(tile(cand_gen_KBG), tile(cand_logits_KBGV),
                                               remaining_XG, jnp.zeros((K * R * B,)), 0)

  def body(carry):
    gen_XG, remaining_XG, log_s_X, passes_X, j = carry
    passes_X = passes_X + jnp.any(remaining_XG, axis=-1)
    gen_XG, remaining_XG, log_s_X = commit_chunk(gen_XG, forward(gen_XG), remaining_XG, log_s_X,
                                                 j)
    return gen_XG, remaining_XG, log_s_X, passes_X, j + 1

  carry = (gen_XG, remaining_XG, log_s_X, jnp.zeros((K * R * B,), jnp.int32), 1)
  _, _, log_s_X, passes_X, _ = jax.lax.while_loop(lambda c_: jnp.any(c_[1]), body, carry)
  log_w_KB = jax.nn.logsumexp(log_s_X.reshape(K, R, B), axis=1) - jnp.log(R)
  return log_w_KB, jnp.sum(passes_X.reshape(K * R, B), axis=0)
