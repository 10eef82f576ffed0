"""Shared pieces of the benchmark scripts: interleaved timing, the machine's matmul peak, model
FLOPs, markdown tables and JSON reports.

Timing rules (the machines are shared and noisy): every contender gets warm-up calls, then the
contenders are called in alternating order (A B, B A, A B, ...) so drifting background load hits
both alike; each reports the median and the best (minimum) of its repeats. The best time is the
closest estimate of what the code can do; the median is what a user saw during the run. The
system load average is recorded beside every measurement.
"""

from __future__ import annotations

import json
import os
import pathlib
import platform
import statistics
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dllm_jax.models import ModelConfig


def time_interleaved(fns: dict[str, Callable[[], Any]], repeats: int,
                     warmup: int = 1, untimed_before: int = 0) -> dict[str, dict[str, Any]]:
  """Seconds per call of each function, called alternately; each must block until done.
  `untimed_before` calls of the same function precede each timed call, so that a short call is
  not timed on the caches that the previous function left."""
  for _ in range(warmup):
    for fn in fns.values():
      fn()
  samples: dict[str, list[float]] = {name: [] for name in fns}
  load_before = os.getloadavg()[0]
  for r in range(repeats):
    order = list(fns.items())
    if r % 2:
      order.reverse()
    for name, fn in order:
      for _ in range(untimed_before):
        fn()
      start = time.perf_counter()
      fn()
      samples[name].append(time.perf_counter() - start)
  load = (load_before + os.getloadavg()[0]) / 2
  return {name: {"median_s": statistics.median(s), "best_s": min(s), "samples_s": s,
                 "load_avg": load} for name, s in samples.items()}


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
  start = time.perf_counter()
  result = fn()
  return result, time.perf_counter() - start


def matmul_peak(n: int = 2048, repeats: int = 5) -> dict[str, float]:
  """Float32 GFLOP/s of an n x n x n matmul in JAX, numpy and torch (best of `repeats`); 'peak'
  is the best of the three."""
  import torch  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  a = rng.standard_normal((n, n), dtype=np.float32)
  b = rng.standard_normal((n, n), dtype=np.float32)
  a_j, b_j = jnp.asarray(a), jnp.asarray(b)
  a_t, b_t = torch.from_numpy(a), torch.from_numpy(b)
  matmul_j = jax.jit(jnp.matmul)
  fns = {"jax": lambda: matmul_j(a_j, b_j).block_until_ready(),
         "numpy": lambda: a @ b,
         "torch": lambda: torch.mm(a_t, b_t)}
  times = time_interleaved(fns, repeats, warmup=1)
  flops = 2.0 * n ** 3
  result = {f"{name}_gflops": flops / t["best_s"] / 1e9 for name, t in times.items()}
  result["peak_gflops"] = max(result.values())
  result["n"] = n
  return result


def matmul_params(config: ModelConfig, active: bool = False) -> int:
  """Parameters that take part in matmuls: every projection and the LM head (not the embedding
  table, which is a gather, nor the norm scales). A mixture of experts (LLaDA2.x) counts its
  router, shared experts and every routed expert, or with `active` only the `experts_per_token`
  routed experts one token goes through."""
  c = config
  attn = c.hidden_size * c.head_dim * (2 * c.num_heads + 2 * c.num_kv_heads)
  mlp = 3 * c.hidden_size * c.mlp_hidden_size
  moe_layers = sum(map(c.is_moe_layer, range(c.num_layers)))
  routed = c.experts_per_token if active else c.num_experts
  moe = c.hidden_size * (c.num_experts
                         + 3 * c.expert_hidden_size * (routed + c.num_shared_experts))
  return (c.num_layers * attn + (c.num_layers - moe_layers) * mlp + moe_layers * moe
          + c.hidden_size * c.vocab_size)


def forward_flops(config: ModelConfig, batch: int, length: int,
                  logit_positions: int | None = None) -> float:
  """Model FLOPs of one forward pass: 2 x matmul params per token (a mixture of experts: the
  active ones, `matmul_params(active=True)`) + attention (QK^T and PV, 4 x L x heads x head_dim
  per token and layer), with the LM head applied at `logit_positions` of the L positions
  (default: all)."""
  c = config
  head = c.hidden_size * c.vocab_size
  per_token = (2 * (matmul_params(c, active=True) - head)
               + 4 * length * c.num_heads * c.head_dim * c.num_layers)
  logit_positions = length if logit_positions is None else logit_positions
  return float(per_token * length + 2 * head * logit_positions) * batch


def machine_info() -> dict[str, Any]:
  import torch  # pylint: disable=import-outside-toplevel
  cpu = ""
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        cpu = line.split(":", 1)[1].strip()
        break
  except OSError:
    pass
  return {"cpu": cpu, "cpu_count": os.cpu_count(), "platform": platform.platform(),
          "python": platform.python_version(), "jax": jax.__version__,
          "jax_backend": jax.default_backend(), "torch": torch.__version__,
          "torch_threads": torch.get_num_threads(), "load_avg_start": os.getloadavg()}


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  def cell(value: Any) -> str:
    if isinstance(value, float):
      return f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)

  lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
  lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
  return "\n".join(lines)


def write_json(path: str | os.PathLike | None, payload: dict[str, Any]) -> None:
  if not path:
    return
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(payload, indent=2, default=str))
  print(f"wrote {path}")


def parse_settings(text: str) -> list[tuple[int, int]]:
  """'1x256,8x256' -> [(1, 256), (8, 256)] (batch x length)."""
  settings = []
  for item in filter(None, text.split(",")):
    batch, length = item.lower().split("x")
    settings.append((int(batch), int(length)))
  return settings
