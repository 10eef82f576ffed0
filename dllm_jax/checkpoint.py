"""Orbax checkpoints of converted parameters: save, load (onto shardings), convert from and export
to Hugging Face safetensors.

A checkpoint is a directory:
  config.json   the `ModelConfig` (dtype policy included)
  params/       an Orbax PyTree checkpoint of `init_params(config)`'s tree
  tokenizer/    the HF tokenizer and chat-template files, when converted from a directory with them
  checksums.json  the SHA-256 of config.json and of every file under params/ and tokenizer/
                (`load` checks them and refuses a checkpoint without them unless told not to
                check; `fingerprint` identifies the weights and config)
Every writer builds the directory under a temporary sibling name and renames it into place, so a
failure never leaves a partial checkpoint behind; a writer that was killed leaves a hidden
`.<name>.tmp-<pid>-...` sibling, which the next writer of that name removes.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import pathlib
import shutil
import uuid
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
  try:
    target.parent.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise OSError(e.errno, f"cannot create its folder: {e.strerror}", str(target)) from None
  _remove_stale_temps(target)
  temp = target.parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
  try:
    temp.mkdir()
    try:
      with _orbax_log_held_back():
        yield temp
    # pylint: disable-next=broad-except  (Orbax reports a full disk as a ValueError)
    except Exception as error:
      if _is_disk_full(error):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target)) from error
      raise
    if target.exists():
      trash = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
      os.replace(target, trash)
      os.replace(temp, target)
      shutil.rmtree(trash)
    else:
      os.replace(temp, target)
  finally:
    shutil.rmtree(temp, ignore_errors=True)


def _is_disk_full(error: BaseException) -> bool:
  if isinstance(error, OSError):
    return error.errno in (errno.ENOSPC, errno.EDQUOT)
  text = str(error)
  return "No space left on device" in text or "os_error_code='28'" in text


@contextlib.contextmanager
def _orbax_log_held_back() -> Iterator[None]:
  """Orbax logs a failed write's traceback (from a worker thread, at ERROR) before raising it;
  the exception says the same, so the log is held back while a checkpoint is written."""
  absl_logger = logging.getLogger("absl")
  level = absl_logger.level
  absl_logger.setLevel(logging.CRITICAL)
  try:
    yield
  finally:
    absl_logger.setLevel(level)


def _remove_stale_temps(target: pathlib.Path) -> None:
  """Removes what a killed writer of `target` left (its process is gone)."""
  for stale in target.parent.glob(f".{target.name}.tmp-*"):
    pid = stale.name.rsplit(".tmp-", 1)[1].split("-")[0]
    if pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
      shutil.rmtree(stale, ignore_errors=True)


def _checked_files(directory: pathlib.Path) -> list[pathlib.Path]:
  """The files checksums.json covers: config.json and everything under params/ and tokenizer/."""
  files = [directory / CONFIG_FILE] if (directory / CONFIG_FILE).is_file() else []
  for sub in (PARAMS_DIR, TOKENIZER_DIR):
    files += sorted(p for p in (directory / sub).rglob("*") if p.is_file())
  return files


def _file_digests(directory: pathlib.Path, params_only: bool = False) -> dict[str, str]:
  digests = {}
  for path in _checked_files(directory):
    if not params_only or path.relative_to(directory).parts[0] == PARAMS_DIR:
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
  """checksums.json: the SHA-256 of every file `_checked_files` lists (so written last), and a
  digest of the weights' values (Orbax's file names and metadata differ between two writes of
  the same weights)."""
  record = {"weights": None if tensor_digests is None else _weights_digest(tensor_digests),
            "files": _file_digests(directory)}
  (directory / CHECKSUMS_FILE).write_text(json.dumps(record, indent=1))


def _corrupt(directory, what: str) -> CheckpointError:
  return CheckpointError(f"checkpoint corrupt: {what} in {directory}; re-convert it (or restore "
                         "a copy)")


def _read_checksums(directory: pathlib.Path) -> dict[str, Any]:
  path = directory / CHECKSUMS_FILE
  try:
    record = json.loads(path.read_text(encoding="utf-8"))
  except (ValueError, UnicodeDecodeError) as e:
    raise _corrupt(directory, f"{CHECKSUMS_FILE} is not valid JSON ({e})") from None
  if not isinstance(record, dict) or not isinstance(record.get("files"), dict):
    raise _corrupt(directory, f"{CHECKSUMS_FILE} lists no files")
  return record


def verify(directory: str | os.PathLike) -> None:
  """Checks config.json and every params/ and tokenizer/ file against checksums.json; raises
  `CheckpointError` on a mismatch, an unlisted file, or no (or an outdated) checksums.json."""
  directory = pathlib.Path(directory)
  fix = (f"run `python -m checkpoints_convert.update_checksums --ckpt_dir={directory}` if you "
         "trust its files, or re-convert it (--noverify_checkpoint, verify_checksums=False, loads "
         "it unchecked)")
  if not (directory / CHECKSUMS_FILE).is_file():
    raise CheckpointError(f"{directory} has no {CHECKSUMS_FILE}, so its files cannot be checked: "
                          + fix)
  want = _read_checksums(directory)["files"]
  if CONFIG_FILE not in want:
    raise CheckpointError(f"{directory / CHECKSUMS_FILE} does not cover {CONFIG_FILE} (written "
                          "by an older dllm_jax): " + fix)
  got = _file_digests(directory)
  missing = sorted(set(want) - set(got))
  if missing:
    raise _corrupt(directory, f"{len(missing)} missing file(s) ({missing[0]}, ...)")
  changed = sorted(name for name in want if got[name] != want[name])
  if changed:
    raise _corrupt(directory, f"{len(changed)} file(s) differ from their checksums "
                              f"({changed[0]}, ...)")
  unlisted = sorted(set(got) - set(want))
  if unlisted:
    raise _corrupt(directory, f"{len(unlisted)} file(s) not in {CHECKSUMS_FILE} "
                              f"({unlisted[0]}, ...)")


def update_checksums(directory: str | os.PathLike) -> pathlib.Path:
  """Rewrites checksums.json to cover the checkpoint's files as they are now (a checkpoint of an
  older dllm_jax, or one whose config.json or tokenizer files were changed on purpose). The
  params/ files are first checked against the checksums they had, if any."""
  directory = pathlib.Path(directory).absolute()
  load_config(directory)
  weights = None
  if (directory / CHECKSUMS_FILE).is_file():
    record = _read_checksums(directory)
    params = {k: v for k, v in record["files"].items() if k.startswith(PARAMS_DIR + "/")}
    got = _file_digests(directory, params_only=True)
    changed = sorted(k for k in set(params) | set(got) if params.get(k) != got.get(k))
    if changed:
      raise _corrupt(directory, f"{len(changed)} params/ file(s) differ from their checksums "
                                f"({changed[0]}, ...)")
    weights = record.get("weights")
  if weights is None:
    params, _ = load(directory, verify_checksums=False)
    digests = _params_digests(params)
    weights = None if digests is None else _weights_digest(digests)
  record = {"weights": weights, "files": _file_digests(directory)}
  temp = directory / f".{CHECKSUMS_FILE}.tmp-{os.getpid()}"
  temp.write_text(json.dumps(record, indent=1))
  os.replace(temp, directory / CHECKSUMS_FILE)
  return directory / CHECKSUMS_FILE


def fingerprint(directory: str | os.PathLike) -> str:
  """A short hash that identifies a checkpoint's weights and config: the same for two
  conversions of the same weights, different when any value differs."""
  directory = pathlib.Path(directory)
  record = _read_checksums(directory) if (directory / CHECKSUMS_FILE).is_file() else {}
  weights = record.get("weights") or _weights_digest(_file_digests(directory, params_only=True))
  text = weights + load_config(directory).to_json()
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def save(directory: str | os.PathLike, params: Params, config: ModelConfig, *,
         overwrite: bool = False) -> pathlib.Path:
  """Writes `params` (any placement; gathered by Orbax) and `config` as a checkpoint."""
  with _atomic_directory(directory, overwrite) as temp:
    ocp.save(temp / PARAMS_DIR, params)
    (temp / CONFIG_FILE).write_text(config.to_json())
    _write_checksums(temp, _params_digests(params))
  return pathlib.Path(directory)


def load_config(directory: str | os.PathLike) -> ModelConfig:
  path = pathlib.Path(directory) / CONFIG_FILE
  if not path.is_file():
    raise FileNotFoundError(f"{directory} is not a dllm_jax checkpoint (no {CONFIG_FILE})")
  try:
    return ModelConfig.from_json(path.read_text(encoding="utf-8"))
  except (ValueError, TypeError, UnicodeDecodeError) as e:  # not JSON, or not a ModelConfig
    first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
    raise _corrupt(directory, f"{CONFIG_FILE} is not a model config ({first})") from None


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
    (temp / CONFIG_FILE).write_text(config.to_json())
    _copy_tokenizer_files(hf_dir, temp / TOKENIZER_DIR)
    _write_checksums(temp, digests)
  return config


def _copy_tokenizer_files(source: pathlib.Path, target: pathlib.Path) -> None:
  """Copies those of `TOKENIZER_FILES` that `source` holds into `target` (made if any is)."""
  files = [source / name for name in TOKENIZER_FILES if (source / name).is_file()]
  if files:
    target.mkdir(exist_ok=True)
    for file in files:
      shutil.copy2(file, target / file.name)


def export_hf(ckpt_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
              max_shard_bytes: int = 5 * 2**30, overwrite: bool = False,
              verify_checksums: bool = True) -> list[pathlib.Path]:
  """Writes a checkpoint back as HF safetensors in its family's original key layout, with the
  tokenizer files it carries (as `convert_hf` took them)."""
  out = pathlib.Path(out_dir).absolute()
  if out.exists() and not overwrite:  # before the (long) load
    raise FileExistsError(f"{out} already exists (pass --overwrite / overwrite=True to "
                          "replace it)")
  params, config = load(ckpt_dir, verify_checksums=verify_checksums)
  with _atomic_directory(out_dir, overwrite) as temp:
    files = write_checkpoint(hf_layout.hf_tensors(params, config), temp, max_shard_bytes)
    (temp / CONFIG_FILE).write_text(json.dumps(to_hf_config(config), indent=2))
    _copy_tokenizer_files(pathlib.Path(ckpt_dir) / TOKENIZER_DIR, temp)
  return [pathlib.Path(out_dir) / f.name for f in files]
