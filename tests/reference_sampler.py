"""A plain Python / numpy loop with the structure of LLaDA's reference `generate`, for checking the
compiled loop step by step.

It draws its random numbers exactly as `dllm_jax.sampling.decode` documents (row b's key is
`split(rng, B)[b]`; at iteration t it uses `fold_in(key_b, t)` split into token, score and select
keys), so both must give identical tokens.
"""

from __future__ import annotations

import jax
import numpy as np

from dllm_jax.sampling import LowConfidence, Random, Sampler


def _softmax(x: np.ndarray) -> np.ndarray:
  z = np.exp(x - x.max(-1, keepdims=True))
  return z / z.sum(-1, keepdims=True)


def reference_generate(sampler: Sampler, denoise, params, prompt: np.ndarray,
                       prompt_mask: np.ndarray, rng: jax.Array):
  """Returns (tokens [B, P+G], commit_step [B, G], canvases seen before each step)."""
  assert isinstance(sampler.remasking, (Random, LowConfidence)) and not sampler.remasking.alg_temp
  B, P = prompt.shape
  G, mask_id = sampler.gen_length, sampler.mask_token_id
  x = np.concatenate([prompt, np.full((B, G), mask_id)], axis=1).astype(np.int32)
  attention = np.concatenate([prompt_mask, np.ones((B, G), bool)], axis=1)
  commit_step = np.full((B, G), -1)
  canvases = []
  temperature = sampler.temperature or 0.0
  steps_per_block = sampler.total_steps // sampler.num_blocks
  row_keys = jax.random.split(rng, B)
  step = 0
  for block in range(sampler.num_blocks):
    start = P + block * sampler.block_len
    end = start + sampler.block_len
    # LLaDA: n masked tokens over s steps -> n // s per step, one more for the first n % s.
    n_masked = (x[:, start:end] == mask_id).sum(1)
    base, extra = n_masked // steps_per_block, n_masked % steps_per_block
    for j in range(steps_per_block):
      canvases.append(x.copy())
      keys = [jax.random.split(jax.random.fold_in(k, step), 3) for k in row_keys]
      if sampler.cfg_scale > 0:
        uncond = np.where(np.concatenate([prompt_mask, np.zeros((B, G), bool)], 1), mask_id, x)
        both = np.asarray(denoise(params, np.concatenate([x, uncond]),
                                  np.concatenate([attention, attention])), np.float32)
        cond, un = both[:B], both[B:]
        logits = un + (sampler.cfg_scale + 1) * (cond - un)
      else:
        logits = np.asarray(denoise(params, x, attention), np.float32)
      logits = logits.copy()
      logits[..., mask_id] = -np.inf
      if sampler.forbid_eos:
        logits[..., sampler.eos_token_id] = -np.inf
      if temperature > 0:
        gumbel = np.stack([np.asarray(jax.random.gumbel(k[0], (G, logits.shape[-1]), np.float32))
                           for k in keys])
        x0 = np.argmax(logits[:, P:] / np.float32(temperature) + gumbel, axis=-1)
      else:
        x0 = np.argmax(logits[:, P:], axis=-1)
      if isinstance(sampler.remasking, LowConfidence):
        confidence = np.take_along_axis(_softmax(logits[:, P:]), x0[..., None], -1)[..., 0]
      else:
        confidence = np.stack([np.asarray(jax.random.uniform(k[1], (G,))) for k in keys])
      mask_index = x[:, P:] == mask_id
      in_block = np.zeros(G, bool)
      in_block[start - P:end - P] = True
      confidence = np.where(mask_index & in_block, confidence, -np.inf)
      for b in range(B):
        k = base[b] + (j < extra[b])
        chosen = np.argsort(-confidence[b], kind="stable")[:k]
        x[b, P + chosen] = x0[b, chosen]
        commit_step[b, chosen] = step
      step += 1
  return x, commit_step, canvases
