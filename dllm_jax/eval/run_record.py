"""The record that defines a benchmark run (its `config.json`), and when an older record means the
same run.

A run is defined by content, never by where files lie: the weights and model config (the
checkpoint's fingerprint), the tokenizer files, the chat template, the problems and the sampler. A
checkpoint moved or copied elsewhere with identical files therefore resumes its runs.

Records written by older versions of dllm_jax stay resumable when the only differences are:
- fields added since then with their default values (a model-config field, a sampler field at
  any depth, or a top-level key listed in `ADDED_KEYS`);
- the checkpoint path and chat-template file those versions recorded instead of content
  fingerprints, when they name the same checkpoint and template as now.
Anything else differs, and the runner refuses to mix the two runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
from typing import Any, Callable

from dllm_jax import checkpoint
from dllm_jax.eval.runner import ABSENT
from dllm_jax.models.config import ModelConfig

MISSING = object()  # a dataclass field without a default

# Top-level keys added to the record after runs were made, with the value their absence means.
ADDED_KEYS: dict[str, Any] = {}


def files_fingerprint(directory: pathlib.Path, names: tuple[str, ...]) -> str | None:
  """A short hash of the contents of those of `names` present in `directory` (None: none is)."""
  digest, found = hashlib.sha256(), False
  for name in names:
    path = directory / name
    if path.is_file():
      found = True
      digest.update(name.encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
  return digest.hexdigest()[:16] if found else None


def template_fingerprint(template) -> str | None:
  """A `prompts.ChatTemplate` as recorded: where it came from, without directories (the family's
  fallback, or the file's name), and a short hash of its text and special tokens (None: plain
  prompts)."""
  if template is None:
    return None
  source = template.source.split(" (", 1)[0]  # "fallback:llada (none in <dir>)"
  label = source if source.startswith("fallback:") else pathlib.Path(source).name
  parts = (template.template, template.bos_token, template.eos_token)
  digest = hashlib.sha256("\0".join(str(part) for part in parts).encode()).hexdigest()[:16]
  return f"{label} {digest}"


def build(*, checkpoint_dir: pathlib.Path, tokenizer_dir: pathlib.Path, config: ModelConfig,
          benchmark: str, problem_ids: list[str], template, sampler, n_samples: int,
          seed: int) -> dict[str, Any]:
  """The record of a run (JSON-ready)."""
  return {"weights": checkpoint.fingerprint(checkpoint_dir),
          "tokenizer": files_fingerprint(tokenizer_dir, checkpoint.TOKENIZER_FILES),
          "model": dataclasses.asdict(config), "benchmark": benchmark, "problems": problem_ids,
          "chat_template": template_fingerprint(template), "sampler": repr(sampler),
          "n_samples": n_samples, "seed": seed}


def _field_default(field: dataclasses.Field) -> Any:
  if field.default is not dataclasses.MISSING:
    return field.default
  if field.default_factory is not dataclasses.MISSING:
    return field.default_factory()
  return MISSING


def _repr_omitting(obj: Any, omit: Callable[[dataclasses.Field, Any], bool]) -> str:
  """`repr(obj)` as dataclasses write it, leaving out (at any depth) the fields `omit` names."""
  if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
    parts = [f"{f.name}={_repr_omitting(getattr(obj, f.name), omit)}"
             for f in dataclasses.fields(obj) if f.repr and not omit(f, getattr(obj, f.name))]
    return f"{type(obj).__qualname__}({', '.join(parts)})"
  if isinstance(obj, (tuple, list)) and type(obj) in (tuple, list):
    items = [_repr_omitting(item, omit) for item in obj]
    if isinstance(obj, tuple):
      return f"({items[0]},)" if len(items) == 1 else f"({', '.join(items)})"
    return f"[{', '.join(items)}]"
  return repr(obj)


def same_sampler(old_repr: str, sampler: Any) -> bool:
  """Whether `old_repr` is `sampler`'s repr but for fields it lacks that are at their default
  (fields added since it was written)."""
  if _repr_omitting(sampler, lambda f, v: False) != repr(sampler):
    return False  # a hand-written __repr__ somewhere: only an exact match counts
  def added_default(field, value):
    default = _field_default(field)
    return f"{field.name}=" not in old_repr and default is not MISSING and value == default
  return _repr_omitting(sampler, added_default) == old_repr


def same_model(old: Any, new: dict[str, Any]) -> bool:
  """Whether an older model record is `new` but for fields added since at their defaults."""
  if not isinstance(old, dict):
    return False
  defaults = {f.name: json.loads(json.dumps(_field_default(f), default=str))
              for f in dataclasses.fields(ModelConfig) if _field_default(f) is not MISSING}
  if set(old) - set(new):
    return False
  return all(old[k] == v if k in old else (k in defaults and defaults[k] == v)
             for k, v in new.items())


def equivalence(*, sampler: Any, checkpoint_dir: pathlib.Path, template
                ) -> Callable[[dict[str, Any], str, Any, Any], bool]:
  """`equivalent(old_record, key, old, new)` for `runner.run`: whether an older record's value
  of `key` (`runner.ABSENT` when it lacks the key) means the same run as `new` (ABSENT: no
  longer recorded)."""
  template_source = template.source if template is not None else None

  def equivalent(old_record: dict[str, Any], key: str, old: Any, new: Any) -> bool:
    legacy = "checkpoint" in old_record  # older versions recorded paths, not content
    same_place = legacy and old_record["checkpoint"] == str(checkpoint_dir)
    if key == "model":
      return same_model(old, new)
    if key == "sampler":
      return isinstance(old, str) and same_sampler(old, sampler)
    if key == "checkpoint":
      return new is ABSENT and same_place
    if key == "tokenizer":
      return old is ABSENT and same_place
    if key == "chat_template":
      return same_place and old == template_source
    if old is ABSENT and key in ADDED_KEYS:
      return new == ADDED_KEYS[key]
    return False

  return equivalent
