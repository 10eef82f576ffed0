"""Reading and writing Hugging Face safetensors checkpoints with safetensors' numpy API.

A checkpoint directory holds `model.safetensors`, or shards `model-0000i-of-0000n.safetensors`
listed by `model.safetensors.index.json`. Headers are scanned first, so a bad file is reported
before any tensor is read; tensors are then read one at a time in row chunks, each chunk from a
freshly opened file, so only the tensor being read and one chunk of its shard are resident.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Iterable

import ml_dtypes
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
FLOAT_DTYPES = {"F64": np.dtype(np.float64), "F32": np.dtype(np.float32),
                "F16": np.dtype(np.float16), "BF16": np.dtype(ml_dtypes.bfloat16)}


class CheckpointError(ValueError):
  """A checkpoint file or tensor is missing, unexpected, misshapen or unreadable."""


@dataclasses.dataclass(frozen=True)
class TensorInfo:
  file: pathlib.Path
  dtype: str  # safetensors dtype name, e.g. "BF16"
  shape: tuple[int, ...]


def _scan_file(file: pathlib.Path) -> dict[str, TensorInfo]:
  try:
    with safe_open(str(file), framework="np") as handle:
      infos = {}
      for key in handle.keys():
        view = handle.get_slice(key)
        infos[key] = TensorInfo(file, view.get_dtype(), tuple(view.get_shape()))
  except Exception as e:  # SafetensorError covers corrupt headers and truncated files.
    raise CheckpointError(f"{file}: not a readable safetensors file ({e})") from e
  return infos


def scan_checkpoint(directory: str | os.PathLike) -> dict[str, TensorInfo]:
  """Every tensor of a checkpoint directory with its file, dtype and shape (no data read)."""
  directory = pathlib.Path(directory)
  index_path = directory / INDEX_FILE
  if index_path.is_file():
    try:
      weight_map = json.loads(index_path.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
      raise CheckpointError(f"{index_path}: malformed index ({e})") from e
    files = sorted(set(weight_map.values()))
  elif (directory / SINGLE_FILE).is_file():
    weight_map, files = None, [SINGLE_FILE]
  else:
    raise CheckpointError(f"{directory}: neither {SINGLE_FILE} nor {INDEX_FILE} found")
  infos: dict[str, TensorInfo] = {}
  for name in files:
    file = directory / name
    if not file.is_file():
      raise CheckpointError(f"{file}: listed in {INDEX_FILE} but missing")
    for key, info in _scan_file(file).items():
      if key in infos:
        raise CheckpointError(f"tensor {key!r} appears in both {infos[key].file} and {file}")
      infos[key] = info
  if weight_map is not None:
    for key, name in weight_map.items():
      if key not in infos or infos[key].file.name != name:
        raise CheckpointError(f"{INDEX_FILE} places {key!r} in {name}, which does not hold it")
  return infos


def read_tensor(key: str, info: TensorInfo, *, transpose: bool = False,
                dtype: np.dtype | None = None, chunk_bytes: int = 16 * 2**20) -> np.ndarray:
  """Reads one tensor, optionally transposed (2-D) and cast, straight into its final array.

  Rows are read in chunks of about `chunk_bytes`, each from a freshly opened (memory-mapped) file,
  so besides the result only one chunk of the file is ever resident.
  """
  dtype = np.dtype(dtype or FLOAT_DTYPES.get(info.dtype, np.float32))
  shape = tuple(reversed(info.shape)) if transpose else info.shape
  if transpose and len(shape) != 2:
    raise CheckpointError(f"{info.file}: cannot transpose {len(shape)}-d tensor {key!r}")
  out = np.empty(shape, dtype)
  rows = info.shape[0] if info.shape else 1
  row_bytes = max(int(np.prod(info.shape[1:], dtype=np.int64)) * dtype.itemsize, 1)
  step = max(1, chunk_bytes // row_bytes)
  try:
    for start in range(0, rows, step):
      stop = min(start + step, rows)
      with safe_open(str(info.file), framework="np") as handle:
        chunk = handle.get_slice(key)[start:stop] if info.shape else handle.get_tensor(key)
      if not info.shape:
        out[...] = chunk
      elif transpose:
        out[:, start:stop] = chunk.T
      else:
        out[start:stop] = chunk
  except CheckpointError:
    raise
  except Exception as e:
    raise CheckpointError(f"{info.file}: cannot read tensor {key!r} ({e})") from e
  return out


def write_checkpoint(tensors: Iterable[tuple[str, np.ndarray]], directory: str | os.PathLike,
                     max_shard_bytes: int = 5 * 2**30) -> list[pathlib.Path]:
  """Writes (key, array) pairs as HF safetensors shards plus an index, holding one shard at a time.

  A single shard is written as `model.safetensors` without an index.
  """
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  current: dict[str, np.ndarray] = {}
  temp_names: list[str] = []
  weight_map: dict[str, str] = {}
  size = total = 0

  def flush() -> None:
    temp_names.append(f"shard-{len(temp_names):05d}.tmp")
    save_file(current, str(directory / temp_names[-1]), metadata={"format": "pt"})
    weight_map.update({key: temp_names[-1] for key in current})
    current.clear()

  for key, array in tensors:
    if current and size + array.nbytes > max_shard_bytes:
      flush()
      size = 0
    current[key] = np.ascontiguousarray(array)
    size += array.nbytes
    total += array.nbytes
  if current or not temp_names:
    flush()
  if len(temp_names) == 1:
    final = [directory / SINGLE_FILE]
  else:
    n = len(temp_names)
    final = [directory / f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
  renames = dict(zip(temp_names, (f.name for f in final)))
  for temp, target in renames.items():
    os.replace(directory / temp, directory / target)
  if len(final) > 1:
    index = {"metadata": {"total_size": total},
             "weight_map": {k: renames[v] for k, v in sorted(weight_map.items())}}
    (directory / INDEX_FILE).write_text(json.dumps(index, indent=2))
  return final
