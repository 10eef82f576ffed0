"""A plain PyTorch LLaDA-layout transformer: the forward-pass reference of the benchmarks.

It computes the same function as `dllm_jax.models.make_denoise(config)` for a LLaDA-family config
(DESIGN.md §4): bidirectional attention with padding hidden on keys only, RMSNorm computed in
float32 then cast back and scaled, half-split ("rotate_half") RoPE in float32 at positions 0..L-1,
SwiGLU MLP, no biases, untied LM head, float32 logits. Weights come from the JAX parameter tree
(`init_params(config)` or a converted checkpoint) through `from_jax_params`.

Why not `transformers.LlamaForCausalLM` (tests/torch_ref/hf_reference.py)? Both call the same
oneDNN/MKL matmuls; this module adds no per-call mask construction, rotary caching objects or
output dataclasses, and attention goes straight to `scaled_dot_product_attention` (a fused kernel on
CPU). `experiments/bench_forward.py --reference=hf` times the `transformers` model instead, so the
choice can be checked; the faster of the two is the honest baseline.

Shape suffixes as in `dllm_jax.models.transformer`: B batch, L length, D width, N heads,
H head dim, F MLP width, V vocabulary.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dllm_jax.models.config import ModelConfig

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class RMSNorm(nn.Module):
  """x / rms(x) in float32, cast back to the input dtype, then scaled (LLaDA / HF-Llama order)."""

  def __init__(self, width: int, eps: float):
    super().__init__()
    self.weight = nn.Parameter(torch.ones(width))
    self.eps = eps

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x32 = x.float()
    normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
    return self.weight.to(x.dtype) * normed.to(x.dtype)


def rotary_tables(length: int, head_dim: int, theta: float,
                  device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
  """cos, sin [L, H/2] in float32 for positions 0..L-1."""
  half = head_dim // 2
  inv_freq = 1.0 / theta ** (torch.arange(half, dtype=torch.float32, device=device) / half)
  angles = torch.arange(length, dtype=torch.float32, device=device)[:, None] * inv_freq
  return torch.cos(angles), torch.sin(angles)


def apply_rotary(x_BNLH: torch.Tensor, cos_LH: torch.Tensor, sin_LH: torch.Tensor) -> torch.Tensor:
  """Rotates the two halves of each head in float32 (HF-Llama `rotate_half` layout)."""
  x1, x2 = x_BNLH.float().chunk(2, dim=-1)
  rotated = torch.cat([x1 * cos_LH - x2 * sin_LH, x2 * cos_LH + x1 * sin_LH], dim=-1)
  return rotated.to(x_BNLH.dtype)


class Block(nn.Module):
  """h = x + attn_out(attn(attn_norm(x))); y = h + ff_out(silu(ff_proj(n)) * up_proj(n))."""

  def __init__(self, config: ModelConfig):
    super().__init__()
    c = config
    self.num_heads, self.num_kv_heads, self.head_dim = c.num_heads, c.num_kv_heads, c.head_dim
    self.attn_norm = RMSNorm(c.hidden_size, c.norm_eps)
    self.q_proj = nn.Linear(c.hidden_size, c.num_heads * c.head_dim, bias=False)
    self.k_proj = nn.Linear(c.hidden_size, c.num_kv_heads * c.head_dim, bias=False)
    self.v_proj = nn.Linear(c.hidden_size, c.num_kv_heads * c.head_dim, bias=False)
    self.attn_out = nn.Linear(c.num_heads * c.head_dim, c.hidden_size, bias=False)
    self.ff_norm = RMSNorm(c.hidden_size, c.norm_eps)
    self.ff_proj = nn.Linear(c.hidden_size, c.mlp_hidden_size, bias=False)  # gate
    self.up_proj = nn.Linear(c.hidden_size, c.mlp_hidden_size, bias=False)
    self.ff_out = nn.Linear(c.mlp_hidden_size, c.hidden_size, bias=False)  # down

  def attention(self, x_BLD: torch.Tensor, cos_LH: torch.Tensor, sin_LH: torch.Tensor,
                key_mask_B11S: torch.Tensor | None) -> torch.Tensor:
    B, L, _ = x_BLD.shape
    q_BNLH = self.q_proj(x_BLD).view(B, L, self.num_heads, self.head_dim).transpose(1, 2)
    k_BKSH = self.k_proj(x_BLD).view(B, L, self.num_kv_heads, self.head_dim).transpose(1, 2)
    v_BKSH = self.v_proj(x_BLD).view(B, L, self.num_kv_heads, self.head_dim).transpose(1, 2)
    q_BNLH = apply_rotary(q_BNLH, cos_LH, sin_LH)
    k_BKSH = apply_rotary(k_BKSH, cos_LH, sin_LH)
    out_BNLH = F.scaled_dot_product_attention(
        q_BNLH, k_BKSH, v_BKSH, attn_mask=key_mask_B11S,
        enable_gqa=self.num_heads != self.num_kv_heads)
    return self.attn_out(out_BNLH.transpose(1, 2).reshape(B, L, -1))

  def forward(self, x_BLD: torch.Tensor, cos_LH: torch.Tensor, sin_LH: torch.Tensor,
              key_mask_B11S: torch.Tensor | None) -> torch.Tensor:
    h_BLD = x_BLD + self.attention(self.attn_norm(x_BLD), cos_LH, sin_LH, key_mask_B11S)
    n_BLD = self.ff_norm(h_BLD)
    return h_BLD + self.ff_out(F.silu(self.ff_proj(n_BLD)) * self.up_proj(n_BLD))


class LLaDATorch(nn.Module):
  """Token ids [B, L] and an optional key mask [B, L] (False = padding) in, float32 logits out."""

  def __init__(self, config: ModelConfig):
    super().__init__()
    if config.family != "llada" or config.qkv_bias:
      raise ValueError("LLaDATorch builds the LLaDA layout only (no biases, positions 0..L-1)")
    self.config = config
    self.wte = nn.Embedding(config.vocab_size, config.hidden_size)
    self.blocks = nn.ModuleList([Block(config) for _ in range(config.num_layers)])
    self.ln_f = RMSNorm(config.hidden_size, config.norm_eps)
    self.ff_out = nn.Linear(config.hidden_size, config.vocab_size, bias=False)  # LM head
    self._rotary: dict[tuple[int, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}

  def forward(self, tokens_BL: torch.Tensor, mask_BL: torch.Tensor | None = None) -> torch.Tensor:
    L, device = tokens_BL.shape[1], tokens_BL.device
    if (L, device) not in self._rotary:
      self._rotary[L, device] = rotary_tables(L, self.config.head_dim, self.config.rope_theta,
                                              device)
    cos_LH, sin_LH = self._rotary[L, device]
    # An all-True mask is dropped so SDPA can take its unmasked (fastest) kernel.
    key_mask_B11S = None
    if mask_BL is not None and not bool(mask_BL.all()):
      key_mask_B11S = mask_BL.bool()[:, None, None, :]
    x_BLD = self.wte(tokens_BL)
    for block in self.blocks:
      x_BLD = block(x_BLD, cos_LH, sin_LH, key_mask_B11S)
    return self.ff_out(self.ln_f(x_BLD)).float()


def state_dict_from_jax(params: dict[str, Any], config: ModelConfig,
                        tensor: Callable[..., torch.Tensor] | None = None
                        ) -> dict[str, torch.Tensor]:
  """The `LLaDATorch` state dict holding the weights of a JAX parameter tree (kernels transposed
  from JAX's [in, out] to PyTorch's [out, in]). `tensor(array, transpose)` makes each tensor;
  the default copies through host memory."""
  def host_copy(x: Any, transpose: bool = False) -> torch.Tensor:
    array = np.asarray(x)
    if array.dtype.name == "bfloat16":  # torch.from_numpy has no bfloat16
      return host_copy(array.astype(np.float32), transpose).bfloat16()
    # A copy: JAX buffers are read-only, and the model must not alias them.
    return torch.from_numpy(np.array(array.T if transpose else array, order="C", copy=True))

  tensor = tensor or host_copy
  state = {"wte.weight": tensor(params["embed"]["embedding"]),
           "ln_f.weight": tensor(params["final_norm"]["scale"]),
           "ff_out.weight": tensor(params["lm_head"]["kernel"], transpose=True)}
  names = {("attn", "q_proj"): "q_proj", ("attn", "k_proj"): "k_proj",
           ("attn", "v_proj"): "v_proj", ("attn", "o_proj"): "attn_out",
           ("mlp", "gate_proj"): "ff_proj", ("mlp", "up_proj"): "up_proj",
           ("mlp", "down_proj"): "ff_out"}
  for i in range(config.num_layers):
    layer = params["layers"][i]
    state[f"blocks.{i}.attn_norm.weight"] = tensor(layer["attn_norm"]["scale"])
    state[f"blocks.{i}.ff_norm.weight"] = tensor(layer["mlp_norm"]["scale"])
    for (group, name), torch_name in names.items():
      state[f"blocks.{i}.{torch_name}.weight"] = tensor(layer[group][name]["kernel"],
                                                         transpose=True)
  return state


def from_jax_params(config: ModelConfig, params: dict[str, Any],
                    dtype: str | torch.dtype = "float32") -> LLaDATorch:
  """An eval-mode `LLaDATorch` with the JAX weights, stored and computed in `dtype`."""
  dtype = TORCH_DTYPES[dtype] if isinstance(dtype, str) else dtype
  with torch.device("meta"):
    model = LLaDATorch(config)
  model.load_state_dict(state_dict_from_jax(params, config), strict=True, assign=True)
  return model.to(dtype).eval().requires_grad_(False)
