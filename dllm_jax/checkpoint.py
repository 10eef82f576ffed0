"""Orbax checkpoints of converted parameters: save, load (onto shardings), convert from and export
to Hugging Face safetensors.

A checkpoint is a directory:
  config.json   the `ModelConfig` (dtype policy included)
  params/       an Orbax PyTree checkpoint of `init_params(config)`'s tree
  tokenizer/    the HF tokenizer and chat-template files, when converted from a directory with them
  checksums.json  the SHA-256 of every file under params/ (`load` checks them; `fingerprint`
                identifies the weights)
Every writer builds the directory under a temporary sibling name and renames it into place, so a
failure never leaves a partial checkpoint behind; a writer that was killed leaves a hidden
`.<name>.tmp-<pid>-...` sibling, which the next writer of that name removes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pathlib
import shutil
import uuid
import warnings
from typing import Any, Callable, Iterator

import jax
import numpy as np
import orbax.checkpoint.experimental.v1 as ocp

from dllm_jax.models import hf_layout
from dllm_jax.models.config import ModelConfig, from_hf_config, to_hf_config
from dllm_jax.models.model import Params, abstract_params
from dllm_jax.models.safetensors_io import (FLOAT_DTYPES, CheckpointError, read_tensor,
                                            scan_checkpoint, write_checkpoint)

CONFIG_FILE = "config.json"
PARAMS_DIR = "params"
TOKENIZER_DIR = "tokenizer"
CHECKSUMS_FILE = "checksums.json"
# Tokenizer and chat-template files that a conversion carries over from the HF directory.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "chat_template.jinja", "chat_template.json",
                   "generation_config.json", "vocab.json", "merges.txt", "tokenizer.model")
_DTYPE_NAMES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}


@contextlib.contextmanager
def _atomic_directory(target: str | os.PathLike, overwrite: bool) -> Iterator[pathlib.Path]:
  """Yields a temporary directory that becomes `target` only if the block succeeds."""
  target = pathlib.Path(target).absolute()
  if target.exists() and not overwrite:
    raise FileExistsError(f"{target} already exists (pass --overwrite / overwrite=True to "
                          "replace it)")
  target.parent.mkdir(parents=True, exist_ok=True)
  _remove_stale_temps(target)
  temp = target.parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
  try:
    temp.mkdir()
    yield temp
    if target.exists():
      trash = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
      os.replace(target, trash)
      os.replace(temp, target)
      shutil.rmtree(trash)
    else:
      os.replace(temp, target)
  finally:
    shutil.rmtree(temp, ignore_errors=True)


def _remove_stale_temps(target: pathlib.Path) -> None:
  """Removes what a killed writer of `target` left (its process is gone)."""
  for stale in target.parent.glob(f".{target.name}.tmp-*"):
    pid = stale.name.rsplit(".tmp-", 1)[1].split("-")[0]
    if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
      shutil.rmtree(stale, ignore_errors=True)


def _file_digests(directory: pathlib.Path) -> dict[str, str]:
  digests = {}
  for path in sorted((directory / PARAMS_DIR).rglob("*")):
    if path.is_file():
      digest = hashlib.sha256()
      with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
          digest.update(chunk)
      digests[path.relative_to(directory).as_posix()] = digest.hexdigest()
  return digests


def _tensor_digest(name: str, array: np.ndarray) -> str:
  array = np.ascontiguousarray(array)
  header = f"{name} {array.dtype.name} {list(array.shape)}".encode()
  return hashlib.sha256(header + b"\0" + array.tobytes()).hexdigest()


def _weights_digest(tensor_digests: dict[str, str]) -> str:
  return hashlib.sha256(json.dumps(tensor_digests, sort_keys=True).encode()).hexdigest()


def _params_digests(params: Params) -> dict[str, str] | None:
  """Per-tensor digests of a tree, or None when some leaf is not all on this host."""
  digests = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
      return None
    name = "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
    digests[name] = _tensor_digest(name, np.asarray(leaf))
  return digests


def _write_checksums(directory: pathlib.Path, tensor_digests: dict[str, str] | None) -> None:
  """checksums.json: every params/ file's SHA-256, and a digest of the weights' values (Orbax's
  file names and metadata differ between two writes of the same weights)."""
  record = {"weights": None if tensor_digests is None else _weights_digest(tensor_digests),
            "files": _file_digests(directory)}
  (directory / CHECKSUMS_FILE).write_text(json.dumps(record, indent=1))


def _corrupt(directory, what: str) -> CheckpointError:
  return CheckpointError(f"checkpoint corrupt: {what} in {directory}; re-convert it (or restore "
                         "a copy)")


def verify(directory: str | os.PathLike) -> None:
  """Checks every params/ file against checksums.json; raises `CheckpointError` on a mismatch
  (warns when there is no checksums.json)."""
  directory = pathlib.Path(directory)
  path = directory / CHECKSUMS_FILE
  if not path.is_file():
    warnings.warn(f"{directory} has no {CHECKSUMS_FILE} (written by an older dllm_jax), so its "
                  "files cannot be checked; re-convert it to have them checked", stacklevel=3)
    return
  want = json.loads(path.read_text())["files"]
  got = _file_digests(directory)
  missing = sorted(set(want) - set(got))
  if missing:
    raise _corrupt(directory, f"{len(missing)} missing file(s) ({missing[0]}, ...)")
  changed = sorted(name for name in want if got[name] != want[name])
  if changed:
    raise _corrupt(directory, f"{len(changed)} file(s) differ from their checksums "
                              f"({changed[0]}, ...)")


def fingerprint(directory: str | os.PathLike) -> str:
  """A short hash that identifies a checkpoint's weights and config: the same for two
  conversions of the same weights, different when any value differs."""
  directory = pathlib.Path(directory)
  path = directory / CHECKSUMS_FILE
  record = json.loads(path.read_text()) if path.is_file() else {}
  weights = record.get("weights") or _weights_digest(record.get("files") or
                                                     _file_digests(directory))
  text = weights + load_config(directory).to_json()
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def save(directory: str | os.PathLike, params: Params, config: ModelConfig, *,
         overwrite: bool = False) -> pathlib.Path:
  """Writes `params` (any placement; gathered by Orbax) and `config` as a checkpoint."""
  with _atomic_directory(directory, overwrite) as temp:
    ocp.save(temp / PARAMS_DIR, params)
    _write_checksums(temp, _params_digests(params))
    (temp / CONFIG_FILE).write_text(config.to_json())
  return pathlib.Path(directory)


def load_config(directory: str | os.PathLike) -> ModelConfig:
  path = pathlib.Path(directory) / CONFIG_FILE
  if not path.is_file():
    raise FileNotFoundError(f"{directory} is not a dllm_jax checkpoint (no {CONFIG_FILE})")
  return ModelConfig.from_json(path.read_text())


def load(directory: str | os.PathLike, mesh: jax.sharding.Mesh | None = None, *,
         shardings: Any = None, verify_checksums: bool = True) -> tuple[Params, ModelConfig]:
  """Restores a checkpoint straight onto its target placement.

  With `mesh`, every parameter lands on the partitioning of `dllm_jax.sharding.param_shardings`;
  `shardings` (a tree of `jax.sharding.Sharding` matching the params) overrides that; with
  neither, parameters go to the default device. The files are first checked against
  checksums.json (`verify_checksums=False` skips that: one more read of the whole checkpoint).
  """
  directory = pathlib.Path(directory).absolute()  # Orbax needs absolute paths
  config = load_config(directory)
  if verify_checksums:
    verify(directory)
  abstract = abstract_params(config)
  if shardings is None:
    if mesh is not None:
      from dllm_jax import sharding as sharding_lib  # pylint: disable=import-outside-toplevel
      shardings = sharding_lib.param_shardings(config, mesh)
    else:
      device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
      shardings = jax.tree.map(lambda _: device, abstract)
  target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        abstract, shardings)
  try:
    params = ocp.load(directory / PARAMS_DIR, target)
  except Exception as error:  # pylint: disable=broad-except  (TensorStore raises many kinds)
    first = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
    raise _corrupt(directory, f"Orbax cannot read params/ ({first})") from error
  return params, config


def _format_keys(keys: list[str], limit: int = 12) -> str:
  shown = ", ".join(keys[:limit])
  return shown + (f" ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def _check_hf_tensors(infos: dict[str, Any], config: ModelConfig) -> None:
  """Raises one error listing every missing, unexpected, misshapen or non-float tensor."""
  expected = hf_layout.key_map(config)
  abstract = abstract_params(config)
  problems = []
  missing = sorted(set(expected) - set(infos))
  unexpected = sorted(set(infos) - set(expected))
  if missing:
    problems.append(f"missing tensors: {_format_keys(missing)}")
  if unexpected:
    problems.append(f"unexpected tensors: {_format_keys(unexpected)}")
  for key in sorted(set(expected) & set(infos)):
    want = hf_layout.expected_shape(expected[key], abstract)
    if infos[key].shape != want:
      problems.append(f"{key}: shape {list(infos[key].shape)}, expected {list(want)} "
                      f"(in {infos[key].file.name})")
    if infos[key].dtype not in FLOAT_DTYPES:
      problems.append(f"{key}: dtype {infos[key].dtype}, expected a floating dtype "
                      f"(in {infos[key].file.name})")
  if problems:
    raise CheckpointError("checkpoint does not match its config.json:\n  " + "\n  ".join(problems))


def convert_hf(hf_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
               param_dtype: str | None = None, dtype: str | None = None,
               overwrite: bool = False, buffer_bytes: int = 64 * 2**20,
               progress: Callable[[int, int], None] | None = None) -> ModelConfig:
  """Converts a HF checkpoint directory (any family of `from_hf_config`) to an Orbax checkpoint.

  Every header, key, shape and dtype is checked before anything is written. Tensors are then
  read one by one (in row chunks) and written with Orbax partial saves whenever `buffer_bytes`
  have accumulated, so peak host memory stays near `buffer_bytes` plus twice the largest tensor,
  whatever the shard size.
  `param_dtype` defaults to the checkpoint's dtype, `dtype` (compute) to `param_dtype`.
  `progress(tensors_written, tensors)` is called after each write.
  """
  hf_dir = pathlib.Path(hf_dir)
  config = from_hf_config(hf_dir)
  infos = scan_checkpoint(hf_dir)
  _check_hf_tensors(infos, config)
  if param_dtype is None:
    found = sorted({info.dtype for info in infos.values()})
    if len(found) > 1:
      raise CheckpointError(f"{hf_dir}: tensors mix dtypes {found}; choose param_dtype")
    param_dtype = _DTYPE_NAMES.get(found[0], "float32")
  config = config.replace(param_dtype=param_dtype, dtype=dtype or param_dtype)
  target_dtype = np.dtype(config.weight_dtype)
  expected = hf_layout.key_map(config)
  assembler = hf_layout.HFAssembler(config)
  with _atomic_directory(out_dir, overwrite) as temp:
    buffer: dict[Any, Any] = {}
    buffered = 0
    digests = {}
    # File order keeps reads sequential within each shard.
    for n, key in enumerate(sorted(infos, key=lambda k: (infos[k].file.name, k))):
      entry = expected[key]
      if entry.transform == "transpose" and entry.expert is None:
        # Read straight into the transposed array (chunked): no second copy.
        done = [(entry.path, read_tensor(key, infos[key], transpose=True, dtype=target_dtype))]
      else:
        done = assembler.add(key, read_tensor(key, infos[key], dtype=target_dtype))
      for path, array in done:
        array = np.ascontiguousarray(array)
        name = "/".join(str(k) for k in path)
        digests[name] = _tensor_digest(name, array)
        # Orbax copies numpy leaves while saving, jax arrays it writes in place: one copy now,
        # and the numpy array is freed at once.
        hf_layout.set_path(buffer, path, jax.device_put(array))
        buffered += array.nbytes
      del done
      if buffered >= buffer_bytes or n == len(infos) - 1:
        ocp.partial.save(temp / PARAMS_DIR, buffer)
        if progress:
          progress(n + 1, len(infos))
        buffer, buffered = {}, 0
    ocp.partial.finalize(temp / PARAMS_DIR)
    _write_checksums(temp, digests)
    (temp / CONFIG_FILE).write_text(config.to_json())
    tokenizer_files = [hf_dir / name for name in TOKENIZER_FILES if (hf_dir / name).is_file()]
    if tokenizer_files:
      (temp / TOKENIZER_DIR).mkdir()
      for file in tokenizer_files:
        shutil.copy2(file, temp / TOKENIZER_DIR / file.name)
  return config


def export_hf(ckpt_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
              max_shard_bytes: int = 5 * 2**30, overwrite: bool = False) -> list[pathlib.Path]:
  """Writes a checkpoint back as HF safetensors in its family's original key layout."""
  params, config = load(ckpt_dir)
  with _atomic_directory(out_dir, overwrite) as temp:
    files = write_checkpoint(hf_layout.hf_tensors(params, config), temp, max_shard_bytes)
    (temp / CONFIG_FILE).write_text(json.dumps(to_hf_config(config), indent=2))
  return [pathlib.Path(out_dir) / f.name for f in files]
