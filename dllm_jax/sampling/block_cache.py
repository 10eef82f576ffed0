"""The block cache: Fast-dLLM's key/value caches for semi-autoregressive decoding, in static shapes.

At the first step of a block (and every `refresh_every` steps if set) the whole canvas runs
through the model and every layer's keys and values are kept. The block's other steps reuse
them, in one of Fast-dLLM's two modes:

- `mode="dual"` (their dual cache): only the block's tokens are recomputed; every other
  position's keys and values come from the cache (prompt, finished blocks, and the masked
  blocks after the current one).
- `mode="prefix"` (their prefix cache): the block and everything after it are recomputed;
  only the positions before the block (prompt and finished blocks) come from the cache.

Both read the LM head over the block only. The approximation: bidirectional attention makes
every position's keys and values depend on the whole canvas, so cached entries go stale as the
block's tokens get committed; the prefix mode only lets the prefix go stale. With one block
(block_length = gen_length) the two modes are the same computation (the block is the whole
suffix); with `refresh_every=1` nothing is reused and decoding is exactly the uncached one.

Static shapes. The dual window has the block's width at every step. The prefix mode's suffix
[start, L) shrinks from block to block, so it is recomputed in a window that ends at L and is
`n` blocks wide, where `n` is the smallest of `suffix_widths(num_blocks)` that covers the blocks
left to decode (default: powers of two and `num_blocks`, so log2(num_blocks) + 1 compiled
windows, at most twice the positions of the exact suffix). Inside the window, the positions
before the block keep their cached keys and values, so the result equals an exact suffix's.
`suffix_blocks=tuple(range(1, num_blocks + 1))` compiles one window per block (no wasted
positions, longest compile); `suffix_blocks=(num_blocks,)` one window of the whole generated
region (shortest compile, most positions). Measured (2 CPU cores, 20M params, block 32, gen 512,
CPU time over uncached decoding): 1.21x for the default, 1.43x with a window per block at 2.5x
its compile time, 0.94x with one window (experiments/bench_sampling.py --prefix_variants).

Shifted logits (Dream): the block's first position is predicted at the position before it, so
both modes also recompute that position (its fresh keys and values replace the cached ones).
Fast-dLLM's Dream code reads the first position's own output there instead, but never uses it:
its sampler commits that position at the block's full pass.

The model must provide `with_cache(params, tokens, mask, start, width) -> (logits, cache)` and
`window(params, cache, tokens, mask, start, width) -> logits` (dual), or
`suffix_window(params, cache, tokens, mask, start, width, suffix_length) -> logits` (prefix),
each giving the logits [B, width, V] of positions [start, start + width)
(`dllm_jax.models.Denoiser` does).
"""

from __future__ import annotations

import dataclasses

MODES = ("dual", "prefix")


@dataclasses.dataclass(frozen=True)
class BlockCache:
  """Cache keys and values per block (`mode` "dual" or "prefix"); `refresh_every=n` also
  recomputes them every n steps; `suffix_blocks` the prefix mode's window widths in blocks."""

  mode: str = "dual"
  refresh_every: int | None = None
  suffix_blocks: tuple[int, ...] | None = None

  def __post_init__(self):
    if self.mode not in MODES:
      raise ValueError(f"BlockCache.mode must be one of {MODES}, got {self.mode!r}")
    if self.refresh_every is not None and self.refresh_every < 1:
      raise ValueError(f"BlockCache.refresh_every must be >= 1, got {self.refresh_every}")
    if self.suffix_blocks is not None:
      if self.mode != "prefix":
        raise ValueError("BlockCache.suffix_blocks sets the prefix mode's windows; use it with "
                         "mode='prefix'")
      if not self.suffix_blocks or min(self.suffix_blocks) < 1:
        raise ValueError(f"BlockCache.suffix_blocks must be widths >= 1 (in blocks), got "
                         f"{self.suffix_blocks!r}")

  def suffix_widths(self, num_blocks: int) -> tuple[int, ...]:
    """The prefix mode's window widths in blocks, ascending; the last is `num_blocks`."""
    widths = self.suffix_blocks
    if widths is None:
      widths = [1 << k for k in range(num_blocks.bit_length())]
    return tuple(sorted({min(n, num_blocks) for n in widths} | {num_blocks}))


def check_denoiser(denoise_fn, cache: BlockCache) -> None:
  for name in ("with_cache", "window" if cache.mode == "dual" else "suffix_window"):
    if not callable(getattr(denoise_fn, name, None)):
      raise ValueError(f"a {cache.mode} block cache needs a denoiser with a `{name}` method (such "
                       f"as dllm_jax.models.make_denoise(config)); got {denoise_fn!r}")
