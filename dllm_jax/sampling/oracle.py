"""An oracle denoiser built from an explicit joint distribution P over V^L (small V and L).

For any partial canvas it returns the exact conditional marginals of every position given the
revealed ones: logits[b, l, u] = log P(x_l = u | x_O) (log 1 / log 0 at revealed positions) and
-inf for the mask token, whose id is V. Its `params` is the table log P over all V^L sequences,
so it plugs into `generate` like any model, and sampler output can be compared with exact
distributions (DESIGN.md §7).
"""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np


def all_sequences(vocab: int, length: int) -> np.ndarray:
  """Every sequence of V^L in lexicographic order, [V^L, L]."""
  return np.array(list(itertools.product(range(vocab), repeat=length)), np.int32)


def sequence_index(tokens_NL: np.ndarray, vocab: int) -> np.ndarray:
  """Position of each sequence in `all_sequences` order."""
  weights = vocab ** np.arange(tokens_NL.shape[-1] - 1, -1, -1)
  return (np.asarray(tokens_NL) * weights).sum(-1)


def random_joint(key: jax.Array, vocab: int, length: int, concentration: float = 0.3
                 ) -> jax.Array:
  """log P for a random joint drawn from a Dirichlet (small concentration = peaked, structured)."""
  return jnp.log(jax.random.dirichlet(key, jnp.full((vocab ** length,), concentration)))


@functools.lru_cache(maxsize=None)
def make_oracle_denoise(vocab: int, length: int):
  """`denoise(log_p_N, tokens_BL, mask_BL) -> logits_BL(V+1)` for canvases of exactly L tokens."""
  sequences_NL = jnp.asarray(all_sequences(vocab, length))
  onehot_NLV = jax.nn.one_hot(sequences_NL, vocab, dtype=jnp.float32)
  mask_id = vocab

  def denoise(log_p_N: jax.Array, tokens_BL: jax.Array, mask_BL: jax.Array) -> jax.Array:
    del mask_BL
    if tokens_BL.shape[-1] != length:
      raise ValueError(f"oracle over length {length} got a canvas of {tokens_BL.shape[-1]}")
    revealed_BL = tokens_BL != mask_id
    agree_BNL = (sequences_NL[None] == tokens_BL[:, None]) | ~revealed_BL[:, None]
    log_w_BN = jnp.where(jnp.all(agree_BNL, axis=-1), log_p_N[None], -jnp.inf)
    posterior_BN = jax.nn.softmax(log_w_BN, axis=-1)
    marginals_BLV = jnp.einsum("bn,nlv->blv", posterior_BN, onehot_NLV)
    logits_BLV = jnp.log(marginals_BLV)
    return jnp.concatenate([logits_BLV, jnp.full((*logits_BLV.shape[:2], 1), -jnp.inf)], -1)

  denoise.max_length = length
  return denoise
