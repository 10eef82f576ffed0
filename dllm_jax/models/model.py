"""A model as a pure function: `denoise(params, tokens, attention_mask) -> float32 logits`.

`params` is the nested dict of arrays that `nnx.split` + `nnx.to_pure_dict` give for
`Transformer(config)`; it travels as a jit argument and is never closed over, so one compiled
sampler serves any weights of the same shapes.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dllm_jax.models.config import ModelConfig
from dllm_jax.models.transformer import Transformer

Params = dict[str, Any]
DenoiseFn = Callable[[Params, jax.Array, jax.Array], jax.Array]


@functools.lru_cache(maxsize=None)
def _abstract_split(config: ModelConfig) -> tuple[nnx.GraphDef, Params]:
  """Tracing the model's construction takes seconds at 8B sizes: once per config."""
  graphdef, state = nnx.split(nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0))))
  return graphdef, nnx.to_pure_dict(state)


def _graphdef(config: ModelConfig) -> nnx.GraphDef:
  return _abstract_split(config)[0]


def init_params(config: ModelConfig, seed: int = 0) -> Params:
  """Random weights (normal(0.02) matrices, unit norm scales, zero biases)."""
  model = Transformer(config, rngs=nnx.Rngs(seed))
  return nnx.to_pure_dict(nnx.split(model)[1])


def abstract_params(config: ModelConfig) -> Params:
  """The parameter tree as `jax.ShapeDtypeStruct`s, without allocating anything."""
  return jax.tree.map(lambda leaf: leaf, _abstract_split(config)[1])  # a copy the caller may edit


def param_count(params: Params) -> int:
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(params))


@dataclasses.dataclass(frozen=True)
class Denoiser:
  """The model of `config` as pure functions of `(params, ...)`.

  Calling it is the sampler contract `denoise(params, tokens_BL, mask_BL) -> logits_BLV`;
  `logits_window` lets the decoding loop skip the LM head outside the block it decodes;
  `with_cache`, `window` and `suffix_window` serve the sampler's block cache (dual and prefix
  modes), `with_cache` and `extend` WeDLM's streaming decoder. Equal configs give equal (hashable)
  denoisers, so jitted samplers taking one as a static argument compile once per config.
  """

  config: ModelConfig

  @property
  def max_length(self) -> int:
    return self.config.max_length  # generate() rejects longer canvases

  def _model(self, params: Params) -> Transformer:
    return nnx.merge(_graphdef(self.config), params)

  def __call__(self, params: Params, tokens_BL: jax.Array, mask_BL: jax.Array) -> jax.Array:
    return self._model(params)(tokens_BL, mask_BL)

  def logits_window(self, params: Params, tokens_BL: jax.Array, mask_BL: jax.Array,
                    start: jax.Array, width: int) -> jax.Array:
    """Logits [B, width, V] of positions [start, start + width): the whole canvas runs through
    the transformer, the LM head only over the window."""
    return self.with_cache(params, tokens_BL, mask_BL, start, width)[0]

  def with_cache(self, params: Params, tokens_BL: jax.Array, mask_BL: jax.Array,
                 start: jax.Array | int = 0, width: int | None = None, merged_span=None):
    """Logits [B, width, V] of positions [start, start + width) (default: all) and every
    layer's (keys, values) [B, L, K, H]; `merged_span` (lo, hi): block-causal positions in
    [lo, hi) attend to each other as one block (`transformer.block_causal_mask`)."""
    return self._model(params).forward_with_cache(tokens_BL, mask_BL, start, width, merged_span)

  def window(self, params: Params, cache, tokens_BL: jax.Array, mask_BL: jax.Array,
             start: jax.Array, width: int) -> jax.Array:
    """Logits [B, width, V] of positions [start, start + width) against `cache`."""
    return self._model(params).window(tokens_BL, mask_BL, cache, start, width)

  def window_with_cache(self, params: Params, cache, tokens_BL: jax.Array, mask_BL: jax.Array,
                        start: jax.Array, width: int, merged_span=None):
    """`window`'s logits and the cache with the window's fresh keys and values written in;
    `merged_span` as in `with_cache`."""
    return self._model(params).window_with_cache(tokens_BL, mask_BL, cache, start, width,
                                                 merged_span=merged_span)

  def suffix_window(self, params: Params, cache, tokens_BL: jax.Array, mask_BL: jax.Array,
                    start: jax.Array, width: int, suffix_length: int) -> jax.Array:
    """Logits [B, width, V] of positions [start, start + width), recomputing the canvas's last
    `suffix_length` positions against `cache`, whose keys and values stay in use only before
    `start` (the prefix cache; see `Transformer.window`)."""
    return self._model(params).window(tokens_BL, mask_BL, cache, start, width, suffix_length)

  def extend(self, params: Params, cache, tokens_BT: jax.Array, positions_BT: jax.Array,
             visible_BTX: jax.Array, start: int = 0, width: int | None = None):
    """Logits [B, width, V] of new tokens [start, start + width) (default: all T) against
    `cache`, and the T tokens' keys and values (see `Transformer.extend`)."""
    return self._model(params).extend(tokens_BT, positions_BT, visible_BTX, cache, start, width)


def make_denoise(config: ModelConfig) -> Denoiser:
  """The model as a pure, hashable function (see `Denoiser`)."""
  return Denoiser(config)


def cast_params(params: Params, dtype: jnp.dtype) -> Params:
  """Casts floating weights to `dtype` (for example a bfloat16 checkpoint run in float32)."""
  return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x,
                      params)
