"""Forward-pass throughput of the JAX model against the PyTorch reference on the same weights.

Both sides run the same function (tests/torch_ref/test_llada_torch.py checks the logits at
float32) on the same tokens, batch, length and dtype. JAX is `jax.jit(make_denoise(config))`,
compiled ahead of time (compile time reported on its own); PyTorch is eager under
`torch.inference_mode`, either `LLaDATorch` (default) or `transformers.LlamaForCausalLM` with SDPA
attention and a 4-D all-visible mask (`reference="hf"`).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import torch

from dllm_jax import models
from dllm_jax.models import ModelConfig, hf_layout
from dllm_jax.models.config import to_hf_config
from experiments import benchlib
from tests.torch_ref import llada_torch

REFERENCES = ("llada_torch", "hf")


def _hf_forward(config: ModelConfig, params: models.Params,
                dtype: torch.dtype) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
  """`transformers` Llama (bidirectional through a 4-D mask) with SDPA attention."""
  from tests.torch_ref import hf_reference  # pylint: disable=import-outside-toplevel
  tensors = dict(hf_layout.hf_tensors(params, config))
  model = hf_reference.reference_model(to_hf_config(config), tensors)
  model.set_attn_implementation("sdpa")
  model = model.to(dtype).requires_grad_(False)

  def forward(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    B, L = tokens.shape
    additive = torch.zeros(B, 1, L, L, dtype=dtype).masked_fill(
        ~mask[:, None, None, :], torch.finfo(dtype).min)
    return model(input_ids=tokens, attention_mask=additive).logits.float()

  return forward


def torch_forward(config: ModelConfig, params: models.Params, dtype: str,
                  reference: str = "llada_torch"):
  """A callable (tokens, mask) -> float32 logits running the PyTorch reference in `dtype`."""
  if reference == "hf":
    return _hf_forward(config, params, llada_torch.TORCH_DTYPES[dtype])
  if reference != "llada_torch":
    raise ValueError(f"reference must be one of {REFERENCES}, got {reference!r}")
  return llada_torch.from_jax_params(config, params, dtype)


def run_setting(config: ModelConfig, params: models.Params, torch_fn, batch: int, length: int,
                repeats: int, warmup: int, peak_gflops: float) -> dict[str, Any]:
  """Times one (batch, length) on both sides; `params` and `torch_fn` are already in the dtype."""
  rng = np.random.default_rng(batch * 100003 + length)
  tokens = rng.integers(0, config.vocab_size - 3, (batch, length)).astype(np.int32)
  mask = np.ones((batch, length), bool)
  denoise = jax.jit(models.make_denoise(config))
  compiled, compile_s = benchlib.timed(lambda: denoise.lower(params, tokens, mask).compile())
  tokens_t, mask_t = torch.from_numpy(tokens).long(), torch.from_numpy(mask)

  def run_torch():
    with torch.inference_mode():
      torch_fn(tokens_t, mask_t)

  times = benchlib.time_interleaved(
      {"jax": lambda: compiled(params, tokens, mask).block_until_ready(), "torch": run_torch},
      repeats, warmup)
  flops = benchlib.forward_flops(config, batch, length)
  row: dict[str, Any] = {"batch": batch, "length": length, "dtype": config.dtype,
                         "jax_compile_s": compile_s, "flops": flops}
  for side in ("jax", "torch"):
    t = times[side]
    row[side] = {**t, "tokens_per_s_median": batch * length / t["median_s"],
                 "tokens_per_s_best": batch * length / t["best_s"],
                 "peak_fraction_best": flops / t["best_s"] / 1e9 / peak_gflops}
  row["speed_ratio_median"] = times["torch"]["median_s"] / times["jax"]["median_s"]
  row["speed_ratio_best"] = times["torch"]["best_s"] / times["jax"]["best_s"]
  return row


def run(config: ModelConfig, plan: dict[str, list[tuple[int, int]]], repeats: int, warmup: int,
        reference: str, peak_gflops: float, seed: int = 0) -> list[dict[str, Any]]:
  """Every (batch, length) setting of every dtype in `plan`, one model built per dtype."""
  rows = []
  params32 = models.init_params(config.replace(dtype="float32", param_dtype="float32"), seed)
  for dtype, settings in plan.items():
    if not settings:
      continue
    cfg = config.replace(dtype=dtype, param_dtype=dtype)
    params = models.cast_params(params32, jnp.dtype(dtype))
    torch_fn = torch_forward(cfg, params, dtype, reference)
    for batch, length in settings:
      row = run_setting(cfg, params, torch_fn, batch, length, repeats, warmup, peak_gflops)
      print(f"  {dtype} B={batch} L={length}: jax {row['jax']['median_s'] * 1e3:.0f} ms, "
            f"torch {row['torch']['median_s'] * 1e3:.0f} ms (median)", flush=True)
      rows.append(row)
    del torch_fn
  return rows


def table(rows: list[dict[str, Any]]) -> str:
  headers = ["B x L", "dtype", "JAX ms med / best", "torch ms med / best", "JAX tok/s (best)",
             "torch tok/s (best)", "JAX/torch speed med", "JAX/torch speed best",
             "JAX % peak", "torch % peak", "JAX compile s"]
  body = []
  for r in rows:
    j, t = r["jax"], r["torch"]
    body.append([f"{r['batch']} x {r['length']}", r["dtype"],
                 f"{j['median_s'] * 1e3:.0f} / {j['best_s'] * 1e3:.0f}",
                 f"{t['median_s'] * 1e3:.0f} / {t['best_s'] * 1e3:.0f}",
                 j["tokens_per_s_best"], t["tokens_per_s_best"],
                 f"{r['speed_ratio_median']:.2f}x", f"{r['speed_ratio_best']:.2f}x",
                 f"{100 * j['peak_fraction_best']:.0f}%", f"{100 * t['peak_fraction_best']:.0f}%",
                 r["jax_compile_s"]])
  return benchlib.markdown_table(headers, body)
