"""The bidirectional transformer shared by LLaDA and Dream, as Flax NNX modules.

Shape suffixes used in tensor names throughout the library:
  B batch        L sequence (canvas) length   S key length (= L)
  D model width  N query heads                K key/value heads       G = N // K
  H head dim     F MLP hidden width           V vocabulary
so `q_BLNH` is a [batch, length, query heads, head dim] array.

Block (pre-norm, SwiGLU):  h = x + o(attn(norm1(x)));  y = h + down(silu(gate(n)) * up(n)), n = norm2(h).
Attention is fully bidirectional; padding is masked on keys only, so no query row is ever fully
masked while a row has at least one real token.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from dllm_jax.models.config import ModelConfig


class RMSNorm(nnx.Module):
  """x / rms(x) computed in float32, cast back to the input dtype, then scaled."""

  def __init__(self, width: int, eps: float, param_dtype: jnp.dtype):
    self.scale = nnx.Param(jnp.ones((width,), param_dtype))
    self.eps = eps

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return self.scale[...].astype(x.dtype) * normed.astype(x.dtype)


def rotary_embedding(x_BLNH: jax.Array, positions_BL: jax.Array, theta: float) -> jax.Array:
  """Rotates the two halves of each head (the HF-Llama "rotate_half" layout), in float32."""
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


class Attention(nnx.Module):
  """Grouped-query bidirectional self-attention with RoPE and a key padding mask."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    c = config
    self.config = c
    self.q_proj = _linear(c, c.hidden_size, c.num_heads * c.head_dim, c.qkv_bias, rngs)
    self.k_proj = _linear(c, c.hidden_size, c.num_kv_heads * c.head_dim, c.qkv_bias, rngs)
    self.v_proj = _linear(c, c.hidden_size, c.num_kv_heads * c.head_dim, c.qkv_bias, rngs)
    self.o_proj = _linear(c, c.num_heads * c.head_dim, c.hidden_size, False, rngs)

  def __call__(self, x_BLD: jax.Array, positions_BL: jax.Array,
               key_mask_BS: jax.Array) -> jax.Array:
    c = self.config
    B, L, _ = x_BLD.shape
    G = c.num_heads // c.num_kv_heads
    q_BLNH = self.q_proj(x_BLD).reshape(B, L, c.num_heads, c.head_dim)
    k_BSKH = self.k_proj(x_BLD).reshape(B, L, c.num_kv_heads, c.head_dim)
    v_BSKH = self.v_proj(x_BLD).reshape(B, L, c.num_kv_heads, c.head_dim)
    q_BLNH = rotary_embedding(q_BLNH, positions_BL, c.rope_theta)
    k_BSKH = rotary_embedding(k_BSKH, positions_BL, c.rope_theta)
    q_BLKGH = q_BLNH.reshape(B, L, c.num_kv_heads, G, c.head_dim)
    logits_BKGLS = jnp.einsum("blkgh,bskh->bkgls", q_BLKGH, k_BSKH,
                              preferred_element_type=jnp.float32) / jnp.sqrt(c.head_dim)
    key_mask_B11S = key_mask_BS[:, None, None, None, :]
    logits_BKGLS = jnp.where(key_mask_B11S, logits_BKGLS, jnp.finfo(jnp.float32).min)
    probs_BKGLS = jax.nn.softmax(logits_BKGLS, axis=-1).astype(v_BSKH.dtype)
    out_BLKGH = jnp.einsum("bkgls,bskh->blkgh", probs_BKGLS, v_BSKH)
    return self.o_proj(out_BLKGH.reshape(B, L, c.num_heads * c.head_dim))


class MLP(nnx.Module):
  """SwiGLU: down(silu(gate(x)) * up(x))."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    c = config
    self.gate_proj = _linear(c, c.hidden_size, c.mlp_hidden_size, False, rngs)
    self.up_proj = _linear(c, c.hidden_size, c.mlp_hidden_size, False, rngs)
    self.down_proj = _linear(c, c.mlp_hidden_size, c.hidden_size, False, rngs)

  def __call__(self, x_BLD: jax.Array) -> jax.Array:
    return self.down_proj(jax.nn.silu(self.gate_proj(x_BLD)) * self.up_proj(x_BLD))


class Block(nnx.Module):

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    self.attn_norm = RMSNorm(config.hidden_size, config.norm_eps, config.weight_dtype)
    self.attn = Attention(config, rngs=rngs)
    self.mlp_norm = RMSNorm(config.hidden_size, config.norm_eps, config.weight_dtype)
    self.mlp = MLP(config, rngs=rngs)

  def __call__(self, x_BLD: jax.Array, positions_BL: jax.Array,
               key_mask_BS: jax.Array) -> jax.Array:
    h_BLD = x_BLD + self.attn(self.attn_norm(x_BLD), positions_BL, key_mask_BS)
    return h_BLD + self.mlp(self.mlp_norm(h_BLD))


class Transformer(nnx.Module):
  """Token ids [B, L] and a key mask [B, L] in, float32 logits [B, L, V] out."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    self.config = config
    self.embed = nnx.Embed(config.vocab_size, config.hidden_size, dtype=config.compute_dtype,
                           param_dtype=config.weight_dtype,
                           embedding_init=nnx.initializers.normal(0.02), rngs=rngs)
    self.layers = nnx.List([Block(config, rngs=rngs) for _ in range(config.num_layers)])
    self.final_norm = RMSNorm(config.hidden_size, config.norm_eps, config.weight_dtype)
    self.lm_head = _linear(config, config.hidden_size, config.vocab_size, False, rngs,
                           preferred_element_type=jnp.float32)

  def __call__(self, tokens_BL: jax.Array, mask_BL: jax.Array | None = None) -> jax.Array:
    c = self.config
    B, L = tokens_BL.shape
    if mask_BL is None:
      mask_BL = jnp.ones((B, L), bool)
    mask_BL = mask_BL.astype(bool)
    if c.positions_from_mask:
      # Dream: real tokens count 0, 1, ...; padding gets position 1 (it is never attended to).
      positions_BL = jnp.where(mask_BL, jnp.cumsum(mask_BL, axis=-1) - 1, 1)
    else:
      positions_BL = jnp.broadcast_to(jnp.arange(L), (B, L))
    x_BLD = self.embed(tokens_BL)
    for layer in self.layers:
      x_BLD = layer(x_BLD, positions_BL, mask_BL)
    logits_BLV = self.lm_head(self.final_norm(x_BLD)).astype(jnp.float32)
    if c.shift_logits:
      logits_BLV = jnp.concatenate([logits_BLV[:, :1], logits_BLV[:, :-1]], axis=1)
    return logits_BLV
