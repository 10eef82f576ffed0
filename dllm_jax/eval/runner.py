"""The experiment loop: n samples per problem, decoded in sharded batches, graded, and appended to
JSONL as they are produced, so an interrupted run resumes where it stopped.

Work units are (problem, sample index) pairs. Each has its own random key,
fold_in(fold_in(key(seed), crc32(problem id)), sample index), and the sampler draws each row's
randomness from its own key, so a unit's sample is the same whatever batch, order, process or
resumption it is decoded in. A rerun reads every `results*.jsonl` in the output directory and
decodes only the missing units.

Multi-host: every process builds the same global batch and runs the same compiled `generate` on
a global mesh; each writes the rows it owns (those whose lowest-numbered holder device is one of
its own) to its own file, `results.process-<i>-of-<n>.jsonl`.

Files beside the results: `config.json` (what defines the run; a rerun with a different one is an
error) and `versions.json` (software and devices).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import platform
import sys
import time
import zlib
from typing import Any, Callable, Iterator, Sequence

import jax
import numpy as np

from dllm_jax import sampling, sharding
from dllm_jax.data.problems import Problem
from dllm_jax.data.tokenize import pad_left
from dllm_jax.eval import grading
from dllm_jax.sampling.imh import IMH
from dllm_jax.sampling.streaming import StreamingSampler, stream_generate
from dllm_jax.sampling.remasking import (DreamOrigin, Entropy, LowConfidence, MaskGitPlus,
                                         Threshold, TopKMargin)

CONFIG_FILE, VERSIONS_FILE = "config.json", "versions.json"


@dataclasses.dataclass(frozen=True)
class Model:
  denoise: Callable
  params: Any
  max_length: int


def unit_key(seed: int, problem_id: str, sample: int) -> jax.Array:
  problem_key = jax.random.fold_in(jax.random.key(seed), zlib.crc32(problem_id.encode()) >> 1)
  return jax.random.fold_in(problem_key, sample)


def can_sample(sampler: sampling.Sampler) -> bool:
  """Whether two runs of `sampler` with different keys can give different tokens."""
  if isinstance(sampler, StreamingSampler):
    return sampler.imh is not None or sampler.temperature > 0
  rule = sampler.remasking
  if isinstance(rule, IMH) or sampler.token_temperature > 0:
    return True
  if isinstance(rule, (LowConfidence, Threshold)):
    return False  # argmax tokens in a fixed order
  if isinstance(rule, (MaskGitPlus, TopKMargin, Entropy)):
    return rule.alg_temp > 0
  return True  # Random and DreamOrigin draw the order


def results_files(output_dir: pathlib.Path) -> list[pathlib.Path]:
  return sorted(pathlib.Path(output_dir).glob("results*.jsonl"))


def read_results(output_dir: str | os.PathLike) -> list[dict[str, Any]]:
  """Every record of every results file. A last line cut off by an interruption is skipped; a
  malformed line elsewhere is an error."""
  records = []
  for path in results_files(pathlib.Path(output_dir)):
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines, 1):
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError as e:
        if number == len(lines):
          break
        raise ValueError(f"{path}:{number}: malformed results line ({e})") from e
  return records


def _check_config(output_dir: pathlib.Path, run_config: dict[str, Any]) -> None:
  path = output_dir / CONFIG_FILE
  text = json.dumps(run_config, indent=2, sort_keys=True, default=str)
  if path.exists():
    old = json.loads(path.read_text())
    new = json.loads(text)
    if old != new:
      changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
      raise ValueError(f"{output_dir} holds a run with a different configuration (differs in "
                       f"{changed}); use another --output_dir or the same flags")
  elif jax.process_index() == 0:
    path.write_text(text)


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


def _drop_partial_line(path: pathlib.Path) -> None:
  """Cuts a last line that an interruption left without its newline (it is rewritten)."""
  if not path.exists() or path.stat().st_size == 0:
    return
  data = path.read_bytes()
  if not data.endswith(b"\n"):
    with open(path, "r+b") as f:
      f.truncate(data.rfind(b"\n") + 1)


class _Progress:
  """One stderr line: done/total, rate and ETA."""

  def __init__(self, total: int, already: int, enabled: bool):
    self.total, self.done, self.start, self.enabled = total, already, time.time(), enabled
    self.already = already

  def update(self, count: int) -> None:
    self.done += count
    if not self.enabled:
      return
    rate = (self.done - self.already) / max(time.time() - self.start, 1e-9)
    eta = (self.total - self.done) / rate if rate > 0 else float("inf")
    sys.stderr.write(f"\r{self.done}/{self.total} samples  {rate:.2f}/s  ETA {eta:.0f}s   ")
    if self.done >= self.total:
      sys.stderr.write("\n")
    sys.stderr.flush()


def _batches(items: list, size: int) -> Iterator[list]:
  for start in range(0, len(items), size):
    yield items[start:start + size]


def run(*, problems: Sequence[Problem], prompts: Sequence[Sequence[int]],
        decode: Callable[[Sequence[int]], str], stop_ids: Sequence[int], pad_id: int,
        model: Model,
        sampler: sampling.Sampler, n_samples: int, output_dir: str | os.PathLike,
        run_config: dict[str, Any], mesh: jax.sharding.Mesh | None = None,
        batch_size: int = 8, seed: int = 0, allow_greedy: bool = False,
        progress: bool = True, grade_workers: int | None = None,
        after_batch: Callable[[int], None] | None = None) -> pathlib.Path:
  """Decodes, grades and records `n_samples` samples of every problem; returns the results dir.

  `prompts[i]` are the token ids of problem i's prompt; `decode` turns generated ids (cut at the
  first of `stop_ids`) into the response text; `run_config` is what defines the run (compared
  on resume). `after_batch(batches_done)` is called after each batch is written.
  """
  if n_samples < 1:
    raise ValueError(f"n_samples must be >= 1, got {n_samples}")
  if len(prompts) != len(problems):
    raise ValueError(f"{len(problems)} problems but {len(prompts)} prompts")
  if n_samples > 1 and not can_sample(sampler) and not allow_greedy:
    raise ValueError(
        f"{n_samples} samples per problem, but {getattr(sampler, 'remasking', sampler)!r} at "
        f"temperature {sampler.token_temperature} is deterministic: every sample would be the same. Set a "
        "temperature > 0 (or alg_temp), use a sampling rule, or allow it explicitly")
  mesh = mesh or sharding.make_mesh(data=-1, model=1)
  output_dir = pathlib.Path(output_dir)
  output_dir.mkdir(parents=True, exist_ok=True)
  _check_config(output_dir, run_config)
  if jax.process_index() == 0:
    (output_dir / VERSIONS_FILE).write_text(json.dumps(software_versions(), indent=2))

  prompt_length = max(len(p) for p in prompts)
  if prompt_length + sampler.gen_length > model.max_length:
    longest = problems[int(np.argmax([len(p) for p in prompts]))].id
    raise ValueError(f"the longest prompt ({longest}, {prompt_length} tokens) + gen_length "
                     f"{sampler.gen_length} exceeds the model's context of {model.max_length}")
  done = {(r["problem_id"], r["sample"]) for r in read_results(output_dir)}
  units = [(i, s) for i, problem in enumerate(problems) for s in range(n_samples)
           if (problem.id, s) not in done]
  data = mesh.shape[sharding.DATA]
  batch_size = -(-batch_size // data) * data  # a multiple of the data axis
  name = ("results.jsonl" if jax.process_count() == 1 else
          f"results.process-{jax.process_index():05d}-of-{jax.process_count():05d}.jsonl")
  bar = _Progress(len(problems) * n_samples, len(problems) * n_samples - len(units),
                  progress and jax.process_index() == 0)
  stop = np.asarray(list(stop_ids))
  _drop_partial_line(output_dir / name)
  with open(output_dir / name, "a", encoding="utf-8") as results:
    for batch_index, batch in enumerate(_batches(units, batch_size)):
      rows = batch + [batch[0]] * (batch_size - len(batch))  # padding rows are never written
      tokens, mask = pad_left([prompts[i] for i, _ in rows], pad_id, prompt_length)
      keys = jax.random.wrap_key_data(np.stack(
          [jax.random.key_data(unit_key(seed, problems[i].id, s)) for i, s in rows]))
      placed = sharding.shard_batch(mesh, tokens, mask, keys)
      start = time.time()
      with jax.set_mesh(mesh):
        decode_fn = (stream_generate if isinstance(sampler, StreamingSampler)
                     else sampling.generate)
        out = jax.block_until_ready(decode_fn(sampler, model.denoise, model.params, *placed))
      seconds = (time.time() - start) / batch_size
      generated = _owned_rows(out.generated_BG)
      nfe, logprob = _owned_rows(out.nfe_B[:, None]), _owned_rows(out.logprob_BG)
      owned = sorted(r for r in generated if r < len(batch))
      responses = []
      for r in owned:
        ids = generated[r].tolist()
        cut = next((j for j, t in enumerate(ids) if t in stop), len(ids))
        responses.append(decode(ids[:cut]))
      grades = grading.grade_responses([problems[batch[r][0]] for r in owned], responses,
                                       workers=grade_workers)
      for r, response, grade in zip(owned, responses, grades):
        i, s = batch[r]
        record = {"problem_id": problems[i].id, "sample": s, "response": response,
                  "answer": grade.answer, "correct": grade.correct,
                  "nfe": int(nfe[r][0]), "seconds": seconds,
                  "neg_logprob": float(-np.mean(logprob[r])),
                  "tokens": generated[r].tolist()}
        results.write(json.dumps(record) + "\n")
      results.flush()
      os.fsync(results.fileno())
      bar.update(len(batch))
      if after_batch is not None:
        after_batch(batch_index + 1)
  return output_dir
