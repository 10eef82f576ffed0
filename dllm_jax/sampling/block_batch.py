"""Block diffusion (`block_diffusion`) on the experiment runner's batches: one jitted call with the
calling convention of `sampling.generate` and `streaming.stream_generate`.

`block_diffusion.generate_blocks` lays the canvas out on the host from the batch's own prompts,
so its shapes (and its compilation) change with the batch. Here the layout is fixed by the
padded prompt width P alone: every row gets P // B - (its length // B) whole blocks of hidden
padding, so that its first decoded block (holding its prompt's tail) sits at block P // B, and
the canvas ends ceil((gen_length + B - 1) / B) blocks later, enough for any prompt length
modulo B. A row's placement depends on that row and P only, so its tokens do not depend on the
batch it is decoded in, and a run compiles once. Positions and blocks count from each row's
first real token and padding is hidden, so the tokens are those of `generate_blocks` on the same
prompt; a row whose generation ends early in its last block may decode one block more than
`generate_blocks` would (tokens past `gen_length`, never returned), when it has not stopped at
EOS before.

Statistics: `nfe_B` is each row's own number of block forwards (prefill excluded), the count the
row would take decoded alone, the figure the official generate's tokens per forward come from
(rows move from block to block together; `steps` is the batch's count). The committed tokens'
log-probabilities are not recorded by the block decoder: `logprob_BG` is NaN.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from dllm_jax.sampling import block_diffusion, row_random
from dllm_jax.sampling.block_diffusion import BlockDiffusion
from dllm_jax.sampling.decode import DecodeOutput
from dllm_jax.sampling.learned_policy import LearnedPolicy


def static_layout(decoder: BlockDiffusion, prompt_width: int) -> tuple[int, int]:
  """(first decoded block, blocks on the canvas) for prompts left-padded to `prompt_width`."""
  B = decoder.block_length
  first = prompt_width // B
  return first, first + -(-(decoder.gen_length + B - 1) // B)


def canvas_length(decoder: BlockDiffusion, prompt_width: int) -> int:
  """Positions on the canvas: what the model's `max_length` must allow."""
  return static_layout(decoder, prompt_width)[1] * decoder.block_length


def check_model(decoder: BlockDiffusion, config) -> None:
  """The model must attend in blocks of the decoder's block length."""
  if config.attention_block != decoder.block_length:
    raise ValueError(f"the model attends in blocks of {config.attention_block}, the decoder uses "
                     f"block_length={decoder.block_length}; decode with the model's block length")


@functools.partial(jax.jit, static_argnames=("decoder", "denoise_fn"))
def generate_padded(decoder: BlockDiffusion, denoise_fn, params, prompt_BP: jax.Array,
                    prompt_mask_BP: jax.Array, rng: jax.Array | None = None,
                    policy_params=None) -> DecodeOutput:
  """Decodes `decoder.gen_length` tokens after each left-padded prompt (every row needs at least
  one prompt token). `denoise_fn` is `models.make_denoise(config)` of a block diffusion model; its
  config gives the mask, EOS and padding ids. `rng` (one key, or one per row) drives the decoder
  when it samples (`decoder.samples`); a greedy decoder ignores it. `policy_params`: the network
  weights of a `LearnedPolicy` rule (and only of it)."""
  config = denoise_fn.config
  check_model(decoder, config)
  if isinstance(decoder.remasking, LearnedPolicy) != (policy_params is not None):
    raise ValueError("policy_params go with remasking=LearnedPolicy(...) and only with it")
  rows, P = prompt_BP.shape
  Bk, G = decoder.block_length, decoder.gen_length
  first, num_blocks = static_layout(decoder, P)
  L = num_blocks * Bk
  length_B = jnp.sum(prompt_mask_BP, axis=1, dtype=jnp.int32)
  pad_B = (first - length_B // Bk) * Bk
  gen_start_B = pad_B + length_B
  position_L = jnp.arange(L)
  # canvas position j of row b holds prompt token P - length + (j - pad) (left-padded prompt)
  source_BL = jnp.clip(P - length_B[:, None] + position_L - pad_B[:, None], 0, P - 1)
  prompt_BL = jnp.take_along_axis(prompt_BP.astype(jnp.int32), source_BL, axis=1)
  canvas_BL = jnp.where(position_L < pad_B[:, None], config.pad_token_id,
                        jnp.where(position_L < gen_start_B[:, None], prompt_BL,
                                  config.mask_token_id)).astype(jnp.int32)
  valid_BL = position_L >= pad_B[:, None]
  keys_B = row_random.row_keys(jax.random.key(0) if rng is None else rng, rows)
  canvas_BL, _, nfe, nfe_B = block_diffusion._decode(  # pylint: disable=protected-access
      decoder, denoise_fn, params, (canvas_BL, valid_BL, gen_start_B, keys_B), policy_params,
      first, num_blocks, (config.mask_token_id, config.eos_token_id))
  gen_BG = jnp.take_along_axis(canvas_BL, gen_start_B[:, None] + jnp.arange(G), axis=1)
  zeros_BG = jnp.zeros((rows, G), jnp.int32)
  return DecodeOutput(
      tokens_BL=jnp.concatenate([prompt_BP.astype(jnp.int32), gen_BG], axis=1),
      nfe_B=nfe_B, steps=nfe,
      logprob_BG=jnp.full((rows, G), jnp.nan, jnp.float32),
      confidence_BG=jnp.zeros((rows, G), jnp.float32), commit_step_BG=zeros_BG,
      imh_accepts_B=jnp.zeros((rows,), jnp.int32))
