"""Tencent's WeDLM streaming decoder, ported line by line to plain Python + PyTorch (one row).

The reference the compiled `dllm_jax.sampling.streaming` decoder is tested against. Every rule
names the file and lines of Tencent/WeDLM (commit 0216110f24697d425eeea1c04b68fbbb1b3deb13)
it follows; the code is written here, not copied. The engine's KV cache, block tables and
scheduler are replaced by recomputing each forward from scratch over [prompt, committed prefix,
reordered window] with `transformers`' Qwen3 / Qwen2 causal LM, which is what the cached forward
computes (`wedlm/engine/model_runner.py:_wedlm_decode_one_step`, lines 449-496: one forward of the
window against the cache per step). The memory budget is taken as unlimited
(`seq.kv_budget` >= 2W, `wedlm/engine/block_manager.py:133-151`), as it is on a GPU with room.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F


@dataclasses.dataclass
class Settings:
  """`wedlm/sampling_params.py:19-50` (per-request) and the window size of `wedlm/config.py`."""
  window: int = 16                        # wedlm_window_size
  entropy_threshold: float | None = 0.4   # wedlm_entropy_threshold
  position_penalty: float = 0.02          # wedlm_pos_penalty_factor
  temperature: float = 0.0
  top_p: float = 1.0
  top_k: int = 0
  max_tokens: int = 64
  stop_token_ids: tuple[int, ...] = ()


# ---- wedlm/engine/sampler.py -------------------------------------------------------------------

def compute_entropy(logits: torch.Tensor) -> torch.Tensor:
  # sampler.py:49-61: entropy of Categorical(logits=raw logits), the [MASK] logit included
  return torch.distributions.Categorical(logits=logits).entropy()


def apply_top_k(logits: torch.Tensor, top_k: int) -> torch.Tensor:
  # sampler.py:63-86: 0 means none; below the k-th largest value -> -inf (ties kept)
  if top_k <= 0:
    return logits
  kth = torch.topk(logits, min(top_k, logits.size(-1)), dim=-1).values[..., -1:]
  return logits.masked_fill(logits < kth, float("-inf"))


def apply_top_p(logits: torch.Tensor, top_p: float) -> torch.Tensor:
  # sampler.py:88-121: sort descending, drop a token when the cumulative probability up to the
  # token before it exceeds top_p (the first token always stays)
  if top_p >= 1.0:
    return logits
  ordered, order = torch.sort(logits, descending=True, dim=-1)
  cumulative = torch.cumsum(F.softmax(ordered, dim=-1), dim=-1)
  drop_sorted = torch.zeros_like(cumulative, dtype=torch.bool)
  drop_sorted[..., 1:] = cumulative[..., :-1] > top_p
  drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
  return logits.masked_fill(drop, float("-inf"))


def token_law(logits: torch.Tensor, settings: Settings) -> torch.Tensor:
  """The distribution `sample_tokens` draws from at temperature > 0 (sampler.py:156-165): top-k,
  then top-p, on the untempered logits, then softmax(filtered / temperature)."""
  filtered = apply_top_p(apply_top_k(logits, settings.top_k), settings.top_p)
  return F.softmax(filtered / settings.temperature, dim=-1)


def sample_tokens(logits: torch.Tensor, settings: Settings,
                  generator: torch.Generator | None) -> torch.Tensor:
  # sampler.py:123-167: greedy at temperature 0 (argmax of the softmax over the whole vocabulary,
  # [MASK] included), else one multinomial draw from `token_law`
  if settings.temperature == 0:
    return F.softmax(logits, dim=-1).argmax(dim=-1)
  return torch.multinomial(token_law(logits, settings), 1, generator=generator).squeeze(-1)


def select_positions_to_fill(entropy: torch.Tensor, remaining_mask_indices: list[int],
                             settings: Settings) -> list[int]:
  # sampler.py:169-222: H~ = entropy + factor * (window index - first mask's window index);
  # with a threshold, every position with H~ < threshold if there is one; else the argmin
  # (the first on ties)
  indices = torch.tensor(remaining_mask_indices, dtype=torch.float)
  adjusted = entropy + (indices - indices[0]) * settings.position_penalty
  if settings.entropy_threshold is not None:
    below = (adjusted < settings.entropy_threshold).nonzero(as_tuple=True)[0]
    if below.numel() > 0:
      return below.tolist()
  return [int(adjusted.argmin().item())]


def process_mask_positions(mask_logits, remaining_mask_indices, settings, generator):
  # sampler.py:224-274: entropies, draws for every mask, then the positions; returns indices
  # into `remaining_mask_indices` and their tokens
  entropy = compute_entropy(mask_logits)
  sampled = sample_tokens(mask_logits, settings, generator)
  fill = select_positions_to_fill(entropy, remaining_mask_indices, settings)
  return fill, [int(sampled[k].item()) for k in fill]


# ---- wedlm/engine/wedlm_decoder.py -------------------------------------------------------------

@dataclasses.dataclass
class Trace:
  tokens: list[int]          # the committed (returned) tokens
  forwards: int              # decode forwards run for this row (prefill not counted)
  fill_step: list[int]       # per committed token: the forward after which it was filled
  fills_per_step: list[int]  # positions filled after each forward


def window_forward(model, prefix: list[int], window_tokens: list[int], flags: list[bool]
                   ) -> tuple[torch.Tensor, int]:
  """Logits of the window in Tencent's order (non-mask slots first, then masks, each in window
  order; `_prepare_window_inputs`, wedlm_decoder.py:211-250) and the number of non-mask slots.
  The prefix (the KV cache, causal in logical order) is recomputed: causal attention in this
  physical order with every token at its logical position."""
  order = ([i for i, masked in enumerate(flags) if not masked]
           + [i for i, masked in enumerate(flags) if masked])
  n = len(prefix)
  tokens = prefix + [window_tokens[i] for i in order]
  positions = list(range(n)) + [n + i for i in order]
  with torch.no_grad():
    logits = model(input_ids=torch.tensor([tokens]), position_ids=torch.tensor([positions])
                   ).logits[0, n:]
  return logits, sum(not masked for masked in flags)


def decode(model, prompt: list[int], mask_id: int, settings: Settings,
           generator: torch.Generator | None = None) -> Trace:
  # init_wedlm_state, wedlm_decoder.py:106-126: a window of W masks (kv_budget >= W)
  window = [mask_id] * settings.window
  flags = [True] * settings.window          # True: mask
  filled_at = [-1] * settings.window        # bookkeeping for the test: fill step per slot
  current_seq_len = len(prompt)             # committed length, prompt included
  committed: list[int] = []
  trace = Trace([], 0, [], [])
  finished = False
  while not finished:
    # prepare_decode_inputs -> _refill_window_masks, wedlm_decoder.py:167-189 and 269-274:
    # as many new masks as the leftmost filled run is long
    mask_indices = [i for i, masked in enumerate(flags) if masked]
    prefix_len = mask_indices[0] if mask_indices else len(window)
    window += [mask_id] * prefix_len
    flags += [True] * prefix_len
    filled_at += [-1] * prefix_len
    # one forward (model_runner.py:489-490) over the W + prefix_len slots
    logits, num_non_mask = window_forward(model, prompt + committed, window, flags)
    step = trace.forwards
    trace.forwards += 1
    # process_decode_outputs, wedlm_decoder.py:438-445: prune the leftmost filled run
    mask_indices = [i for i, masked in enumerate(flags) if masked]
    prune_count = mask_indices[0] if mask_indices else len(window)
    # _process_pruned_tokens, wedlm_decoder.py:354-389: each token in turn; a stop token ends
    # the row after itself, so does the max_tokens-th generated token
    for k in range(prune_count):
      t = window[k]
      current_seq_len += 1
      committed.append(t)
      trace.fill_step.append(filled_at[k])
      if t in settings.stop_token_ids:
        finished = True
        break
      if current_seq_len - len(prompt) >= settings.max_tokens:
        finished = True
        break
    if finished:
      break
    window, flags, filled_at = (window[prune_count:], flags[prune_count:],
                                filled_at[prune_count:])
    # wedlm_decoder.py:447-474: the masks left in the window, scored on this forward's logits
    # (the masks' logits follow the non-mask ones, in window order)
    remaining = [i for i, masked in enumerate(flags) if masked]
    mask_logits = logits[num_non_mask:]
    fill, tokens = process_mask_positions(mask_logits, remaining, settings, generator)
    for k, token in zip(fill, tokens):
      window[remaining[k]] = token
      flags[remaining[k]] = False
      filled_at[remaining[k]] = step
    trace.fills_per_step.append(len(fill))
  trace.tokens = committed
  return trace
