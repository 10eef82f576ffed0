"""The mixture-of-experts feed-forward layer of LLaDA2.x (the Ling 2.0 / BailingMoeV2 layout).

Routing, as in inclusionAI's `modeling_llada2_moe.py` (`LLaDA2MoeGate`):
  scores = sigmoid(x @ router) in float32 (x and the router weights cast to float32 first);
  selection uses scores + expert_bias (a learned, load-balancing bias that never weighs outputs):
    the E experts form `expert_groups` groups; a group's score is the sum of its two best biased
    scores; the `groups_per_token` best groups stay and the top-k biased scores among their experts
    are chosen;
  weights = the chosen *unbiased* scores, normalised to sum 1 (when k > 1), times `routed_scaling`.
  y = sum_k weight_k * expert_k(x) + shared(x), each expert a SwiGLU of width `expert_hidden_size`,
  the shared expert(s) one SwiGLU of width `expert_hidden_size * num_shared_experts`.

Expert weights are stacked [E, ...] (so a mesh axis can split the experts). The layer groups the
T*k (token, expert) pairs by expert and runs each projection as one grouped matmul,
`jax.lax.ragged_dot`, over those groups: T*k rows instead of the T*E of computing every expert on
every token. `dense_reference` does exactly that T*E computation with a 0/1 routing mask; it is
the test oracle, not a code path.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from dllm_jax.models.config import ModelConfig


def _normal(rngs: nnx.Rngs, shape: tuple[int, ...], dtype) -> nnx.Param:
  return nnx.Param(nnx.initializers.normal(0.02)(rngs.params(), shape, dtype))


def group_limited_top_k(biased_TE: jax.Array, top_k: int, groups: int, groups_per_token: int
                        ) -> jax.Array:
  """Indices [T, top_k] of the chosen experts: the best `groups_per_token` groups (scored by the
  sum of their two best entries) and the top-k entries inside them."""
  T, E = biased_TE.shape
  grouped_TGe = biased_TE.reshape(T, groups, E // groups)
  group_score_TG = jnp.sum(jax.lax.top_k(grouped_TGe, 2)[0], axis=-1)
  _, best_groups_TX = jax.lax.top_k(group_score_TG, groups_per_token)
  keep_TG = jnp.zeros((T, groups), bool).at[jnp.arange(T)[:, None], best_groups_TX].set(True)
  keep_TE = jnp.repeat(keep_TG, E // groups, axis=1)
  return jax.lax.top_k(jnp.where(keep_TE, biased_TE, -jnp.inf), top_k)[1]


class MoE(nnx.Module):
  """Routed SwiGLU experts plus shared expert(s); see the module docstring."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    c = config
    self.config = c
    E, D, F = c.num_experts, c.hidden_size, c.expert_hidden_size
    self.router = _normal(rngs, (D, E), c.weight_dtype)
    self.expert_bias = nnx.Param(jnp.zeros((E,), c.weight_dtype))
    self.gate_kernel = _normal(rngs, (E, D, F), c.weight_dtype)
    self.up_kernel = _normal(rngs, (E, D, F), c.weight_dtype)
    self.down_kernel = _normal(rngs, (E, F, D), c.weight_dtype)
    if c.num_shared_experts:
      from dllm_jax.models.transformer import MLP  # pylint: disable=import-outside-toplevel
      self.shared = MLP(c, rngs=rngs, hidden_size=F * c.num_shared_experts)

  def route(self, x_TD: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Chosen experts [T, k] (int32) and their float32 weights [T, k]."""
    c = self.config
    logits_TE = jnp.dot(x_TD.astype(jnp.float32), self.router[...].astype(jnp.float32),
                        precision=jax.lax.Precision.HIGHEST)
    scores_TE = jax.nn.sigmoid(logits_TE)
    chosen_TK = group_limited_top_k(scores_TE + self.expert_bias[...].astype(jnp.float32),
                                    c.experts_per_token, c.expert_groups, c.groups_per_token)
    weights_TK = jnp.take_along_axis(scores_TE, chosen_TK, axis=-1)
    if c.experts_per_token > 1:
      weights_TK = weights_TK / (jnp.sum(weights_TK, axis=-1, keepdims=True) + 1e-20)
    return chosen_TK.astype(jnp.int32), weights_TK * c.routed_scaling

  def _experts_ragged(self, x_TD: jax.Array, chosen_TK: jax.Array, weights_TK: jax.Array
                      ) -> jax.Array:
    c = self.config
    T, K = chosen_TK.shape
    dtype = c.compute_dtype
    flat_X = chosen_TK.reshape(-1)
    order_X = jnp.argsort(flat_X, stable=True)
    x_XD = x_TD[order_X // K].astype(dtype)
    sizes_E = jnp.bincount(flat_X, length=c.num_experts).astype(jnp.int32)
    gate_XF = jax.lax.ragged_dot(x_XD, self.gate_kernel[...].astype(dtype), sizes_E)
    up_XF = jax.lax.ragged_dot(x_XD, self.up_kernel[...].astype(dtype), sizes_E)
    out_XD = jax.lax.ragged_dot(jax.nn.silu(gate_XF) * up_XF,
                                self.down_kernel[...].astype(dtype), sizes_E)
    unsorted_XD = jnp.zeros_like(out_XD).at[order_X].set(out_XD)
    mixed_TD = jnp.einsum("tkd,tk->td", unsorted_XD.reshape(T, K, -1).astype(jnp.float32),
                          weights_TK)
    return mixed_TD.astype(dtype)

  def dense_reference(self, x_TD: jax.Array, chosen_TK: jax.Array, weights_TK: jax.Array
                      ) -> jax.Array:
    """Every expert on every token, weighted by the routing (0 for unchosen experts)."""
    c = self.config
    dtype = c.compute_dtype
    x_TD = x_TD.astype(dtype)
    gate_TEF = jnp.einsum("td,edf->tef", x_TD, self.gate_kernel[...].astype(dtype))
    up_TEF = jnp.einsum("td,edf->tef", x_TD, self.up_kernel[...].astype(dtype))
    out_TED = jnp.einsum("tef,efd->ted", jax.nn.silu(gate_TEF) * up_TEF,
                         self.down_kernel[...].astype(dtype))
    weight_TE = jnp.zeros((x_TD.shape[0], c.num_experts), jnp.float32).at[
        jnp.arange(x_TD.shape[0])[:, None], chosen_TK].add(weights_TK)
    return jnp.einsum("ted,te->td", out_TED.astype(jnp.float32), weight_TE).astype(dtype)

  def __call__(self, x_BLD: jax.Array, dense: bool = False) -> jax.Array:
    B, L, D = x_BLD.shape
    x_TD = x_BLD.reshape(B * L, D)
    chosen_TK, weights_TK = self.route(x_TD)
    experts = self.dense_reference if dense else self._experts_ragged
    y_TD = experts(x_TD, chosen_TK, weights_TK)
    if self.config.num_shared_experts:
      y_TD = y_TD + self.shared(x_TD)
    return y_TD.reshape(B, L, D)
