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

Expert weights are stacked [E, ...] (so a mesh axis can split the experts). The layer sorts the
T*k (token, expert) rows by expert and runs the experts as a grouped matmul over those groups:
T*k rows instead of the T*E of computing every expert on every token. Two exact kernels
(`MoE.experts(path=...)`; "auto" picks by the platform XLA compiles for):

* "ragged_dot" (GPU, TPU): one `jax.lax.ragged_dot` per projection. TPU lowers it to XLA's
  grouped-matmul instruction, GPU to XLA's ragged dot (or a Pallas kernel behind a jax flag).
  On CPU, jax 0.10.2 has no ragged-dot lowering: it expands the [X, D] rows into a masked
  [E, X, D] copy (zero outside each group) and contracts over experts, i.e. E*X*D*F
  multiply-adds, k times the dense oracle's T*E*D*F; measured 0.2x the oracle's speed.
* "tiled" (CPU): each expert's rows are padded to a multiple of a tile of C rows (C the power
  of two at or above the mean group size X/E, at most 64); a `fori_loop` over the experts that
  have rows slices the expert's weights once, and an inner `fori_loop` over its tiles runs the
  whole SwiGLU per tile ([C, D] x [D, F] matmuls). The tile count is bounded statically by
  floor((X + min(E, X) * (C - 1)) / C) (buffers are that size), the loops run only over experts
  and tiles in use, and padding rows are zero and never read back. Work: about X + E*C/2 rows
  of matmuls, and one read (and, XLA:CPU's dynamic slice being a copy, one copy) of each busy
  expert's weights, which is what bounds it at large widths. Slicing the weights per tile
  instead of per expert was 1.5-2.6x slower (measured at widths 256 and 2048); a batched matmul
  over all tiles with gathered weights, 3-4x slower than per tile at width 256 and a copy of
  the weights per tile in memory.
  Under expert sharding XLA gathers the expert weights for the loop's dynamic index, so on a
  CPU mesh the experts' memory is not split (correct, tested; CPU meshes are for tests).

`dense_reference` does the T*E computation with a 0/1 routing mask; it is the test oracle, not
a code path; both kernels are tested against it on CPU.
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


def tile_rows(rows: int, experts: int) -> int:
  """Rows per tile of the CPU grouped matmul: the power of two at or above the mean group size,
  within [1, 64]. Measured at 256 experts, top 8, 256 tokens (mean group 8), best of 3 on a
  loaded CPU: width 256, tiles 2/4/8/16 took 44/31/20/22 ms; width 2048, tiles 4/8/16 took
  2.1/2.4/2.5 s; at 32 tokens (mean group 1), tiles 1-4 were equal."""
  mean = -(-rows // experts)
  return min(64, 1 << (mean - 1).bit_length())


def tile_layout(sorted_expert_X: jax.Array, experts: int, tile: int
                ) -> tuple[jax.Array, jax.Array, jax.Array, int]:
  """Where rows sorted by expert go when each expert's group is padded to a multiple of `tile`.

  Returns the padded slot of every sorted row [X], each expert's first tile and tile count [E],
  and N, a static bound on the tiles in use: a nonempty group of s rows takes
  ceil(s / tile) <= (s + tile - 1) / tile tiles and at most min(E, X) groups are nonempty, so
  N = floor((X + min(E, X) * (tile - 1)) / tile).
  """
  X = sorted_expert_X.shape[0]
  n_tiles = (X + min(experts, X) * (tile - 1)) // tile
  sizes_E = jnp.bincount(sorted_expert_X, length=experts)
  tiles_E = -(-sizes_E // tile)
  first_tile_E = jnp.cumsum(tiles_E) - tiles_E
  start_E = jnp.cumsum(sizes_E) - sizes_E
  slot_X = first_tile_E[sorted_expert_X] * tile + jnp.arange(X) - start_E[sorted_expert_X]
  return slot_X, first_tile_E, tiles_E, n_tiles


EXPERT_PATHS = ("auto", "tiled", "ragged_dot", "dense")


def _check_path(path: str) -> None:
  if path not in EXPERT_PATHS:
    raise ValueError(f"experts path {path!r} is unknown; use {', '.join(map(repr, EXPERT_PATHS))}")


def _unsort_and_mix(out_XD: jax.Array, order_X: jax.Array, weights_TK: jax.Array, dtype
                    ) -> jax.Array:
  """Rows sorted by expert back to [T, k] order, mixed by the routing weights (float32)."""
  T, K = weights_TK.shape
  unsorted_XD = jnp.zeros_like(out_XD).at[order_X].set(out_XD)
  mixed_TD = jnp.einsum("tkd,tk->td", unsorted_XD.reshape(T, K, -1).astype(jnp.float32),
                        weights_TK)
  return mixed_TD.astype(dtype)


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
    """One `jax.lax.ragged_dot` per projection over the rows sorted by expert."""
    c = self.config
    dtype = c.compute_dtype
    flat_X = chosen_TK.reshape(-1)
    order_X = jnp.argsort(flat_X, stable=True)
    x_XD = x_TD[order_X // chosen_TK.shape[1]].astype(dtype)
    sizes_E = jnp.bincount(flat_X, length=c.num_experts).astype(jnp.int32)
    gate_XF = jax.lax.ragged_dot(x_XD, self.gate_kernel[...].astype(dtype), sizes_E)
    up_XF = jax.lax.ragged_dot(x_XD, self.up_kernel[...].astype(dtype), sizes_E)
    out_XD = jax.lax.ragged_dot(jax.nn.silu(gate_XF) * up_XF,
                                self.down_kernel[...].astype(dtype), sizes_E)
    return _unsort_and_mix(out_XD, order_X, weights_TK, dtype)

  def _experts_tiled(self, x_TD: jax.Array, chosen_TK: jax.Array, weights_TK: jax.Array,
                     tile: int | None = None) -> jax.Array:
    """The grouped matmul as loops: over the experts that have rows, and inside over the tiles
    of `tile` rows their (zero-padded) group fills, each tile running the expert's SwiGLU."""
    c = self.config
    dtype = c.compute_dtype
    X, D, E = chosen_TK.size, x_TD.shape[1], c.num_experts
    tile = tile or tile_rows(X, E)
    flat_X = chosen_TK.reshape(-1)
    order_X = jnp.argsort(flat_X, stable=True)
    slot_X, first_tile_E, tiles_E, n_tiles = tile_layout(flat_X[order_X], E, tile)
    x_NCD = jnp.zeros((n_tiles * tile, D), dtype).at[slot_X].set(
        x_TD[order_X // chosen_TK.shape[1]].astype(dtype)).reshape(n_tiles, tile, D)
    busy_B = jnp.nonzero(tiles_E, size=min(E, X), fill_value=0)[0]
    gate_EDF, up_EDF, down_EFD = self.gate_kernel[...], self.up_kernel[...], self.down_kernel[...]

    def run_expert(b, out_NCD):
      # The expert's weights are sliced once here, not once per tile: on CPU the slice is a
      # copy, and reading weights is what this loop spends most of its time on.
      e = busy_B[b]
      gate_DF, up_DF = gate_EDF[e].astype(dtype), up_EDF[e].astype(dtype)
      down_FD = down_EFD[e].astype(dtype)

      def run_tile(n, out_NCD):
        x_CD = x_NCD[n]
        return out_NCD.at[n].set((jax.nn.silu(x_CD @ gate_DF) * (x_CD @ up_DF)) @ down_FD)
      return jax.lax.fori_loop(first_tile_E[e], first_tile_E[e] + tiles_E[e], run_tile, out_NCD)

    out_NCD = jax.lax.fori_loop(0, jnp.sum(tiles_E > 0), run_expert, jnp.zeros_like(x_NCD))
    return _unsort_and_mix(out_NCD.reshape(n_tiles * tile, D)[slot_X], order_X, weights_TK,
                           dtype)

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

  def experts(self, x_TD: jax.Array, chosen_TK: jax.Array, weights_TK: jax.Array,
              path: str = "auto") -> jax.Array:
    """The routed experts' weighted sum [T, D] for a given routing. `path`: "auto" (the tiled
    loop on CPU, `ragged_dot` on other platforms, chosen when XLA lowers for the platform),
    "tiled", "ragged_dot", or "dense" (the oracle)."""
    _check_path(path)
    if path == "auto":
      return jax.lax.platform_dependent(x_TD, chosen_TK, weights_TK, cpu=self._experts_tiled,
                                        default=self._experts_ragged)
    paths = {"tiled": self._experts_tiled, "ragged_dot": self._experts_ragged,
             "dense": self.dense_reference}
    return paths[path](x_TD, chosen_TK, weights_TK)

  def __call__(self, x_BLD: jax.Array, path: str = "auto") -> jax.Array:
    _check_path(path)
    B, L, D = x_BLD.shape
    x_TD = x_BLD.reshape(B * L, D)
    chosen_TK, weights_TK = self.route(x_TD)
    y_TD = self.experts(x_TD, chosen_TK, weights_TK, path)
    if self.config.num_shared_experts:
      y_TD = y_TD + self.shared(x_TD)
    return y_TD.reshape(B, L, D)
