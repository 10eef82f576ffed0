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
* "tiled" (CPU): XLA:CPU runs a batched matmul over experts on one core, at about a third of
  a plain matmul's FLOP rate on two (60-86 against 206 GFLOP/s, measured at [256, C, 256] x
  [256, 256, 64]), and each loop iteration has a fixed cost that small matmuls do not hide, so
  the kernel splits the rows. Each expert's first `capacity` rows go into one [E, capacity]
  batched SwiGLU (empty slots read a zero row); the rows past them run in a `fori_loop` over
  the experts that have any (in increasing order), in tiles of C rows sliced from the sorted
  rows, the expert's weights sliced once per expert (on CPU the slice is a copy). A tile that
  runs past its group writes into later experts' rows, which their own expert writes again, so
  no masking is needed. `capacity_rows` puts twice the tile (C: `tile_rows`) in the batched
  part while the mean group is 1 to 16 rows, so the loop is rarely entered on balanced
  routings; outside that range all rows go to the loop, which was faster there (measured).
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
  sum of their two best entries; ties to the lower group) and the top-k entries inside them.

  Written with max/argmax and a rank count instead of `lax.top_k` over groups: the same choices,
  about 1.6x faster on CPU (measured at 512 tokens, 256 experts)."""
  T, E = biased_TE.shape
  grouped_TGe = biased_TE.reshape(T, groups, E // groups)
  best_TG = jnp.argmax(grouped_TGe, axis=-1)
  second_TG = jnp.max(jnp.where(jnp.arange(E // groups) == best_TG[..., None], -jnp.inf,
                                grouped_TGe), axis=-1)
  score_TG = jnp.max(grouped_TGe, axis=-1) + second_TG
  g = jnp.arange(groups)
  # Groups ranked ahead of group g: higher score, or equal score and lower index.
  ahead_TGG = (score_TG[:, None, :] > score_TG[:, :, None]) | (
      (score_TG[:, None, :] == score_TG[:, :, None]) & (g[None, :] < g[:, None]))
  keep_TE = jnp.repeat(jnp.sum(ahead_TGG, axis=-1) < groups_per_token, E // groups, axis=1)
  return jax.lax.top_k(jnp.where(keep_TE, biased_TE, -jnp.inf), top_k)[1]


def tile_rows(rows: int, experts: int) -> int:
  """Rows per tile of the CPU loop: the power of two at or above the mean group size, within
  [1, 64]. Measured at 256 experts, top 8, 256 tokens (mean group 8), best of 3 on a loaded
  CPU: width 256, tiles 2/4/8/16 took 44/31/20/22 ms; width 2048, tiles 4/8/16 took
  2.1/2.4/2.5 s; at 32 tokens (mean group 1), tiles 1-4 were equal."""
  mean = -(-rows // experts)
  return min(64, 1 << (mean - 1).bit_length())


def capacity_rows(rows: int, experts: int) -> int:
  """Rows per expert of the CPU kernel's batched matmul: twice the tile when there are at least
  as many rows as experts and the mean group is at most 16 rows, else 0 (all rows go through
  the loop, which reads only the busy experts' weights). Measured: medians of routing and
  experts in ms (11 calls; 31 at 32 and 64 tokens), 256 experts, top 8, width 256, expert width
  64, at capacity 0 / the tile / twice the tile: 4 tokens 0.7 / - / 2.4; 16 tokens 2.9 / - / 3.4;
  32 tokens 5.5 / - / 4.8; 64 tokens 7.1 / 6.3 / 4.7; 128 tokens 12.9 / 12.0 / 9.6; 512 tokens
  26.8 / 23.9 / 20.9; 1024 tokens 43.5 / 37.7 / 56.4; 2048 tokens 96 / 99 / 125; at width 2048,
  expert width 512, 256 tokens 630 / 915 / 629 (3 calls)."""
  mean = -(-rows // experts)
  return 2 * tile_rows(rows, experts) if experts <= rows and mean <= 16 else 0


EXPERT_PATHS = ("auto", "tiled", "ragged_dot", "dense")


def _check_path(path: str) -> None:
  if path not in EXPERT_PATHS:
    raise ValueError(f"experts path {path!r} is unknown; use {', '.join(map(repr, EXPERT_PATHS))}")


def _sort_by_expert(chosen_TK: jax.Array, experts: int
                    ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """The T*k (token, expert) rows sorted by expert (stable): the sorted order [X], each expert's
  group size and first sorted position [E], and each row's sorted position [X] (the inverse)."""
  flat_X = chosen_TK.reshape(-1)
  X = flat_X.shape[0]
  if experts * X < 2**31:
    # Sorting the unique keys expert * X + row is the stable argsort, 3-5x faster on XLA:CPU
    # (one int32 array instead of (key, index) pairs; measured at 256-16384 rows).
    order_X = jnp.sort(flat_X * X + jnp.arange(X, dtype=flat_X.dtype)) % X
  else:
    order_X = jnp.argsort(flat_X, stable=True)
  sizes_E = jnp.bincount(flat_X, length=experts)
  position_X = jnp.zeros(X, jnp.int32).at[order_X].set(jnp.arange(X, dtype=jnp.int32))
  return order_X, sizes_E, jnp.cumsum(sizes_E) - sizes_E, position_X


def _mix(rows_XD: jax.Array, weights_TK: jax.Array, dtype) -> jax.Array:
  """Rows in (token, k) order mixed by the routing weights (float32)."""
  T, K = weights_TK.shape
  return jnp.einsum("tkd,tk->td", rows_XD.reshape(T, K, -1).astype(jnp.float32),
                    weights_TK).astype(dtype)


def _swiglu(x_CD: jax.Array, gate_DF: jax.Array, up_DF: jax.Array, down_FD: jax.Array
            ) -> jax.Array:
  return (jax.nn.silu(x_CD @ gate_DF) * (x_CD @ up_DF)) @ down_FD


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
    order_X, sizes_E, _, position_X = _sort_by_expert(chosen_TK, c.num_experts)
    x_XD = x_TD[order_X // chosen_TK.shape[1]].astype(dtype)
    sizes_E = sizes_E.astype(jnp.int32)
    gate_XF = jax.lax.ragged_dot(x_XD, self.gate_kernel[...].astype(dtype), sizes_E)
    up_XF = jax.lax.ragged_dot(x_XD, self.up_kernel[...].astype(dtype), sizes_E)
    out_XD = jax.lax.ragged_dot(jax.nn.silu(gate_XF) * up_XF,
                                self.down_kernel[...].astype(dtype), sizes_E)
    return _mix(out_XD[position_X], weights_TK, dtype)

  def _experts_tiled(self, x_TD: jax.Array, chosen_TK: jax.Array, weights_TK: jax.Array,
                     tile: int | None = None, capacity: int | None = None) -> jax.Array:
    """The grouped matmul on CPU: each expert's first `capacity` rows in one batched matmul
    over all experts, the rows past them in a loop over the experts that have any, in tiles of
    `tile` rows."""
    c = self.config
    dtype = c.compute_dtype
    T, K = chosen_TK.shape
    X, D, E = T * K, x_TD.shape[1], c.num_experts
    tile = tile or tile_rows(X, E)
    capacity = capacity_rows(X, E) if capacity is None else capacity
    order_X, sizes_E, start_E, position_X = _sort_by_expert(chosen_TK, E)
    # Row T of x_SD is zeros: empty slots read it.
    x_SD = jnp.concatenate([x_TD.astype(dtype), jnp.zeros((1, D), dtype)])
    token_X = order_X // K
    gate_EDF, up_EDF, down_EFD = self.gate_kernel[...], self.up_kernel[...], self.down_kernel[...]
    rest_E = jnp.maximum(sizes_E - capacity, 0)
    busy_B = jnp.nonzero(rest_E, size=min(E, X // (capacity + 1)), fill_value=0)[0]
    token_pad_X = jnp.concatenate([token_X, jnp.full((tile,), T, token_X.dtype)])

    def run_expert(b, out_XD):
      # The weights are sliced once per expert: on CPU the slice is a copy.
      e = busy_B[b]
      weights = gate_EDF[e].astype(dtype), up_EDF[e].astype(dtype), down_EFD[e].astype(dtype)

      def run_tile(j, out_XD):
        # A tile may run past the group into later experts' sorted rows; experts go in
        # increasing order, so those rows are written again by their own expert.
        start = start_E[e] + capacity + j * tile
        x_CD = x_SD[jax.lax.dynamic_slice(token_pad_X, (start,), (tile,))]
        return jax.lax.dynamic_update_slice(out_XD, _swiglu(x_CD, *weights), (start, 0))
      return jax.lax.fori_loop(0, -(-rest_E[e] // tile), run_tile, out_XD)

    looped_XD = jax.lax.fori_loop(0, jnp.sum(rest_E > 0), run_expert,
                                  jnp.zeros((X + tile, D), dtype))
    rows_XD = looped_XD[position_X]
    if capacity:
      slot_C = jnp.arange(capacity)
      token_EC = jnp.where(slot_C < sizes_E[:, None],
                           token_X[jnp.minimum(start_E[:, None] + slot_C, X - 1)], T)
      x_ECD = x_SD[token_EC]
      gate_ECF, up_ECF = (jnp.einsum("ecd,edf->ecf", x_ECD, w.astype(dtype))
                          for w in (gate_EDF, up_EDF))
      batched_ECD = jnp.einsum("ecf,efd->ecd", jax.nn.silu(gate_ECF) * up_ECF,
                               down_EFD.astype(dtype))
      flat_X = chosen_TK.reshape(-1)
      rank_X = position_X - start_E[flat_X]
      batched_XD = batched_ECD.reshape(E * capacity, D)[
          flat_X * capacity + jnp.minimum(rank_X, capacity - 1)]
      rows_XD = jnp.where((rank_X < capacity)[:, None], batched_XD, rows_XD)
    return _mix(rows_XD, weights_TK, dtype)

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
