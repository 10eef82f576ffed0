"""The experiment loop: n samples per problem, decoded in sharded batches, graded, and appended to
JSONL as they are produced, so an interrupted run resumes where it stopped.

Work units are (problem, sample index) pairs. Each has its own random key,
fold_in(fold_in(key(seed), crc32(problem id)), sample index), and the sampler draws each row's
randomness from its own key, so a unit's sample is the same whatever batch, order, process or
resumption it is decoded in. A rerun reads the run's own results files (`results.jsonl`, or
`results.process-<i>-of-<n>.jsonl`; other files such as a backup copy are ignored) and decodes
only the missing units. Raising `n_samples` on an existing run adds the new sample indices only.

Multi-host: every process builds the same global batch and runs the same compiled `generate` on
a global mesh; each writes the rows it owns (those whose lowest-numbered holder device is one of
its own) to its own file, `results.process-<i>-of-<n>.jsonl`.

Files beside the results: `config.json` (what defines the run, the weights' fingerprint included;
a rerun with a different one is an error), `versions.json` (software and devices) and `run.lock`
(held by the running process, with its pid, host and start time: a second run of the same
directory is refused). Everything is validated before anything is written.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import json
import os
import pathlib
import platform
import re
import socket
import sys
import time
import zlib
from typing import Any, Callable, Iterator, Sequence

import jax
import numpy as np
import tqdm
from jax.sharding import NamedSharding, PartitionSpec

from dllm_jax import sampling, sharding
from dllm_jax.data.problems import Problem
from dllm_jax.data.tokenize import pad_left
from dllm_jax.eval import grading
from dllm_jax.sampling.block_batch import generate_padded
from dllm_jax.sampling.block_diffusion import BlockDiffusion
from dllm_jax.sampling.imh import IMH
from dllm_jax.sampling.position_first import EGI, RankThenSample
from dllm_jax.sampling.streaming import StreamingSampler, stream_generate
from dllm_jax.sampling.remasking import (DreamOrigin, Entropy, LowConfidence, MaskGitPlus,
                                         Threshold, TopKMargin, WeDLMEntropy)

CONFIG_FILE, VERSIONS_FILE, LOCK_FILE = "config.json", "versions.json", "run.lock"
ABSENT = object()  # what a run's `equivalent` gets for a key that one of two records lacks
_RESULTS_NAME = re.compile(r"results(\.process-\d{5}-of-\d{5})?\.jsonl")


class RunInUseError(RuntimeError):
  """Another process holds the output directory's lock."""


@dataclasses.dataclass(frozen=True)
class Model:
  denoise: Callable
  params: Any
  max_length: int
  policy_params: Any = None  # a LearnedPolicy sampler's network params


def unit_key(seed: int, problem_id: str, sample: int) -> jax.Array:
  problem_key = jax.random.fold_in(jax.random.key(seed), zlib.crc32(problem_id.encode()) >> 1)
  return jax.random.fold_in(problem_key, sample)


def can_sample(sampler: sampling.Sampler) -> bool:
  """Whether two runs of `sampler` with different keys can give different tokens."""
  if isinstance(sampler, StreamingSampler):
    return sampler.imh is not None or sampler.temperature > 0
  if isinstance(sampler, BlockDiffusion):
    return sampler.samples  # temperature > 0 or a rule that draws
  rule = sampler.remasking
  if isinstance(rule, IMH) or sampler.token_temperature > 0:
    return True
  if isinstance(rule, (LowConfidence, Threshold)):
    return False  # argmax tokens in a fixed order
  if isinstance(rule, (MaskGitPlus, TopKMargin, Entropy, WeDLMEntropy, RankThenSample)):
    return rule.alg_temp > 0
  if isinstance(rule, EGI):
    return rule.alg_temp > 0 or rule.first_temperature > 0
  return True  # Random and DreamOrigin draw the order


def _token_temperature(sampler) -> float:
  return getattr(sampler, "token_temperature", getattr(sampler, "temperature", 0.0))


def cut_response(ids: Sequence[int], stop_ids: Sequence[int],
                 stop_sequences: Sequence[Sequence[int]] = (), prompt: Sequence[int] = ()
                 ) -> list[int]:
  """The generated ids a response keeps: those before the first of `stop_ids`, then, as
  Tencent's WeDLM engine applies stop strings (each string tokenized alone; after every new
  token, does the prompt + generated ids end with one? `wedlm/engine/sequence.py:178-185`,
  `wedlm/engine/scheduler.py:134-151`), up to and including the first token that ends one."""
  ids = list(ids)
  ids = ids[:next((j for j, t in enumerate(ids) if t in stop_ids), len(ids))]
  text = list(prompt) + ids
  for end in range(len(prompt) + 1, len(text) + 1):
    if any(seq and end >= len(seq) and text[end - len(seq):end] == list(seq)
           for seq in stop_sequences):
      return ids[:end - len(prompt)]
  return ids


def results_files(output_dir: pathlib.Path) -> list[pathlib.Path]:
  """The run's own results files (not, say, a backup copy made beside them)."""
  return sorted(p for p in pathlib.Path(output_dir).iterdir() if _RESULTS_NAME.fullmatch(p.name))


# What every results record holds, with its type (the report reads all of these).
RECORD_FIELDS = {"problem_id": str, "sample": int, "answer": (str, type(None)), "correct": bool,
                 "nfe": int, "seconds": (int, float), "neg_logprob": (int, float)}


def _record_problem(record: Any) -> str | None:
  """What is wrong with a parsed results line, or None when it is a whole record."""
  if not isinstance(record, dict):
    return f"a JSON {type(record).__name__}, not a record"
  missing = [k for k in RECORD_FIELDS if k not in record]
  if missing:
    return f"a record without {missing}"
  wrong = [k for k, kind in RECORD_FIELDS.items()
           if not isinstance(record[k], kind) or (kind is int and isinstance(record[k], bool))]
  return f"a record whose {wrong} have the wrong type" if wrong else None


def _parse_lines(path: pathlib.Path) -> list[dict[str, Any]]:
  """The records of one file. A last line cut off by an interruption (not valid JSON) is
  skipped; a complete last record without its newline is kept; a malformed line elsewhere, or
  any line that is not a whole record, is an error naming the file and line."""
  records = []
  try:
    lines = path.read_text(encoding="utf-8").splitlines()
  except UnicodeDecodeError as e:
    raise ValueError(f"{path} is not a text file of results ({e.reason} at byte {e.start}); "
                     "move it away") from None
  for number, line in enumerate(lines, 1):
    try:
      record = json.loads(line)
    except json.JSONDecodeError as e:
      if number == len(lines):
        break
      raise ValueError(f"{path}:{number}: malformed results line ({e}); move the file away or "
                       "fix that line") from None
    problem = _record_problem(record)
    if problem:
      raise ValueError(f"{path}:{number}: {problem}; move the file away or fix that line")
    records.append(record)
  return records


def read_results(output_dir: str | os.PathLike) -> list[dict[str, Any]]:
  """Every record of the run's results files, each (problem, sample) once (the first written)."""
  records, seen = [], set()
  for path in results_files(pathlib.Path(output_dir)):
    for record in _parse_lines(path):
      unit = (record["problem_id"], record["sample"])
      if unit not in seen:
        seen.add(unit)
        records.append(record)
  return records


def read_run_config(output_dir: str | os.PathLike) -> dict[str, Any]:
  """The run's config.json (what defines it), checked to be a JSON object."""
  path = pathlib.Path(output_dir) / CONFIG_FILE
  if not path.is_file():
    raise FileNotFoundError(f"{output_dir} is not a run directory (no {CONFIG_FILE})")
  try:
    record = json.loads(path.read_text(encoding="utf-8"))
  except (ValueError, UnicodeDecodeError) as e:
    raise ValueError(f"{path} is not valid JSON ({e}); restore it, or use another "
                     "--output_dir") from None
  if not isinstance(record, dict):
    raise ValueError(f"{path} is not a run's record (a JSON {type(record).__name__}); restore "
                     "it, or use another --output_dir")
  return record


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
  return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def _check_config(output_dir: pathlib.Path, run_config: dict[str, Any],
                  equivalent: Callable[[dict[str, Any], str, Any, Any], bool] | None) -> None:
  """Refuses a run whose configuration differs from the one already in `output_dir`, except for a
  larger `n_samples` (recorded) and differences `equivalent` accepts (an older record's form of
  the same run: the record is then rewritten in the current form)."""
  path = output_dir / CONFIG_FILE
  new = json.loads(json.dumps(run_config, sort_keys=True, default=str))
  if path.exists():
    old = read_run_config(output_dir)
    if "weights" in old and old.get("weights") != new.get("weights"):
      raise ValueError(
          f"{output_dir} holds samples of other weights (fingerprint {old['weights']}; the "
          f"checkpoint now has {new.get('weights')}): resuming would mix two models. Use another "
          "--output_dir, or convert the new weights to another checkpoint path")
    changed = _differences({k: v for k, v in old.items() if k != "n_samples"},
                           {k: v for k, v in new.items() if k != "n_samples"})
    if equivalent is not None:
      changed = [k for k in changed
                 if not equivalent(old, k, old.get(k, ABSENT), new.get(k, ABSENT))]
    if changed:
      raise ValueError(f"{output_dir} holds a run with a different configuration (differs in "
                       f"{changed}); use another --output_dir or the same flags")
    if new.get("n_samples", 0) < old.get("n_samples", 0):
      raise ValueError(f"{output_dir} holds a run with --n_samples={old['n_samples']}; it can be "
                       f"raised but not lowered (got {new['n_samples']})")
    if old == new:
      return
  if jax.process_index() == 0:
    path.write_text(json.dumps(new, indent=2, sort_keys=True))


def _lock(output_dir: pathlib.Path):
  """Takes the directory's lock (released when the process ends); refuses when it is held."""
  name = LOCK_FILE if jax.process_count() == 1 else f"run.process-{jax.process_index():05d}.lock"
  f = open(output_dir / name, "a+", encoding="utf-8")  # pylint: disable=consider-using-with
  try:
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    f.seek(0)
    holder = f.read().strip() or "unknown process"
    f.close()
    raise RunInUseError(f"{output_dir} is in use by another run ({holder}); wait for it to end, "
                        "or stop it, or use another --output_dir") from None
  try:
    f.truncate(0)
    f.write(f"pid {os.getpid()} on {socket.gethostname()} since "
            f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}\n")
    f.flush()
  except OSError as e:  # a full disk: name the file
    f.close()
    raise OSError(e.errno, e.strerror, str(output_dir / name)) from None
  return f


def software_versions() -> dict[str, Any]:
  import flax  # pylint: disable=import-outside-toplevel
  import jaxlib  # pylint: disable=import-outside-toplevel
  import dllm_jax  # pylint: disable=import-outside-toplevel
  return {"python": sys.version.split()[0], "platform": platform.platform(),
          "jax": jax.__version__, "jaxlib": jaxlib.__version__, "flax": flax.__version__,
          "numpy": np.__version__, "dllm_jax": dllm_jax.__version__,
          "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
          "processes": jax.process_count()}


def _owned_rows(array: jax.Array) -> dict[int, np.ndarray]:
  """The rows of a batch-sharded array that this process writes: each row is owned by the
  process of the lowest-numbered device holding it."""
  owner: dict[tuple, jax.Device] = {}
  for device, index in array.sharding.devices_indices_map(array.shape).items():
    key = (index[0].start, index[0].stop)
    if key not in owner or device.id < owner[key].id:
      owner[key] = device
  rows = {}
  for shard in array.addressable_shards:
    key = (shard.index[0].start, shard.index[0].stop)
    if owner[key] == shard.device:
      start = key[0] or 0
      for offset, row in enumerate(np.asarray(shard.data)):
        rows[start + offset] = row
  return rows


def _repair_last_line(path: pathlib.Path) -> None:
  """A last line without its newline: a complete record gets its newline, a cut-off one (the
  interruption came mid-write) is removed, so that every line is a whole record."""
  if not path.exists() or path.stat().st_size == 0:
    return
  data = path.read_bytes()
  if data.endswith(b"\n"):
    return
  start = data.rfind(b"\n") + 1
  try:
    json.loads(data[start:])
    complete = True
  except ValueError:
    complete = False
  with open(path, "r+b") as f:
    if complete:
      f.seek(0, os.SEEK_END)
      f.write(b"\n")
    else:
      f.truncate(start)


def _progress_bar(total: int, already: int, enabled: bool) -> tqdm.tqdm:
  """Samples done of `total`; its clock starts after compilation, so the rate and ETA are those of
  decoding. Outside a terminal (a log file) it writes a line a minute instead of redrawing."""
  tty = sys.stderr.isatty()
  return tqdm.tqdm(total=total, initial=already, unit="sample", file=sys.stderr,
                   disable=not enabled, dynamic_ncols=tty, mininterval=0.5 if tty else 60.0,
                   smoothing=0.0, ascii=not tty)


def _results_name() -> str:
  """This process's results file."""
  return ("results.jsonl" if jax.process_count() == 1 else
          f"results.process-{jax.process_index():05d}-of-{jax.process_count():05d}.jsonl")


def _batches(items: list, size: int) -> Iterator[list]:
  for start in range(0, len(items), size):
    yield items[start:start + size]


def run(*, problems: Sequence[Problem], prompts: Sequence[Sequence[int]],
        decode: Callable[[Sequence[int]], str], stop_ids: Sequence[int], pad_id: int,
        model: Model, stop_sequences: Sequence[Sequence[int]] = (),
        sampler: sampling.Sampler, n_samples: int, output_dir: str | os.PathLike,
        run_config: dict[str, Any], mesh: jax.sharding.Mesh | None = None,
        batch_size: int = 8, seed: int = 0, allow_greedy: bool = False,
        progress: bool = True, grade_workers: int | None = None,
        after_batch: Callable[[int], None] | None = None,
        log: Callable[[str], None] | None = None,
        equivalent: Callable[[dict[str, Any], str, Any, Any], bool] | None = None
        ) -> pathlib.Path:
  """Decodes, grades and records `n_samples` samples of every problem; returns the results dir.

  `prompts[i]` are the token ids of problem i's prompt; `decode` turns generated ids (cut at the
  first of `stop_ids`, and after the first of `stop_sequences`: `cut_response`) into the
  response text; `run_config` is what defines the run (compared on resume;
  `equivalent(old_record, key, old_value, new_value)` may accept a difference as an older
  record's form of the same run, `ABSENT` standing for a missing key).
  `after_batch(batches_done)` is called after each batch is written; `log` gets a
  line for each phase (default: stderr when `progress`). A record's `seconds` is decoding time per
  row of its batch, without compilation (done once, before the first batch).
  """
  if log is None:
    log = (lambda line: print(line, file=sys.stderr, flush=True)) if progress else (lambda _: None)
  if n_samples < 1:
    raise ValueError(f"n_samples must be >= 1, got {n_samples} (--n_samples)")
  if batch_size < 1:
    raise ValueError(f"batch_size must be >= 1, got {batch_size} (--batch_size)")
  if not problems:
    raise ValueError("no problems to run (--limit must be >= 1)")
  if len(prompts) != len(problems):
    raise ValueError(f"{len(problems)} problems but {len(prompts)} prompts")
  if n_samples > 1 and not can_sample(sampler) and not allow_greedy:
    raise ValueError(
        f"{n_samples} samples per problem, but {getattr(sampler, 'remasking', sampler)!r} at "
        f"temperature {_token_temperature(sampler)} is deterministic: every sample would be the same. Set "
        "--temperature > 0 (or --alg_temp), use a sampling rule, or pass "
        "--allow_identical_samples")
  prompt_length = max(len(p) for p in prompts)
  if prompt_length + sampler.gen_length > model.max_length:
    longest = problems[int(np.argmax([len(p) for p in prompts]))].id
    raise ValueError(f"the longest prompt ({longest}, {prompt_length} tokens) + gen_length "
                     f"{sampler.gen_length} exceeds the model's context of {model.max_length}; "
                     "lower --gen_length or --limit the problems")
  mesh = mesh or sharding.make_mesh(data=-1, model=1)
  output_dir = pathlib.Path(output_dir).absolute()
  if output_dir.exists() and not output_dir.is_dir():
    raise NotADirectoryError(f"--output_dir {output_dir} is a file; name a directory (a new one, "
                             "or a run's to resume it)")
  output_dir.mkdir(parents=True, exist_ok=True)
  lock = _lock(output_dir)
  try:
    _check_config(output_dir, run_config, equivalent)
    if jax.process_index() == 0:
      (output_dir / VERSIONS_FILE).write_text(json.dumps(software_versions(), indent=2))

    done = {(r["problem_id"], r["sample"]) for r in read_results(output_dir)}
    units = [(i, s) for i, problem in enumerate(problems) for s in range(n_samples)
             if (problem.id, s) not in done]
    data = mesh.shape[sharding.DATA]
    batch_size = -(-batch_size // data) * data  # a multiple of the data axis
    name = _results_name()
    total = len(problems) * n_samples
    if jax.process_index() != 0:
      log = lambda _: None
    log(f"{output_dir}: {total - len(units)} of {total} samples already done, "
        f"{len(units)} to decode in batches of {batch_size}")
    _repair_last_line(output_dir / name)
    compiled, bar = None, None
    with open(output_dir / name, "a", encoding="utf-8") as results:
      for batch_index, batch in enumerate(_batches(units, batch_size)):
        rows = batch + [batch[0]] * (batch_size - len(batch))  # padding rows are never written
        tokens, mask = pad_left([prompts[i] for i, _ in rows], pad_id, prompt_length)
        keys = jax.random.wrap_key_data(np.stack(
            [jax.random.key_data(unit_key(seed, problems[i].id, s)) for i, s in rows]))
        placed = sharding.shard_batch(mesh, tokens, mask, keys)
        with jax.set_mesh(mesh):
          if compiled is None:  # every batch has one shape: one compilation, timed apart
            log("compiling the sampler (once per run) ...")
            start = time.time()
            decode_fn = (stream_generate if isinstance(sampler, StreamingSampler)
                         else generate_padded if isinstance(sampler, BlockDiffusion)
                         else sampling.generate)
            extra = ({} if model.policy_params is None
                     else {"policy_params": jax.device_put(model.policy_params,
                                                           NamedSharding(mesh, PartitionSpec()))})
            compiled = decode_fn.lower(sampler, model.denoise, model.params, *placed,
                                       **extra).compile()
            log(f"compiled in {time.time() - start:.1f} s")
            bar = _progress_bar(total, total - len(units), progress and jax.process_index() == 0)
          start = time.time()
          out = jax.block_until_ready(compiled(model.params, *placed, **extra))
        seconds = (time.time() - start) / batch_size
        generated = _owned_rows(out.generated_BG)
        nfe, logprob = _owned_rows(out.nfe_B[:, None]), _owned_rows(out.logprob_BG)
        owned = sorted(r for r in generated if r < len(batch))
        responses = []
        for r in owned:
          responses.append(decode(cut_response(generated[r].tolist(), stop_ids, stop_sequences,
                                               prompts[batch[r][0]])))
        grades = grading.grade_responses([problems[batch[r][0]] for r in owned], responses,
                                         workers=grade_workers)
        for r, response, grade in zip(owned, responses, grades):
          i, s = batch[r]
          record = {"problem_id": problems[i].id, "sample": s, "response": response,
                    "answer": grade.answer, "correct": grade.correct, "detail": grade.detail,
                    "nfe": int(nfe[r][0]), "seconds": seconds,
                    "neg_logprob": float(-np.mean(logprob[r])),
                    "tokens": generated[r].tolist()}
          results.write(json.dumps(record) + "\n")
        results.flush()
        os.fsync(results.fileno())
        bar.update(len(batch))
        if after_batch is not None:
          after_batch(batch_index + 1)
    if bar is not None:
      bar.close()
    return output_dir
  except OSError as error:
    # A full disk: name the file (a failed write names none). Resuming loses nothing.
    if error.filename is None and error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
      raise OSError(error.errno, error.strerror, str(output_dir / _results_name())) from error
    raise
  finally:
    lock.close()
