"""The transformer shared by LLaDA, Dream and WeDLM, as Flax NNX modules.

Shape suffixes used in tensor names throughout the library:
  B batch        L sequence (canvas) length   S key length (= L)
  D model width  N query heads                K key/value heads       G = N // K
  H head dim     F MLP hidden width           V vocabulary
so `q_BLNH` is a [batch, length, query heads, head dim] array.

Block (pre-norm, SwiGLU):  h = x + o(attn(norm1(x)));  y = h + down(silu(gate(n)) * up(n)), n = norm2(h).
LLaDA and Dream attend bidirectionally; padding is masked on keys only, so no query row is ever
fully masked while a row has at least one real token.

WeDLM (`topological_causal`) attends causally in topological order: every observed token (not
the mask id) is placed before every masked one, each group in ascending logical order, and
attention is causal in that physical order while RoPE uses the logical positions. Attention is
permutation-equivariant, so instead of gathering the canvas into that order and scattering the
logits back, the same function is computed in logical order with the mask
"key j is visible to query i iff rank(j) <= rank(i)", rank being the physical index. A masked
slot thus sees every observed token and the masks before it; an observed token sees the observed
tokens before it. Its optional per-head q/k RMSNorm (`qk_norm`, Qwen3) precedes RoPE.

Block diffusion (`attention_block` B > 0: LLaDA2.x, SDAR) attends bidirectionally inside blocks of
B positions and causally across them: key j is visible to query i iff block(j) <= block(i), with
block(t) = position(t) // B counted from the row's first real token, so left padding neither
shifts the blocks nor is seen. A finished block's keys and values therefore never change
(`dllm_jax.sampling.block_diffusion` caches them exactly). LLaDA2.x's feed-forward layers after
its first `dense_layers` are mixtures of experts (moe.py), and its RoPE turns only the first
`rotary_dim` dims of each head.

`forward_with_cache` also returns every layer's keys and values; `window` then recomputes only a
window of W tokens against them, or the canvas's last tokens (the dual and prefix modes of the
block cache of `dllm_jax.sampling`). Both can apply the LM head to a window of positions only,
which is all a block-decoding step reads. `extend` runs T new tokens against a cache without
writing it, returning their keys and values (WeDLM's streaming decoder, whose causal prefix cache
is exact).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from dllm_jax.models.config import ModelConfig
from dllm_jax.models.moe import MoE

KV = tuple[jax.Array, jax.Array]  # one layer's keys and values, each [B, L, K, H]


class RMSNorm(nnx.Module):
  """x / rms(x) computed in float32, cast back to the input dtype, then scaled."""

  def __init__(self, width: int, eps: float, param_dtype: jnp.dtype):
    self.scale = nnx.Param(jnp.ones((width,), param_dtype))
    self.eps = eps

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return self.scale[...].astype(x.dtype) * normed.astype(x.dtype)


def rotary_embedding(x_BLNH: jax.Array, positions_BL: jax.Array, theta: float,
                     rotary_dim: int | None = None) -> jax.Array:
  """Rotates the two halves of each head (the HF-Llama "rotate_half" layout), in float32; with
  `rotary_dim`, only the head's first `rotary_dim` dims (partial RoPE), the rest pass."""
  if rotary_dim is not None and rotary_dim < x_BLNH.shape[-1]:
    turned = rotary_embedding(x_BLNH[..., :rotary_dim], positions_BL, theta)
    return jnp.concatenate([turned, x_BLNH[..., rotary_dim:]], axis=-1)
  half = x_BLNH.shape[-1] // 2
  inv_freq = 1.0 / theta ** (jnp.arange(half, dtype=jnp.float32) / half)
  angles_BLH = positions_BL.astype(jnp.float32)[..., None] * inv_freq
  cos, sin = jnp.cos(angles_BLH)[:, :, None, :], jnp.sin(angles_BLH)[:, :, None, :]
  x1, x2 = jnp.split(x_BLNH.astype(jnp.float32), 2, axis=-1)
  rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return rotated.astype(x_BLNH.dtype)


def _linear(config: ModelConfig, fan_in: int, fan_out: int, bias: bool, rngs: nnx.Rngs,
            **kwargs) -> nnx.Linear:
  return nnx.Linear(fan_in, fan_out, use_bias=bias, dtype=config.compute_dtype,
                    param_dtype=config.weight_dtype,
                    kernel_init=nnx.initializers.normal(0.02), rngs=rngs, **kwargs)


def topological_mask(tokens_BL: jax.Array, valid_BL: jax.Array, mask_token_id: int
                     ) -> jax.Array:
  """WeDLM's attention mask [B, L, L] in logical order: query i sees key j iff rank(j) <= rank(i)
  and j is not padding, where rank is the index in the order observed-then-masked (each group
  in logical order). Every query also sees itself, so no row is fully masked."""
  masked_BL = (tokens_BL == mask_token_id) & valid_BL
  observed_BL = ~masked_BL  # padding counts as observed: it sits leftmost and is hidden anyway
  num_observed_B1 = jnp.sum(observed_BL, axis=-1, keepdims=True)
  rank_BL = jnp.where(masked_BL, num_observed_B1 + jnp.cumsum(masked_BL, axis=-1) - 1,
                      jnp.cumsum(observed_BL, axis=-1) - 1)
  visible_BLL = (rank_BL[:, None, :] <= rank_BL[:, :, None]) & valid_BL[:, None, :]
  return visible_BLL | jnp.eye(tokens_BL.shape[1], dtype=bool)[None]


def block_causal_mask(positions_BL: jax.Array, valid_BL: jax.Array, block: int,
                      merged_span: tuple[jax.Array, jax.Array] | None = None) -> jax.Array:
  """The block diffusion mask [B, L, L]: query i sees key j iff block(j) <= block(i) and j is
  real, block(t) = position(t) // block. Every query also sees itself (a padded query row is
  never empty). `merged_span` (lo, hi), canvas indices on block boundaries: the positions in
  [lo, hi) attend to each other as one block (Multiple Block Editing's re-opened blocks)."""
  block_BL = positions_BL // block
  visible_BLL = (block_BL[:, None, :] <= block_BL[:, :, None]) & valid_BL[:, None, :]
  if merged_span is not None:
    index_L = jnp.arange(positions_BL.shape[1])
    inside_L = (index_L >= merged_span[0]) & (index_L < merged_span[1])
    visible_BLL = visible_BLL | (inside_L[:, None] & inside_L[None, :])[None] & valid_BL[:, None]
  return visible_BLL | jnp.eye(positions_BL.shape[1], dtype=bool)[None]


class Attention(nnx.Module):
  """Grouped-query self-attention with RoPE (and WeDLM-8B's q/k norm).

  `attend` takes a key padding mask [B, S] (bidirectional) or a full mask [B, T, S]."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    c = config
    self.config = c
    self.q_proj = _linear(c, c.hidden_size, c.num_heads * c.head_dim, c.qkv_bias, rngs)
    self.k_proj = _linear(c, c.hidden_size, c.num_kv_heads * c.head_dim, c.qkv_bias, rngs)
    self.v_proj = _linear(c, c.hidden_size, c.num_kv_heads * c.head_dim, c.qkv_bias, rngs)
    self.o_proj = _linear(c, c.num_heads * c.head_dim, c.hidden_size, c.out_bias, rngs)
    if c.qk_norm:
      self.q_norm = RMSNorm(c.head_dim, c.norm_eps, c.weight_dtype)
      self.k_norm = RMSNorm(c.head_dim, c.norm_eps, c.weight_dtype)

  def project(self, x_BTD: jax.Array, positions_BT: jax.Array
              ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Rotated queries [B, T, N, H] and keys, and values [B, T, K, H], of T tokens."""
    c = self.config
    B, T, _ = x_BTD.shape
    q_BTNH = self.q_proj(x_BTD).reshape(B, T, c.num_heads, c.head_dim)
    k_BTKH = self.k_proj(x_BTD).reshape(B, T, c.num_kv_heads, c.head_dim)
    v_BTKH = self.v_proj(x_BTD).reshape(B, T, c.num_kv_heads, c.head_dim)
    if c.qk_norm:
      q_BTNH, k_BTKH = self.q_norm(q_BTNH), self.k_norm(k_BTKH)
    return (rotary_embedding(q_BTNH, positions_BT, c.rope_theta, c.rotary_dim),
            rotary_embedding(k_BTKH, positions_BT, c.rope_theta, c.rotary_dim), v_BTKH)

  def attend(self, q_BTNH: jax.Array, k_BSKH: jax.Array, v_BSKH: jax.Array,
             mask: jax.Array) -> jax.Array:
    """T queries over S keys, through the output projection. `mask` is [B, S] (keys visible to
    every query: padding hidden) or [B, T, S] (per query).

    `jax.nn.dot_product_attention` handles the query groups of GQA and picks the fused cuDNN
    kernel on GPUs where one applies, XLA's implementation elsewhere.
    """
    c = self.config
    B, T = q_BTNH.shape[:2]
    mask_B1TS = mask[:, None, None, :] if mask.ndim == 2 else mask[:, None]
    out_BTNH = jax.nn.dot_product_attention(q_BTNH, k_BSKH, v_BSKH, mask=mask_B1TS)
    return self.o_proj(out_BTNH.reshape(B, T, c.num_heads * c.head_dim))


class MLP(nnx.Module):
  """SwiGLU: down(silu(gate(x)) * up(x)), of width `hidden_size` (default: the config's)."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs, hidden_size: int | None = None):
    c = config
    F = hidden_size or c.mlp_hidden_size
    self.gate_proj = _linear(c, c.hidden_size, F, False, rngs)
    self.up_proj = _linear(c, c.hidden_size, F, False, rngs)
    self.down_proj = _linear(c, F, c.hidden_size, False, rngs)

  def __call__(self, x_BLD: jax.Array) -> jax.Array:
    return self.down_proj(jax.nn.silu(self.gate_proj(x_BLD)) * self.up_proj(x_BLD))


class Block(nnx.Module):

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs, layer: int = 0):
    self.attn_norm = RMSNorm(config.hidden_size, config.norm_eps, config.weight_dtype)
    self.attn = Attention(config, rngs=rngs)
    self.mlp_norm = RMSNorm(config.hidden_size, config.norm_eps, config.weight_dtype)
    self.mlp = MoE(config, rngs=rngs) if config.is_moe_layer(layer) else MLP(config, rngs=rngs)

  def __call__(self, x_BLD: jax.Array, positions_BL: jax.Array, mask: jax.Array
               ) -> tuple[jax.Array, KV]:
    """The block over the whole canvas; also returns its keys and values for a cache. `mask`
    as in `Attention.attend`."""
    q_BLNH, k_BLKH, v_BLKH = self.attn.project(self.attn_norm(x_BLD), positions_BL)
    h_BLD = x_BLD + self.attn.attend(q_BLNH, k_BLKH, v_BLKH, mask)
    return h_BLD + self.mlp(self.mlp_norm(h_BLD)), (k_BLKH, v_BLKH)

  def window(self, x_BWD: jax.Array, positions_BW: jax.Array, mask: jax.Array,
             cache: KV, start: jax.Array, fresh_W: jax.Array | None = None
             ) -> tuple[jax.Array, KV]:
    """The block for the W tokens at [start, start + W): their fresh keys and values replace
    the cached ones there (only where `fresh_W`, if given), and the rest of the canvas is read
    from the cache. `mask` is [B, L] or the window's rows [B, W, L]. Also returns the cache
    with the fresh keys and values written in."""
    q_BWNH, k_BWKH, v_BWKH = self.attn.project(self.attn_norm(x_BWD), positions_BW)

    def keep(fresh_BWKH, cached_BLKH):
      fresh_BWKH = fresh_BWKH.astype(cached_BLKH.dtype)
      if fresh_W is not None:
        W = fresh_BWKH.shape[1]
        cached_BWKH = jax.lax.dynamic_slice_in_dim(cached_BLKH, start, W, 1)
        fresh_BWKH = jnp.where(fresh_W[None, :, None, None], fresh_BWKH, cached_BWKH)
      return jax.lax.dynamic_update_slice_in_dim(cached_BLKH, fresh_BWKH, start, 1)

    k_BLKH, v_BLKH = keep(k_BWKH, cache[0]), keep(v_BWKH, cache[1])
    h_BWD = x_BWD + self.attn.attend(q_BWNH, k_BLKH, v_BLKH, mask)
    return h_BWD + self.mlp(self.mlp_norm(h_BWD)), (k_BLKH, v_BLKH)

  def extend(self, x_BTD: jax.Array, positions_BT: jax.Array, visible_BTX: jax.Array,
             cache: KV) -> tuple[jax.Array, KV]:
    """The block for T new tokens attending to the S cached keys followed by their own:
    `visible_BTX` is [B, T, S + T]. Returns the new tokens' keys and values [B, T, K, H]."""
    q_BTNH, k_BTKH, v_BTKH = self.attn.project(self.attn_norm(x_BTD), positions_BT)
    k_BXKH = jnp.concatenate([cache[0], k_BTKH.astype(cache[0].dtype)], axis=1)
    v_BXKH = jnp.concatenate([cache[1], v_BTKH.astype(cache[1].dtype)], axis=1)
    h_BTD = x_BTD + self.attn.attend(q_BTNH, k_BXKH, v_BXKH, visible_BTX)
    return h_BTD + self.mlp(self.mlp_norm(h_BTD)), (k_BTKH, v_BTKH)


class Transformer(nnx.Module):
  """Token ids [B, L] and a key mask [B, L] in, float32 logits [B, L, V] out."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    self.config = config
    self.embed = nnx.Embed(config.vocab_size, config.hidden_size, dtype=config.compute_dtype,
                           param_dtype=config.weight_dtype,
                           embedding_init=nnx.initializers.normal(0.02), rngs=rngs)
    self.layers = nnx.List([Block(config, rngs=rngs, layer=i) for i in range(config.num_layers)])
    self.final_norm = RMSNorm(config.hidden_size, config.norm_eps, config.weight_dtype)
    self.lm_head = _linear(config, config.hidden_size, config.vocab_size, False, rngs,
                           preferred_element_type=jnp.float32)

  def positions(self, mask_BL: jax.Array) -> jax.Array:
    if self.config.positions_from_mask:
      # Dream: real tokens count 0, 1, ...; padding gets position 1 (it is never attended to).
      return jnp.where(mask_BL, jnp.cumsum(mask_BL, axis=-1) - 1, 1)
    return jnp.broadcast_to(jnp.arange(mask_BL.shape[1]), mask_BL.shape)

  def attention_mask(self, tokens_BL: jax.Array, mask_BL: jax.Array,
                     merged_span: tuple[jax.Array, jax.Array] | None = None) -> jax.Array:
    """The key padding mask [B, L], WeDLM's topological causal mask or the block-causal mask
    [B, L, L] (with `merged_span`'s blocks attending as one; see `block_causal_mask`)."""
    if merged_span is not None and not self.config.attention_block:
      raise ValueError("merged_span needs block-causal attention (ModelConfig.attention_block)")
    if self.config.topological_causal:
      return topological_mask(tokens_BL, mask_BL, self.config.mask_token_id)
    if self.config.attention_block:
      return block_causal_mask(self.positions(mask_BL), mask_BL, self.config.attention_block,
                               merged_span)
    return mask_BL

  def _logits_at(self, x_BTD: jax.Array, start: jax.Array | int, width: int) -> jax.Array:
    """Float32 logits [B, width, V] of positions [start, start + width) of the T hidden states.

    Shifted logits (Dream): the logit at p is the prediction made at p - 1, and position 0 keeps
    its own, so the head reads the hidden states shifted right by one.
    """
    if self.config.shift_logits:
      x_BTD = jnp.concatenate([x_BTD[:, :1], x_BTD[:, :-1]], axis=1)
    x_BWD = jax.lax.dynamic_slice_in_dim(x_BTD, start, width, 1)
    return self.lm_head(self.final_norm(x_BWD)).astype(jnp.float32)

  def __call__(self, tokens_BL: jax.Array, mask_BL: jax.Array | None = None) -> jax.Array:
    return self.forward_with_cache(tokens_BL, mask_BL)[0]

  def forward_with_cache(self, tokens_BL: jax.Array, mask_BL: jax.Array | None = None,
                         start: jax.Array | int = 0, width: int | None = None,
                         merged_span: tuple[jax.Array, jax.Array] | None = None
                         ) -> tuple[jax.Array, list[KV]]:
    """Logits [B, width, V] of positions [start, start + width) (default: all L) and every
    layer's keys and values [B, L, K, H]; `merged_span` as in `block_causal_mask`."""
    if mask_BL is None:
      mask_BL = jnp.ones(tokens_BL.shape, bool)
    mask_BL = mask_BL.astype(bool)
    positions_BL = self.positions(mask_BL)
    attn_mask = self.attention_mask(tokens_BL, mask_BL, merged_span)
    x_BLD = self.embed(tokens_BL)
    cache = []
    for layer in self.layers:
      x_BLD, kv = layer(x_BLD, positions_BL, attn_mask)
      cache.append(kv)
    width = tokens_BL.shape[1] if width is None else width
    return self._logits_at(x_BLD, start, width), cache

  def window(self, tokens_BL: jax.Array, mask_BL: jax.Array, cache: list[KV],
             start: jax.Array, width: int, suffix_length: int | None = None) -> jax.Array:
    """Logits [B, width, V] of positions [start, start + width), recomputing only those tokens
    (and, for shifted logits, the one before them) against the cached keys and values.

    With `suffix_length` (the prefix cache) the canvas's last `suffix_length` positions (plus
    one for shifted logits) are recomputed instead; among them, those before the window (before
    the one before it for shifted logits) keep their cached keys and values.
    """
    return self.window_with_cache(tokens_BL, mask_BL, cache, start, width, suffix_length)[0]

  def window_with_cache(self, tokens_BL: jax.Array, mask_BL: jax.Array, cache: list[KV],
                        start: jax.Array, width: int, suffix_length: int | None = None,
                        merged_span: tuple[jax.Array, jax.Array] | None = None
                        ) -> tuple[jax.Array, list[KV]]:
    """`window`'s logits, and the cache with the recomputed positions' keys and values written
    in (the block diffusion decoder keeps them: exact under block-causal attention);
    `merged_span` as in `block_causal_mask`."""
    shift = int(self.config.shift_logits)
    fresh_from = start - shift
    fresh_W = None
    if suffix_length is None:
      first, count = fresh_from, width + shift
    else:
      count = suffix_length + shift
      first = tokens_BL.shape[1] - count
      fresh_W = first + jnp.arange(count) >= fresh_from
    mask_BL = mask_BL.astype(bool)
    positions_BW = jax.lax.dynamic_slice_in_dim(self.positions(mask_BL), first, count, 1)
    attn_mask = self.attention_mask(tokens_BL, mask_BL, merged_span)
    if attn_mask.ndim == 3:  # the window's query rows
      attn_mask = jax.lax.dynamic_slice_in_dim(attn_mask, first, count, 1)
    x_BWD = self.embed(jax.lax.dynamic_slice_in_dim(tokens_BL, first, count, 1))
    new_cache = []
    for layer, kv in zip(self.layers, cache):
      x_BWD, kv = layer.window(x_BWD, positions_BW, attn_mask, kv, first, fresh_W)
      new_cache.append(kv)
    # The states start at `first`, so position `start` is at `start - first` among them.
    return self._logits_at(x_BWD, start - first, width), new_cache

  def extend(self, tokens_BT: jax.Array, positions_BT: jax.Array, visible_BTX: jax.Array,
             cache: list[KV], start: int = 0, width: int | None = None
             ) -> tuple[jax.Array, list[KV]]:
    """Logits [B, width, V] of the new tokens [start, start + width) (default: all T new tokens
    at `positions_BT`) against `cache` (every layer's [B, S, K, H], S may be 0), with
    `visible_BTX` [B, T, S + T] as in `Block.extend`, and the T tokens' keys and values per
    layer; the cache itself is not written."""
    x_BTD = self.embed(tokens_BT)
    new = []
    for layer, kv in zip(self.layers, cache):
      x_BTD, kv_new = layer.extend(x_BTD, positions_BT, visible_BTX, kv)
      new.append(kv_new)
    return self._logits_at(x_BTD, start, tokens_BT.shape[1] if width is None else width), new
