"""The accelerator benchmark's LLaDA2.0-mini sections (mixture of experts, block diffusion):
`llada2_forward` and `llada2_decode` (experiments/bench_accelerator.py describes what they
measure and cost). The weights are made on the device at the first LLaDA2 setting that runs and
dropped after the decode section; the PyTorch side is the official generate as reimplemented in
tests/torch_ref/llada2_torch.py, over the same buffers through DLPack.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from dllm_jax import models
from dllm_jax.models import ModelConfig, hf_layout
from dllm_jax.models.config import to_hf_config
from dllm_jax.sampling import block_diffusion
from experiments import accelerator_plan, benchlib
from experiments.accelerator_benchmark import (Run, _pct, _prompt, _sync_torch, _timed_ok,
                                               free_memory, init_on_device, measure, rates, torch)
from experiments.accelerator_plan import Settings, estimate_setting

if torch is not None:
  from tests.torch_ref import llada2_torch


def llada2_torch_model(params: Any, config: ModelConfig) -> "torch.nn.Module":
  """The PyTorch LLaDA2 (tests/torch_ref/llada2_torch.py, the official module structure and key
  names) over the JAX weight buffers through DLPack: linears and every expert's weights are
  transposed views of the JAX arrays (experts: slices of the stacked [E, ...] arrays); only the
  fused query_key_value weights are new tensors (q, k and v concatenated on the device)."""
  state = {}
  for key, entry in hf_layout.key_map(config).items():
    if entry.transform == "qkv_kernel":
      parts = [torch.from_dlpack(hf_layout.get_path(params, entry.path + (name, "kernel"))).T
               for name in ("q_proj", "k_proj", "v_proj")]
      state[key] = torch.cat(parts, dim=0)
      continue
    if entry.transform == "qkv_bias":
      raise ValueError("the LLaDA2 benchmark model has no qkv bias")
    tensor = torch.from_dlpack(hf_layout.get_path(params, entry.path))
    if entry.expert is not None:
      tensor = tensor[entry.expert]
    state[key] = tensor.T if entry.transform == "transpose" else tensor
  with torch.device("meta"):
    model = llada2_torch.LLaDA2(to_hf_config(config))
  model.load_state_dict(state, strict=True, assign=True)
  return model.eval().requires_grad_(False)


class LLaDA2State:
  """The LLaDA2 weights on the device and the PyTorch model over them, made at the first LLaDA2
  setting that runs and dropped after the decode section."""

  def __init__(self, run: Run):
    self.run, self.params, self.torch_model, self.torch_info = run, None, None, None
    self.config = run.settings.llada2_config
    self.denoise = models.make_denoise(self.config)

  def load(self) -> Any:
    if self.params is None:
      self.params, info = init_on_device(self.run, self.config)
      info["active_matmul_params"] = benchlib.matmul_params(self.config, active=True)
      self.run.report["llada2_model"] = info
    return self.params

  def torch(self) -> Any:
    """The PyTorch model, or None (`run.torch_skip` or the failure says why)."""
    if self.torch_info is None:
      if self.run.torch_skip:
        self.torch_info = {"status": "skipped", "reason": self.run.torch_skip}
      else:
        try:
          self.torch_model = llada2_torch_model(self.load(), self.config)
          self.torch_info = {"status": "ok", "weights": "the JAX buffers, through DLPack"}
        except Exception as e:  # pylint: disable=broad-except
          self.torch_info = {"status": "error", "error": f"{type(e).__name__}: {e}"[:2000]}
      self.run.section("llada2_decode")["torch_side"] = self.torch_info
    return self.torch_model

  def drop(self) -> None:
    self.params = self.torch_model = None
    free_memory()


def section_forward(run: Run) -> None:
  """The LLaDA2.0-mini forward (logits at every position) at --llada2_forward_shapes: ms and MFU
  from the model FLOPs of the ACTIVE parameters (router, 8 of 256 routed experts and the shared
  expert per token; `benchlib.matmul_params(active=True)`), not of all 16B."""
  settings, state = run.settings, run.llada2
  for batch, length in settings.llada2_forward_shapes:
    def body(batch=batch, length=length):
      params = state.load()
      tokens = jax.device_put(_prompt(run, batch, length, 400 + batch, state.config), run.device)
      mask = jax.device_put(np.ones((batch, length), bool), run.device)
      compiled, compile_times = run.compile(
          lambda: jax.jit(state.denoise).lower(params, tokens, mask))
      row = {"batch": batch, "length": length, "compile": compile_times, "flops": "active"}
      if settings.compile_only:
        return row
      t = measure(run, {"jax": lambda: compiled(params, tokens, mask).block_until_ready()})
      row["jax"] = rates(_timed_ok(t, "jax"), benchlib.forward_flops(state.config, batch, length),
                         run.peak_flops, tokens=batch * length)
      return row

    run.setting("llada2_forward", f"{batch}x{length}",
                estimate_setting(settings, run.costs(state.config), "llada2_forward",
                                 run.compile_guess(), batch, length), body)


def section_decode(run: Run) -> None:
  """LLaDA2.0-mini decoding with the official default rule (threshold 0.95 with the scheduled
  fallback, block 32, 32 steps per block, temperature 0) and the exact block cache
  (`block_diffusion._decode`, the loop of `generate_blocks`), at --llada2_batches, against the
  official generate (tests/torch_ref/llada2_torch.py: one prompt at a time, the canvas
  recomputed up to the current block every step, the experts in a Python loop) on the first
  --llada2_torch_rows rows of each batch, --llada2_torch_gen_length tokens each. No EOS: every
  row decodes every block on both sides. Tokens/s, ms per step (random weights commit about one
  token per step, so ms per step is the figure that carries over), JAX MFU (active FLOPs,
  attention charged over the whole canvas), and the share of the rows' first tokens the two sides
  agree on."""
  settings, state = run.settings, run.llada2
  config = state.config
  L, G, W = settings.llada2_shapes
  P, Gt = settings.prompt_length, settings.llada2_torch_gen_length
  decoder = block_diffusion.BlockDiffusion(G, block_length=W, steps=W,
                                           threshold=accelerator_plan.LLADA2_THRESHOLD)
  no_eos = -1  # never a token: rows never stop early
  try:
    for batch in settings.llada2_batches:
      def body(batch=batch):
        params = state.load()
        prompt = _prompt(run, batch, P, 500 + batch, config)
        lay = block_diffusion.layout(prompt, np.ones(prompt.shape, bool), decoder,
                                     config.mask_token_id, config.pad_token_id)
        if lay.canvas.shape[1] != L:
          raise AssertionError(f"canvas of {lay.canvas.shape[1]} positions, expected {L}")
        arrays = jax.device_put((lay.canvas, lay.valid, lay.gen_start,
                                 jax.random.split(jax.random.key(settings.seed), batch)),
                                run.device)
        # pylint: disable-next=protected-access
        decode = jax.jit(lambda params, arrays: block_diffusion._decode(
            decoder, state.denoise, params, arrays, None, lay.first_block, lay.num_blocks,
            (config.mask_token_id, no_eos)))
        compiled, compile_times = run.compile(lambda: decode.lower(params, arrays))
        row: dict[str, Any] = {"batch": batch, "prompt_length": P, "gen_length": G,
                               "block_length": W, "threshold": decoder.threshold,
                               "compile": compile_times}
        if settings.compile_only:
          return row
        outputs: dict[str, Any] = {}
        fns = {"jax": lambda: outputs.__setitem__(
            "jax", jax.block_until_ready(compiled(params, arrays)))}
        warmups = {}
        model = state.torch()
        rows = min(batch, settings.llada2_torch_rows)
        if model is not None:
          device = next(model.parameters()).device

          def torch_loop():
            outputs["torch"] = [llada2_torch.generate(
                model, prompt[r].tolist(), gen_length=Gt, block_length=W, steps=W,
                threshold=decoder.threshold, mask_id=config.mask_token_id, eos_id=no_eos)
                                for r in range(rows)]
            _sync_torch()

          def torch_warmup():  # one forward of the longest canvas it computes
            end = P + -(-Gt // W) * W
            positions = torch.arange(end, device=device)[None]
            model(torch.full((1, end), config.mask_token_id, device=device), positions,
                  llada2_torch.block_causal(positions, torch.ones(1, end, dtype=torch.bool,
                                                                  device=device), W))
            _sync_torch()

          fns["torch"], warmups["torch"] = torch_loop, torch_warmup
        times = measure(run, fns, warmups)
        _timed_ok(times, "jax")
        canvas, _, nfe, nfe_B = outputs["jax"]
        nfe = int(nfe)
        tokens_BG = np.asarray(canvas)[:, P:P + G]
        if (tokens_BG == config.mask_token_id).any():
          raise AssertionError("the JAX loop left masks in the generation")
        flops = (benchlib.forward_flops(config, batch, P, 1)
                 + nfe * accelerator_plan.window_flops(config, batch, L, W))
        row.update(steps=nfe, nfe_mean=float(np.mean(np.asarray(nfe_B))),
                   tokens_per_forward=G / float(np.mean(np.asarray(nfe_B))),
                   jax=rates(times["jax"], flops, run.peak_flops, tokens=batch * G, steps=nfe))
        if "median_s" in times.get("torch", {}):
          results = outputs["torch"]
          forwards = sum(f for _, f in results)
          row["torch"] = {**rates(times["torch"], 0.0, None, tokens=rows * Gt, steps=forwards),
                          "rows": rows, "gen_length": Gt, "forwards": forwards,
                          "flops": None, "tflops": None}
          row["speed_ratio"] = row["jax"]["tokens_per_s"] / row["torch"]["tokens_per_s"]
          row["same_tokens_fraction"] = float(np.mean(
              [np.mean(np.asarray(tokens) == tokens_BG[r, :Gt])
               for r, (tokens, _) in enumerate(results)]))
        elif "torch" in times:
          row["torch"] = times["torch"]
        else:
          row["torch"] = state.torch_info or {"status": "skipped", "reason": run.torch_skip}
        return row

      run.setting("llada2_decode", f"B={batch}",
                  estimate_setting(settings, run.costs(config), "llada2_decode",
                                   run.compile_guess(), batch,
                                   with_torch=run.torch_skip is None), body)
  finally:
    state.drop()


def model_name(settings: Settings) -> str:
  c = settings.llada2_config
  return (f"LLaDA2 ({c.num_layers} layers, width {c.hidden_size}, {c.num_experts} experts, "
          f"top {c.experts_per_token}, {c.dtype})")


def tables(forward_rows: list[dict[str, Any]], decode_rows: list[dict[str, Any]],
                   settings: Settings) -> list[str]:
  out = []
  if forward_rows:
    out.append(f"\n{model_name(settings)} forward (logits at every position; FLOPs and MFU of "
               "the ACTIVE parameters: the routed experts a token goes through, the shared "
               "one, the router)\n")
    out.append(benchlib.markdown_table(
        ["B x L", "ms", "TFLOP/s", "MFU", "tokens/s", "compile s"],
        [[f"{r['batch']} x {r['length']}", r["jax"]["median_s"] * 1e3, r["jax"]["tflops"],
          _pct(r["jax"]["mfu"]), r["jax"]["tokens_per_s"], r["compile"]["compile_s"]]
         if "jax" in r else [f"{r['batch']} x {r['length']}", "", "", "", "",
                             r["compile"]["compile_s"]] for r in forward_rows]))
  if decode_rows:
    _, G, W = settings.llada2_shapes
    out.append(f"\n{model_name(settings)} decoding, threshold "
               f"{accelerator_plan.LLADA2_THRESHOLD}, block {W}, prompt {settings.prompt_length}, "
               f"greedy, no EOS. JAX: gen {G}, the compiled loop with the exact block cache; "
               "torch: the official generate "
               f"(one prompt at a time, canvas recomputed, experts in a Python loop), gen "
               f"{settings.llada2_torch_gen_length} on {settings.llada2_torch_rows} row(s) of "
               "each batch; JAX/torch = tokens/s ratio\n")
    out.append(benchlib.markdown_table(
        ["B", "JAX steps", "JAX tok/s", "JAX ms/step", "JAX MFU", "torch tok/s",
         "torch ms/step", "JAX/torch", "same tokens", "compile s"],
        [[r["batch"], r.get("steps", ""), r.get("jax", {}).get("tokens_per_s", ""),
          r.get("jax", {}).get("ms_per_step", ""), _pct(r.get("jax", {}).get("mfu")),
          r.get("torch", {}).get("tokens_per_s", ""), r.get("torch", {}).get("ms_per_step", ""),
          f"{r['speed_ratio']:.2f}x" if "speed_ratio" in r else "",
          _pct(r.get("same_tokens_fraction")),
          r["compile"]["lower_s"] + r["compile"]["compile_s"]] for r in decode_rows]))
  return out
