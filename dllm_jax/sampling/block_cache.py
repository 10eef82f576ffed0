"""The block cache: Fast-dLLM's key/value cache for semi-autoregressive decoding, in static shapes.

At the first step of a block (and every `refresh_every` steps if set) the whole canvas runs
through the model and every layer's keys and values are kept. The block's other steps recompute
only the block's tokens: their queries, keys and values are fresh, every other position's keys
and values come from the cache. Fast-dLLM calls this the dual cache (prompt, finished blocks and
the masked blocks after the current one are all cached); with one block (block_length =
gen_length) it is their prefix cache over the prompt. The window has the block's size at every
step, so one compiled loop body serves all blocks.

The approximation: bidirectional attention makes every position's keys and values depend on the
whole canvas, so cached entries go stale as the block's tokens get committed. With
`refresh_every=1` nothing is reused and decoding is exactly the uncached one.

The model must provide `with_cache(params, tokens, mask, start, width) -> (logits, cache)` and
`window(params, cache, tokens, mask, start, width) -> logits`, both giving the logits [B, width, V]
of positions [start, start + width) (`dllm_jax.models.Denoiser` does).
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class BlockCache:
  """Cache keys and values per block; `refresh_every=n` also recomputes them every n steps."""

  refresh_every: int | None = None

  def __post_init__(self):
    if self.refresh_every is not None and self.refresh_every < 1:
      raise ValueError(f"BlockCache.refresh_every must be >= 1, got {self.refresh_every}")


def check_denoiser(denoise_fn) -> None:
  for name in ("with_cache", "window"):
    if not callable(getattr(denoise_fn, name, None)):
      raise ValueError(f"a block cache needs a denoiser with a `{name}` method (such as "
                       f"dllm_jax.models.make_denoise(config)); got {denoise_fn!r}")
