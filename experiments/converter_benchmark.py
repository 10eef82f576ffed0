"""Throughput and peak memory of `checkpoint.convert_hf` on a large sharded LLaDA checkpoint.

The checkpoint is random float32 in the exact LLaDA key layout (tests/hf_fixtures.py's keys and
config fields, larger dimensions), its keys spread over the shards in interleaved order as in
LLaDA's release. Shards are written tensor by tensor in the safetensors format (8-byte header
length, JSON header, raw little-endian data), so building a multi-GB checkpoint needs memory for
one tensor only.

The conversion runs in a fresh child process, which reports its resident set after importing
the library and starting JAX's CPU backend (the baseline) and its high-water mark (`VmHWM`) after converting; the parent also
reads `getrusage(RUSAGE_CHILDREN).ru_maxrss` as a cross-check. The files were just written, so
they are read from the page cache: the throughput is the converter's, not the disk's.
"""

from __future__ import annotations

import json
import pathlib
import resource
import shutil
import subprocess
import sys
import time
from typing import Any

import numpy as np

from tests import hf_fixtures

_CHILD = """
import json, pathlib, sys, time
def status():
  fields = dict(line.split(':', 1) for line in pathlib.Path('/proc/self/status').read_text().splitlines())
  return {k: int(fields[k].split()[0]) * 1024 for k in ('VmRSS', 'VmHWM')}
import jax
from dllm_jax import checkpoint
jax.numpy.zeros(1).block_until_ready()  # the CPU backend's fixed cost belongs to the baseline
base = status()
start = time.perf_counter()
checkpoint.convert_hf(sys.argv[1], sys.argv[2], overwrite=True)
seconds = time.perf_counter() - start
print(json.dumps({'seconds': seconds, 'baseline_rss': base['VmRSS'],
                  'baseline_hwm': base['VmHWM'], 'peak_rss': status()['VmHWM']}))
"""


def _header(shapes: dict[str, tuple[int, ...]]) -> bytes:
  entries: dict[str, Any] = {"__metadata__": {"format": "pt"}}
  offset = 0
  for key, shape in shapes.items():
    size = 4 * int(np.prod(shape))
    entries[key] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + size]}
    offset += size
  text = json.dumps(entries, separators=(",", ":")).encode()
  text += b" " * (-len(text) % 8)  # keep the data 8-byte aligned
  return len(text).to_bytes(8, "little") + text


def _random_tensor(key: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
  noise = rng.standard_normal(shape, dtype=np.float32)
  if key.endswith("norm.weight") or key.endswith("ln_f.weight"):
    return 1.0 + 0.2 * noise
  noise *= 1.0 / np.sqrt(shape[-1])
  return noise


def write_streamed_checkpoint(directory: pathlib.Path, cfg: dict[str, Any], num_shards: int,
                              seed: int = 0) -> list[pathlib.Path]:
  """A float32 sharded checkpoint of `cfg` (interleaved keys), one tensor in memory at a time."""
  directory.mkdir(parents=True, exist_ok=True)
  (directory / "config.json").write_text(json.dumps(cfg, indent=2))
  shapes = hf_fixtures.hf_tensor_shapes(cfg)
  keys = list(shapes)
  rng = np.random.default_rng(seed)
  files, weight_map, total = [], {}, 0
  for s in range(num_shards):
    name = f"model-{s + 1:05d}-of-{num_shards:05d}.safetensors"
    part = {k: shapes[k] for k in keys[s::num_shards]}
    with open(directory / name, "wb") as f:
      f.write(_header(part))
      for key, shape in part.items():
        tensor = _random_tensor(key, shape, rng)
        f.write(tensor.astype("<f4", copy=False).tobytes(order="C"))
        total += tensor.nbytes
        del tensor
    weight_map.update({k: name for k in part})
    files.append(directory / name)
  index = {"metadata": {"total_size": total}, "weight_map": weight_map}
  (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
  return files


def measure_conversion(hf_dir: pathlib.Path, out_dir: pathlib.Path) -> dict[str, Any]:
  """Converts in a child process; returns seconds and RSS figures in bytes."""
  result = subprocess.run([sys.executable, "-c", _CHILD, str(hf_dir), str(out_dir)],
                          capture_output=True, text=True, check=False)
  if result.returncode:
    raise RuntimeError(f"conversion child failed:\n{result.stderr[-4000:]}")
  report = json.loads(result.stdout.strip().splitlines()[-1])
  # Linux carries the parent's RSS at fork into the child's ru_maxrss, so this bounds the child's
  # peak from above only; VmHWM (reset at exec) is the figure that counts.
  report["ru_maxrss_children"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
  return report


def run(workdir: pathlib.Path, d_model: int, n_layers: int, mlp_hidden: int, vocab: int,
        num_shards: int, keep: bool = False) -> dict[str, Any]:
  """Builds the checkpoint, converts it, and relates the peak RSS to the largest shard."""
  cfg = hf_fixtures.llada_hf_config(d_model=d_model, n_layers=n_layers, n_heads=d_model // 64,
                                    n_kv_heads=d_model // 64, mlp_hidden=mlp_hidden, vocab=vocab,
                                    mask_id=vocab - 1, eos_id=vocab - 2, max_len=4096)
  hf_dir, out_dir = workdir / "hf", workdir / "converted"
  shutil.rmtree(workdir, ignore_errors=True)
  start = time.perf_counter()
  files = write_streamed_checkpoint(hf_dir, cfg, num_shards)
  build_s = time.perf_counter() - start
  sizes = [f.stat().st_size for f in files]
  tensor_bytes = 4 * sum(int(np.prod(s)) for s in hf_fixtures.hf_tensor_shapes(cfg).values())
  largest_tensor = 4 * max(int(np.prod(s)) for s in hf_fixtures.hf_tensor_shapes(cfg).values())
  report = measure_conversion(hf_dir, out_dir)
  out_bytes = sum(p.stat().st_size for p in out_dir.rglob("*") if p.is_file())
  if not keep:
    shutil.rmtree(workdir, ignore_errors=True)
  largest = max(sizes)
  above = report["peak_rss"] - report["baseline_rss"]
  return {
      "config": cfg, "num_shards": num_shards, "shard_bytes": sizes, "total_bytes": sum(sizes),
      "tensor_bytes": tensor_bytes, "largest_shard_bytes": largest,
      "largest_tensor_bytes": largest_tensor, "output_bytes": out_bytes, "build_s": build_s,
      **report, "throughput_mb_s": tensor_bytes / 1e6 / report["seconds"],
      "peak_over_largest_shard": report["peak_rss"] / largest,
      "peak_above_baseline_over_largest_shard": above / largest,
      "goal_met": report["peak_rss"] <= 2 * largest,
  }


def table(r: dict[str, Any]) -> str:
  from experiments import benchlib  # pylint: disable=import-outside-toplevel
  mb = lambda b: f"{b / 2**20:,.0f} MiB"
  rows = [
      ["checkpoint", f"{r['total_bytes'] / 1e9:.2f} GB float32 in {r['num_shards']} shards"],
      ["largest shard / largest tensor", f"{mb(r['largest_shard_bytes'])} / "
                                         f"{mb(r['largest_tensor_bytes'])}"],
      ["conversion time", f"{r['seconds']:.1f} s"],
      ["throughput", f"{r['throughput_mb_s']:.0f} MB/s"],
      ["child baseline RSS after imports", mb(r["baseline_rss"])],
      ["child peak RSS (VmHWM)", mb(r["peak_rss"])],
      ["peak RSS / largest shard", f"{r['peak_over_largest_shard']:.2f}x"],
      ["(peak - baseline) / largest shard", f"{r['peak_above_baseline_over_largest_shard']:.2f}x"],
      ["ru_maxrss of children (includes parent at fork)", mb(r["ru_maxrss_children"])],
      ["goal peak <= 2x largest shard", "met" if r["goal_met"] else "MISSED"],
  ]
  return benchlib.markdown_table(["converter", "value"], rows)
