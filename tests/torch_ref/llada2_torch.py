"""A PyTorch reimplementation of LLaDA2.x (model and `generate`), written for these tests.

No PyPI package ships LLaDA2's modeling code (transformers 5.24 has no `llada2_moe`; its
`bailing_hybrid` is a different, linear-attention model), so this file re-implements, in plain
torch, what inclusionAI's `modeling_llada2_moe.py` (LLaDA2.0) and `modeling_llada21_moe.py`
(LLaDA2.1, whose generate adds token editing) compute, with the official parameter names, so
that its state dict *is* a checkpoint in the released key layout. It was checked against those
official files (fetched from the public ZHZisZZ/dllm repository, not committed), on tiny random
configs at float32, before being committed: identical chosen experts, logits within 1e-6 x
max|logit| (full canvases and block-causal masks), and identical tokens from `generate`
(2.0 threshold decoding and 2.1 editing; temperature 0). The MoE layer was later rewritten in
the official `moe_infer`'s form (slots sorted by expert, one host read of the counts per layer)
so that experiments/bench_accelerator.py times the official structure on a GPU; every module
takes the device of its inputs and `generate` runs on the model's device.

Official facts followed (where DESIGN.md §14's second-hand list is silent): the group score is
the sum of the two best *biased* scores; the attention output projection `dense` has a bias
unless `use_bias` is false; the router reads float32 activations; LLaDA2.0's generate commits
the high-confidence tokens only when there are at least as many as the schedule asks for, else
the scheduled number by confidence; blocks are aligned at position 0 of the prompt.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):

  def __init__(self, width: int, eps: float):
    super().__init__()
    self.weight = nn.Parameter(torch.ones(width))
    self.eps = eps

  def forward(self, x):
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
    return self.weight * x32.to(x.dtype)


class SwiGLU(nn.Module):

  def __init__(self, d: int, f: int):
    super().__init__()
    self.gate_proj = nn.Linear(d, f, bias=False)
    self.up_proj = nn.Linear(d, f, bias=False)
    self.down_proj = nn.Linear(f, d, bias=False)

  def forward(self, x):
    return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Gate(nn.Module):

  def __init__(self, cfg: dict):
    super().__init__()
    self.cfg = cfg
    self.weight = nn.Parameter(torch.randn(cfg["num_experts"], cfg["hidden_size"]) * 0.05)
    self.register_buffer("expert_bias", torch.zeros(cfg["num_experts"]))

  def forward(self, x_TD):
    c = self.cfg
    scores = torch.sigmoid(F.linear(x_TD.float(), self.weight.float()))
    biased = scores + self.expert_bias
    T, E = biased.shape
    groups = c["n_group"]
    group_score = biased.view(T, groups, E // groups).topk(2, dim=-1).values.sum(-1)
    keep_groups = group_score.topk(c["topk_group"], dim=-1).indices
    keep = torch.zeros(T, groups, dtype=torch.bool, device=x_TD.device)
    keep[torch.arange(T, device=x_TD.device)[:, None], keep_groups] = True
    keep = keep[:, :, None].expand(T, groups, E // groups).reshape(T, E)
    chosen = biased.masked_fill(~keep, float("-inf")).topk(c["num_experts_per_tok"], dim=-1).indices
    weights = scores.gather(1, chosen)
    if c["num_experts_per_tok"] > 1:
      weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)
    return chosen, weights * c["routed_scaling_factor"]


class SparseMoe(nn.Module):

  def __init__(self, cfg: dict):
    super().__init__()
    d, f = cfg["hidden_size"], cfg["moe_intermediate_size"]
    self.gate = Gate(cfg)
    self.experts = nn.ModuleList(SwiGLU(d, f) for _ in range(cfg["num_experts"]))
    self.shared_experts = SwiGLU(d, f * cfg["num_shared_experts"])

  def forward(self, x_BLD):
    """As the official `moe_infer`: the (token, slot) pairs sorted by expert, the counts read on
    the host once per layer, each expert with tokens run on its rows (a Python loop), the outputs
    put back in slot order and summed with the routing weights in float32."""
    B, L, D = x_BLD.shape
    x_TD = x_BLD.reshape(-1, D)
    chosen, weights = self.gate(x_TD)
    T, k = chosen.shape
    order = chosen.view(-1).argsort()
    counts = torch.bincount(chosen.view(-1), minlength=len(self.experts)).tolist()
    rows = x_TD[order // k]
    outs, start = [], 0
    for e, n in enumerate(counts):
      if n:
        outs.append(self.experts[e](rows[start:start + n]))
        start += n
    y_SD = torch.empty_like(rows)
    y_SD[order] = torch.cat(outs)
    out = (y_SD.view(T, k, D).float() * weights[..., None]).sum(1)
    y = out.to(x_TD.dtype) + self.shared_experts(x_TD)
    return y.view(B, L, D), chosen.view(B, L, -1)


def _rotate(x, positions, theta, rotary_dim):
  """Half-split RoPE on the first `rotary_dim` dims of [B, N, L, H]."""
  half = rotary_dim // 2
  exponents = torch.arange(0, rotary_dim, 2, device=x.device).float() / rotary_dim
  inv_freq = 1.0 / theta ** exponents
  angles = positions.float()[:, None, :, None] * inv_freq
  cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)  # as the official code
  turned, passed = x[..., :rotary_dim], x[..., rotary_dim:]
  a, b = turned[..., :half], turned[..., half:]
  rotated = torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1)
  return torch.cat([rotated, passed], dim=-1)


class Attention(nn.Module):

  def __init__(self, cfg: dict):
    super().__init__()
    self.cfg = cfg
    d, n, k, h = (cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"],
                  cfg["head_dim"])
    self.query_key_value = nn.Linear(d, (n + 2 * k) * h, bias=cfg.get("use_qkv_bias", False))
    self.query_layernorm = RMSNorm(h, cfg["rms_norm_eps"])
    self.key_layernorm = RMSNorm(h, cfg["rms_norm_eps"])
    self.dense = nn.Linear(n * h, d, bias=cfg.get("use_bias", True))

  def forward(self, x, positions, additive_mask):
    c = self.cfg
    B, L, _ = x.shape
    n, k, h = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
    q, kk, v = self.query_key_value(x).view(B, L, n + 2 * k, h).split([n, k, k], dim=2)
    q = self.query_layernorm(q.transpose(1, 2))
    kk = self.key_layernorm(kk.transpose(1, 2))
    v = v.transpose(1, 2)
    rotary_dim = int(h * c.get("partial_rotary_factor", 1.0))
    q, kk = (_rotate(t, positions, c["rope_theta"], rotary_dim) for t in (q, kk))
    kk, v = kk.repeat_interleave(n // k, dim=1), v.repeat_interleave(n // k, dim=1)
    scores = q @ kk.transpose(2, 3) / math.sqrt(h) + additive_mask
    out = scores.softmax(-1, dtype=torch.float32).to(q.dtype) @ v
    return self.dense(out.transpose(1, 2).reshape(B, L, n * h))


class Layer(nn.Module):

  def __init__(self, cfg: dict, index: int):
    super().__init__()
    self.input_layernorm = RMSNorm(cfg["hidden_size"], cfg["rms_norm_eps"])
    self.attention = Attention(cfg)
    self.post_attention_layernorm = RMSNorm(cfg["hidden_size"], cfg["rms_norm_eps"])
    dense = index < cfg["first_k_dense_replace"]
    self.mlp = (SwiGLU(cfg["hidden_size"], cfg["intermediate_size"]) if dense
                else SparseMoe(cfg))

  def forward(self, x, positions, additive_mask):
    h = x + self.attention(self.input_layernorm(x), positions, additive_mask)
    out = self.mlp(self.post_attention_layernorm(h))
    chosen = None
    if isinstance(out, tuple):
      out, chosen = out
    return h + out, chosen


class _Inner(nn.Module):

  def __init__(self, cfg: dict):
    super().__init__()
    self.word_embeddings = nn.Embedding(cfg["vocab_size"], cfg["hidden_size"])
    self.layers = nn.ModuleList(Layer(cfg, i) for i in range(cfg["num_hidden_layers"]))
    self.norm = RMSNorm(cfg["hidden_size"], cfg["rms_norm_eps"])


class LLaDA2(nn.Module):
  """LLaDA2MoeModelLM's function; the state dict keys are the released checkpoint's."""

  def __init__(self, cfg: dict):
    super().__init__()
    self.cfg = cfg
    self.model = _Inner(cfg)
    self.lm_head = nn.Linear(cfg["hidden_size"], cfg["vocab_size"], bias=False)

  @torch.no_grad()
  def forward(self, tokens, positions, visible):
    """Float32 logits [B, L, V] and the chosen experts [B, L, k] of each MoE layer; `visible`
    is a boolean [B, L, L] (query, key) mask."""
    additive = torch.zeros(visible.shape, dtype=torch.float32, device=visible.device).masked_fill(
        ~visible, torch.finfo(torch.float32).min)[:, None]
    x = self.model.word_embeddings(tokens)
    chosen = []
    for layer in self.model.layers:
      x, c = layer(x, positions, additive)
      if c is not None:
        chosen.append(c)
    return self.lm_head(self.model.norm(x)).float(), chosen


def block_causal(positions, valid, block: int, merged: tuple[int, int] | None = None):
  """[B, L, L]: key j visible to query i iff block(j) <= block(i) and j is real (+ self); the
  positions in `merged` = [lo, hi) also see each other (one block)."""
  blk = positions // block
  visible = (blk[:, None, :] <= blk[:, :, None]) & valid[:, None, :]
  if merged is not None:
    inside = (positions[0] >= merged[0]) & (positions[0] < merged[1])
    visible = visible | ((inside[:, None] & inside[None, :])[None] & valid[:, None, :])
  return visible | torch.eye(positions.shape[1], dtype=torch.bool, device=positions.device)[None]


def _schedule(block_length: int, steps: int) -> list[int]:
  base, rem = divmod(block_length, steps)
  return [base + (i < rem) for i in range(steps)]


@torch.no_grad()
def generate(model: LLaDA2, prompt: list[int], *, gen_length: int, block_length: int = 32,
             steps: int = 32, threshold: float = 0.95, mask_id: int, eos_id: int,
             editing_threshold: float | None = None, max_post_steps: int = 16,
             num_to_transfer: int = 1, reopened_blocks: int = 0) -> tuple[list[int], int]:
  """The official generate at temperature 0 for one prompt, recomputing the canvas each step:
  LLaDA2.0's (threshold with the scheduled fallback; stops after the block holding an EOS) or,
  with `editing_threshold`, LLaDA2.1's (one committed token minimum per step, plus edits of
  committed tokens; decodes every block). Returns the tokens after the prompt up to and
  including the first EOS, and the number of forward passes. Runs on the model's device.

  `reopened_blocks` > 0 is not official code (no public implementation of LLaDA2.1's Multiple
  Block Editing was found): it is this project's definition, written plainly as the test
  reference of `BlockDiffusion.reopened_blocks`: every step runs the canvas up to the current
  block with the current block and the `reopened_blocks` decoded blocks before it attending as
  one block, and edits committed, non-prompt tokens anywhere in those blocks (in the earlier
  blocks never to the mask token)."""
  device = next(model.parameters()).device
  P = len(prompt)
  num_blocks = (P + gen_length + block_length - 1) // block_length
  total = num_blocks * block_length
  x = torch.full((1, total), mask_id, dtype=torch.long, device=device)
  x[0, :P] = torch.tensor(prompt, device=device)
  positions = torch.arange(total, device=device)[None]
  visible_all = block_causal(positions, torch.ones(1, total, dtype=torch.bool, device=device),
                             block_length)
  schedule = _schedule(block_length, min(steps, gen_length))
  forwards = 0
  first = P // block_length
  for b in range(first, num_blocks):
    end = (b + 1) * block_length
    start = end - block_length
    lo = max(b - reopened_blocks, first) * block_length  # the window's first position
    visible = visible_all if lo == start else block_causal(
        positions, torch.ones(1, total, dtype=torch.bool, device=device), block_length,
        (lo, end))
    fixed = torch.arange(lo, end, device=device) < P  # prompt positions inside the window
    step, post = 0, 0
    while True:
      window_old = x[0, lo:end].clone()
      old = window_old[start - lo:]
      masked = old == mask_id
      if editing_threshold is None:
        if not masked.any() or step >= len(schedule):
          break
      else:
        post += int(not masked.any())
        if post > max_post_steps:
          break
      logits = model(x[:, :end], positions[:, :end], visible[:, :end, :end])[0][0, lo:end]
      forwards += 1
      window_p, window_x0 = logits.softmax(-1).max(-1)
      x0_p, x0 = window_p[start - lo:], window_x0[start - lo:]
      n = schedule[step] if editing_threshold is None else num_to_transfer
      commit = torch.zeros(block_length, dtype=torch.bool, device=device)
      if masked.any():
        confidence = torch.where(masked, x0_p, -float("inf"))
        high = (confidence > threshold) & masked
        if int(high.sum()) >= n:
          commit = high
        else:
          commit[confidence.topk(min(n, int(masked.sum()))).indices] = True
      edit = torch.zeros(end - lo, dtype=torch.bool, device=device)
      if editing_threshold is not None:
        editable = (window_old != mask_id) & ~fixed
        editable[:start - lo] &= window_x0[:start - lo] != mask_id  # re-opened: never to a mask
        edit = editable & (window_p > editing_threshold) & (window_x0 != window_old)
      commit = torch.cat([torch.zeros(start - lo, dtype=torch.bool, device=device), commit])
      x[0, lo:end] = torch.where(commit | edit, window_x0, window_old)
      step += 1
      if editing_threshold is not None and not masked.any() and not edit.any():
        break
    generated = x[0, P:end]
    if editing_threshold is None and (generated == eos_id).any():
      break
  out = x[0, P:P + gen_length].tolist()
  if eos_id in out:
    out = out[:out.index(eos_id) + 1]
  return out, forwards
