"""Block diffusion decoding (LLaDA2.x, SDAR) with an exact block cache, in one compiled loop.

The canvas is cut into blocks of B positions counted from each row's first prompt token, and
the model attends block-causally (`ModelConfig.attention_block` = B), so a finished block's keys
and values never change again. Decoding, as in inclusionAI's `LLaDA2MoeModelLM.generate`:

  - the prompt's whole blocks are run once (prefill) and their keys/values cached;
  - each block (the first one holds the prompt's tail) starts all-mask; every step recomputes
    only the block's B tokens against the cache, commits the masked positions whose top
    probability exceeds `threshold` if there are at least as many as the step's scheduled count
    (B / steps per step), else the scheduled count by confidence (temperature 0);
  - with `editing_threshold` (LLaDA2.1 token-to-token editing) each step also rewrites the
    block's already committed, non-prompt tokens whose top token differs and whose probability
    exceeds it; once the block has no masks, steps go on while edits happen, at most
    `max_post_steps`; the minimum per step is then `num_to_transfer` (default 1), unscheduled;
  - a block is finished when a step finds it final (no masks, and no edit to make): that step's
    keys and values are those of the final tokens and stay in the cache (one extra B-token pass
    per block over the official loop, which recomputes the whole canvas every step instead);
  - a row stops after the block in which it produced EOS; the loop ends when every row stopped.

Left padding: each row's padding is a whole number of blocks, chosen so that every row's first
decoded block sits at the same canvas index; padding is hidden from attention. Rows move from
block to block together (a row whose block is final waits, committing nothing).

Not supported here: sampling at temperature > 0, the other unmasking rules of
`dllm_jax.sampling.Sampler` inside the block, and Multiple Block Editing (re-opening finished
blocks). LLaDA2.2's insert/delete editing is out of scope.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class BlockDiffusion:
  """Decoding settings (a static jit argument). The defaults are LLaDA2.0's evaluation setting
  (block 32, 32 steps, threshold 0.95, temperature 0)."""

  gen_length: int
  block_length: int = 32
  steps: int = 32
  threshold: float = 0.95
  editing_threshold: float | None = None
  max_post_steps: int = 16
  num_to_transfer: int = 1
  exact_cache: bool = True  # False: every step recomputes the whole canvas (for benchmarks)

  def __post_init__(self):
    if self.gen_length < 1 or self.block_length < 1 or self.steps < 1:
      raise ValueError("gen_length, block_length and steps must be >= 1")
    if not 0.0 <= self.threshold <= 1.0:
      raise ValueError(f"threshold must be in [0, 1], got {self.threshold}")
    if self.editing_threshold is not None and not 0.0 <= self.editing_threshold <= 1.0:
      raise ValueError(f"editing_threshold must be in [0, 1], got {self.editing_threshold}")
    if self.num_to_transfer < 1 or self.max_post_steps < 0:
      raise ValueError("num_to_transfer must be >= 1 and max_post_steps >= 0")

  @classmethod
  def llada21_quality(cls, gen_length: int, **changes) -> BlockDiffusion:
    """LLaDA2.1's Q (quality) mode: threshold 0.7, editing threshold 0.5. The values the
    diffusers LLaDA2 pipeline documents for LLaDA2.1 quality (docs/api/pipelines/llada2.md);
    third-party evaluation scripts quote the same pair from the LLaDA2.1-mini model card as "Q
    Mode". The tech report (arXiv 2602.08676) gives no numbers; the model card itself was not
    read here."""
    return cls(gen_length, **{"threshold": 0.7, "editing_threshold": 0.5, **changes})

  @classmethod
  def llada21_speed(cls, gen_length: int, **changes) -> BlockDiffusion:
    """LLaDA2.1's S (speed) mode: threshold 0.5, editing threshold 0.0 (every committed token
    whose top choice changed is rewritten). The defaults of SGLang's `JointThreshold` decoder
    for LLaDA2.1 (sgl-project/sglang, docs/supported_models/text_generation/
    diffusion_language_models.md: "threshold: 0.5", "edit_threshold: 0.0", "recommended for
    most cases"); third-party evaluation scripts quote the same pair from the LLaDA2.1-mini model
    card as "Speed Mode" (one of them reads editing there as off, not 0.0). Second-hand: the
    model card itself was not read here."""
    return cls(gen_length, **{"threshold": 0.5, "editing_threshold": 0.0, **changes})

  def schedule(self) -> np.ndarray:
    """Tokens to commit at least, per step of a block: B // steps, the first B % steps one more
    (LLaDA2.0); LLaDA2.1 (editing) commits at least `num_to_transfer` every step."""
    steps = min(self.steps, self.gen_length)
    base, extra = divmod(self.block_length, steps)
    return np.array([base + (i < extra) for i in range(steps)], np.int32)


@dataclasses.dataclass(frozen=True)
class BlockLayout:
  """Where each row's prompt and generation sit on the canvas (host-side, static shapes)."""

  canvas: np.ndarray  # [B, L] prompt, padding, masks
  valid: np.ndarray  # [B, L] real (prompt or generated) positions
  gen_start: np.ndarray  # [B] canvas index of each row's first generated token
  first_block: int  # the first decoded block (blocks before it are prefilled)
  num_blocks: int  # blocks on the canvas


def layout(prompt_BP: np.ndarray, prompt_mask_BP: np.ndarray, decoder: BlockDiffusion,
           mask_id: int, pad_id: int) -> BlockLayout:
  """Puts each row's prompt after whole blocks of padding so that all rows decode their first
  block (which holds their prompt's tail) at the same canvas block."""
  prompt_BP, prompt_mask_BP = np.asarray(prompt_BP), np.asarray(prompt_mask_BP, bool)
  B_len = decoder.block_length
  lengths = prompt_mask_BP.sum(1)
  if lengths.min() < 1:
    raise ValueError("every prompt needs at least one token")
  first = int((lengths // B_len).max())
  blocks = -(-(decoder.gen_length + int((lengths % B_len).max())) // B_len)
  L = (first + blocks) * B_len
  rows = prompt_BP.shape[0]
  canvas = np.full((rows, L), mask_id, np.int32)
  valid = np.ones((rows, L), bool)
  gen_start = np.zeros(rows, np.int32)
  for b in range(rows):
    pad = (first - lengths[b] // B_len) * B_len
    canvas[b, :pad], valid[b, :pad] = pad_id, False
    canvas[b, pad:pad + lengths[b]] = prompt_BP[b][prompt_mask_BP[b]]
    gen_start[b] = pad + lengths[b]
  return BlockLayout(canvas, valid, gen_start, first, first + blocks)


@functools.partial(jax.jit, static_argnums=(0, 1, 4, 5, 6))
def _decode(decoder: BlockDiffusion, denoise_fn, params, arrays, first_block: int,
            num_blocks: int, ids: tuple[int, int]):
  canvas_BL, valid_BL, gen_start_B = arrays
  mask_id, eos_id = ids
  Bk = decoder.block_length
  rows, L = canvas_BL.shape
  editing = decoder.editing_threshold is not None
  schedule = jnp.asarray(decoder.schedule())
  gen_BL = jnp.arange(L)[None] >= gen_start_B[:, None]

  if first_block:
    _, prefix = denoise_fn.with_cache(params, canvas_BL[:, :first_block * Bk],
                                      valid_BL[:, :first_block * Bk], 0, 1)
    grow = lambda a: jnp.pad(a, ((0, 0), (0, L - a.shape[1]), (0, 0), (0, 0)))
    cache = [(grow(k), grow(v)) for k, v in prefix]
  else:
    _, cache = denoise_fn.with_cache(params, canvas_BL, valid_BL, 0, 1)
    cache = [(jnp.zeros_like(k), jnp.zeros_like(v)) for k, v in cache]

  def step(state):
    canvas, cache, block, s, post_B, done_B, nfe = state
    start = block * Bk
    if decoder.exact_cache:
      logits_BWV, new_cache = denoise_fn.window_with_cache(params, cache, canvas, valid_BL,
                                                           start, Bk)
    else:
      logits_BWV, new_cache = denoise_fn.with_cache(params, canvas, valid_BL, start, Bk)[0], cache
    probs = jax.nn.softmax(logits_BWV.astype(jnp.float32), axis=-1)
    x0_BW = jnp.argmax(probs, axis=-1).astype(canvas.dtype)
    p_BW = jnp.max(probs, axis=-1)
    tok_BW = jax.lax.dynamic_slice_in_dim(canvas, start, Bk, 1)
    gen_BW = jax.lax.dynamic_slice_in_dim(gen_BL, start, Bk, 1)
    masked_BW = (tok_BW == mask_id) & gen_BW
    has_mask_B = masked_BW.any(-1)
    if editing:
      post_B = post_B + (~has_mask_B).astype(jnp.int32)
      edit_BW = (~masked_BW & gen_BW & (p_BW > decoder.editing_threshold) & (x0_BW != tok_BW))
      final_B = ~has_mask_B & ((post_B > decoder.max_post_steps) | ~edit_BW.any(-1))
      n = decoder.num_to_transfer
    else:
      edit_BW = jnp.zeros_like(masked_BW)
      final_B = ~has_mask_B | (s >= schedule.shape[0])
      n = schedule[jnp.minimum(s, schedule.shape[0] - 1)]
    final_B = final_B | done_B
    confidence_BW = jnp.where(masked_BW, p_BW, -jnp.inf)
    high_BW = (confidence_BW > decoder.threshold) & masked_BW
    count_B = jnp.minimum(n, masked_BW.sum(-1))
    rank_BW = jnp.argsort(jnp.argsort(-confidence_BW, axis=-1, stable=True), axis=-1)
    top_BW = (rank_BW < count_B[:, None]) & masked_BW
    commit_BW = jnp.where((high_BW.sum(-1) >= n)[:, None], high_BW, top_BW)
    change_BW = (commit_BW | edit_BW) & ~final_B[:, None]
    canvas = jax.lax.dynamic_update_slice_in_dim(canvas, jnp.where(change_BW, x0_BW, tok_BW),
                                                 start, 1)
    advance = final_B.all()
    end_BL = jnp.arange(L)[None] < start + Bk
    eos_B = ((canvas == eos_id) & gen_BL & end_BL).any(-1)
    done_B = jnp.where(advance, done_B | eos_B, done_B)
    zeros = jnp.zeros_like(post_B)
    return (canvas, new_cache, block + advance.astype(block.dtype),
            jnp.where(advance, 0, s + 1), jnp.where(advance, zeros, post_B), done_B, nfe + 1)

  def not_finished(state):
    _, _, block, _, _, done_B, _ = state
    return (block < num_blocks) & ~done_B.all()

  state = (canvas_BL, cache, jnp.int32(first_block), jnp.int32(0), jnp.zeros(rows, jnp.int32),
           jnp.zeros(rows, bool), jnp.int32(0))
  canvas, cache, _, _, _, _, nfe = jax.lax.while_loop(not_finished, step, state)
  return canvas, cache, nfe


@dataclasses.dataclass(frozen=True)
class BlockDecodeOutput:
  tokens: np.ndarray  # [B, gen_length]: each row's generated tokens (masks past a stopped row)
  forward_passes: int  # model calls over the batch, prefill excluded
  canvas: np.ndarray
  cache: list  # every layer's keys and values over the canvas (finished blocks exact)
  layout: BlockLayout


def generate_blocks(decoder: BlockDiffusion, denoise_fn, params, prompt_BP, prompt_mask_BP=None,
                    *, mask_id: int, eos_id: int, pad_id: int) -> BlockDecodeOutput:
  """Decodes `gen_length` tokens after each prompt (left-padded rows allowed); see the module
  docstring. The model's `attention_block` must equal `decoder.block_length`."""
  block = getattr(getattr(denoise_fn, "config", None), "attention_block", None)
  if block != decoder.block_length:
    raise ValueError(f"the model attends in blocks of {block}; decode with block_length={block} "
                     "(or set ModelConfig.attention_block to the block length)")
  prompt_BP = np.asarray(prompt_BP)
  if prompt_mask_BP is None:
    prompt_mask_BP = np.ones(prompt_BP.shape, bool)
  lay = layout(prompt_BP, prompt_mask_BP, decoder, mask_id, pad_id)
  canvas, cache, nfe = _decode(decoder, denoise_fn, params,
                               (jnp.asarray(lay.canvas), jnp.asarray(lay.valid),
                                jnp.asarray(lay.gen_start)), lay.first_block, lay.num_blocks,
                               (mask_id, eos_id))
  canvas = np.asarray(canvas)
  tokens = np.stack([canvas[b, s:s + decoder.gen_length] for b, s in enumerate(lay.gen_start)])
  return BlockDecodeOutput(tokens, int(nfe), canvas, cache, lay)
