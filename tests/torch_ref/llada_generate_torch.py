"""LLaDA's reference `generate` (DESIGN.md §5) as a PyTorch eager loop: the sampling baseline.

Semantics follow LLaDA's `generate.py`: canvas = prompt + gen_length masks; the generated part is
decoded in blocks of `block_length`, left to right; `steps` are split evenly over the blocks; a
block of n masks over s steps commits n // s tokens per step plus one in the first n % s steps.
Each step runs one forward pass; temperature uses LLaDA's Gumbel-max form in float64,
x0 = argmax(exp(logits) / (-log u)**T) (T = 0 is argmax); the confidence is the clean softmax
probability of x0 (`low_confidence`) or U(0, 1) (`random`); positions outside the current block
get -inf; each row commits its top-k confidences. Classifier-free guidance: the unconditional canvas
masks the prompt and logits = un + (cfg_scale + 1) * (cond - un). `logits_eos_inf` and
`confidence_eos_eot_inf` are LLaDA's two EOS options.

Two deliberate differences from LLaDA's code, both so the loop matches `dllm_jax.sampling` and
neither makes it slower:
  - the mask token's logit is set to -inf (`forbid_mask=True`), as the library does: committing a
    mask token would leave the position masked;
  - noise, softmax and selection run on the generated region [P:] only. LLaDA's code applies them
    to the whole canvas and then discards the prompt part; restricting them does less work and
    gives the same tokens, so the benchmark's PyTorch baseline is, if anything, faster than the
    original.
`model(tokens_BL, attention_mask_BL) -> logits_BLV` is any callable (e.g. `LLaDATorch`).
"""

from __future__ import annotations

from typing import Callable

import torch

ModelFn = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]


def add_gumbel_noise(logits: torch.Tensor, temperature: float,
                     generator: torch.Generator | None = None) -> torch.Tensor:
  """LLaDA's Gumbel-max trick in float64: argmax of the result samples softmax(logits / T)."""
  if temperature == 0:
    return logits
  logits = logits.to(torch.float64)
  noise = torch.rand(logits.shape, dtype=torch.float64, generator=generator, device=logits.device)
  gumbel_noise = (-torch.log(noise)) ** temperature
  return logits.exp() / gumbel_noise


def get_num_transfer_tokens(block_mask_index: torch.Tensor, steps: int) -> torch.Tensor:
  """[B, steps]: n // steps tokens per step, one more in the first n % steps steps."""
  mask_num = block_mask_index.sum(dim=1, keepdim=True)
  base, remainder = mask_num // steps, mask_num % steps
  counts = base.expand(-1, steps).clone()
  counts += torch.arange(steps, device=counts.device)[None, :] < remainder
  return counts


@torch.no_grad()
def generate(model: ModelFn, prompt: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
             steps: int = 128, gen_length: int = 128, block_length: int = 128,
             temperature: float = 0.0, cfg_scale: float = 0.0,
             remasking: str = "low_confidence", mask_id: int = 126336,
             eos_id: int = 126081, eot_id: int = 126348, logits_eos_inf: bool = False,
             confidence_eos_eot_inf: bool = False, forbid_mask: bool = True,
             generator: torch.Generator | None = None) -> torch.Tensor:
  """Returns the final canvas [B, P + gen_length] (prompt left-padded; mask False = padding),
  on the prompt's device (a CUDA prompt decodes on the GPU; `generator` must live there too)."""
  B, P = prompt.shape
  device = prompt.device
  x = torch.full((B, P + gen_length), mask_id, dtype=torch.long, device=device)
  x[:, :P] = prompt
  if attention_mask is not None:
    attention_mask = torch.cat(
        [attention_mask.bool(), torch.ones(B, gen_length, dtype=torch.bool, device=device)], dim=1)
  prompt_index = torch.zeros_like(x, dtype=torch.bool)
  prompt_index[:, :P] = True if attention_mask is None else attention_mask[:, :P]
  if gen_length % block_length:
    raise ValueError(f"gen_length {gen_length} is not a multiple of block_length {block_length}")
  num_blocks = gen_length // block_length
  if steps % num_blocks:
    raise ValueError(f"steps {steps} is not a multiple of the number of blocks {num_blocks}")
  steps_per_block = steps // num_blocks
  forbidden = ([mask_id] if forbid_mask else []) + ([eos_id] if logits_eos_inf else [])

  for block in range(num_blocks):
    start, end = block * block_length, (block + 1) * block_length  # in the generated region
    block_mask_index = x[:, P + start:P + end] == mask_id
    num_transfer_tokens = get_num_transfer_tokens(block_mask_index, steps_per_block)
    for i in range(steps_per_block):
      if cfg_scale > 0:
        un_x = x.masked_fill(prompt_index, mask_id)
        mask2 = None if attention_mask is None else torch.cat([attention_mask, attention_mask])
        cond, un = model(torch.cat([x, un_x]), mask2).chunk(2)
        logits = un + (cfg_scale + 1) * (cond - un)
      else:
        logits = model(x, attention_mask)
      logits = logits[:, P:]
      if forbidden:
        logits[:, :, forbidden] = -torch.inf
      logits_with_noise = add_gumbel_noise(logits, temperature, generator)
      x0 = torch.argmax(logits_with_noise, dim=-1)
      if remasking == "low_confidence":
        x0_p = torch.softmax(logits, dim=-1).gather(-1, x0[..., None])[..., 0]
      elif remasking == "random":
        x0_p = torch.rand(x0.shape, generator=generator, device=device)
      else:
        raise NotImplementedError(remasking)
      if confidence_eos_eot_inf:
        x0_p = x0_p.masked_fill((x0 == eos_id) | (x0 == eot_id), -torch.inf)
      x0_p[:, end:] = -torch.inf
      mask_index = x[:, P:] == mask_id
      confidence = torch.where(mask_index, x0_p, -torch.inf)
      transfer_index = torch.zeros_like(mask_index)
      for j in range(B):
        _, select_index = torch.topk(confidence[j], k=int(num_transfer_tokens[j, i]))
        transfer_index[j, select_index] = True
      x[:, P:][transfer_index] = x0[transfer_index]
  return x
