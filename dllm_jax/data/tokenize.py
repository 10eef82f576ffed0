"""Tokenisers for prompts and generations, and left padding of prompt batches.

`Tokenizer` is the small protocol the rest of the library needs: text <-> ids plus the special ids
the samplers use (pad, eos, mask, optional bos). `CheckpointTokenizer` implements it with the
`tokenizers` library over a checkpoint's `tokenizer.json`; special ids come from the checkpoint's
files, first match wins:

- `config.json`: mask_token_id, pad_token_id, eos_token_id, bos_token_id (the ids the model uses;
  LLaDA: mask 126336, eos/pad 126081; Dream: mask 151666, eos/pad 151643);
- `tokenizer_config.json`, then `special_tokens_map.json`: mask_token, pad_token, eos_token,
  bos_token as strings, looked up in the vocabulary;
- mask only: the known mask strings `<|mdm_mask|>` (LLaDA) and `<|mask|>` (Dream); pad only: eos.

`encode` does not add special tokens: the chat template writes BOS itself.

`pad_left` turns prompts of different lengths into one [B, P] int32 array, padded on the left so
that every prompt ends where generation starts, plus a boolean mask of real tokens.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any, Protocol, Sequence, runtime_checkable

import numpy as np
import tokenizers

PathLike = str | os.PathLike

KNOWN_MASK_TOKENS = ("<|mdm_mask|>", "<|mask|>")


@runtime_checkable
class Tokenizer(Protocol):
  """What the samplers and experiments need from a tokenizer."""

  pad_id: int
  eos_id: int
  mask_id: int
  bos_id: int | None

  def encode(self, text: str) -> list[int]:
    ...

  def decode(self, ids: Sequence[int]) -> str:
    ...


def read_json_object(path: pathlib.Path) -> dict[str, Any]:
  """A JSON config file that must hold an object; errors name the file and line."""
  try:
    value = json.loads(path.read_text(encoding="utf-8"))
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}:{e.lineno}: invalid JSON: {e.msg}") from e
  except UnicodeDecodeError as e:
    raise ValueError(f"{path}: not a UTF-8 text file (byte offset {e.start}); restore it") from None
  if not isinstance(value, dict):
    raise ValueError(f"{path}: expected a JSON object")
  return value


def token_string(value: Any) -> str | None:
  """A special token as tokenizer configs store it: a string or an AddedToken dict {"content"}."""
  if isinstance(value, dict):
    value = value.get("content")
  return value if isinstance(value, str) else None


def _first_int(value: Any) -> int | None:
  """An id as configs store it: an int, or a list of ints (several EOS ids) whose first is taken."""
  if isinstance(value, list) and value:
    value = value[0]
  return value if isinstance(value, int) and not isinstance(value, bool) else None


class CheckpointTokenizer:
  """A `tokenizers.Tokenizer` with the special ids of a dLLM checkpoint."""

  def __init__(self, tokenizer: tokenizers.Tokenizer, *, pad_id: int, eos_id: int, mask_id: int,
               bos_id: int | None = None, source: str = "inline"):
    self.tokenizer = tokenizer
    self.source = source
    for name, value in (("pad_id", pad_id), ("eos_id", eos_id), ("mask_id", mask_id),
                        ("bos_id", bos_id)):
      if value is None and name == "bos_id":
        continue
      if not isinstance(value, int) or value < 0 or tokenizer.id_to_token(value) is None:
        raise ValueError(f"{source}: {name} {value} is not in the vocabulary "
                         f"(size {tokenizer.get_vocab_size()})")
    self.pad_id, self.eos_id, self.mask_id, self.bos_id = pad_id, eos_id, mask_id, bos_id

  @classmethod
  def from_checkpoint(cls, checkpoint_dir: PathLike, **overrides: int | None
                      ) -> CheckpointTokenizer:
    """Reads `tokenizer.json` and the special ids of a checkpoint directory.

    Args:
      checkpoint_dir: holds `tokenizer.json`, and some of `config.json`, `tokenizer_config.json`,
        `special_tokens_map.json`.
      **overrides: pad_id, eos_id, mask_id or bos_id to use instead of the files' values.
    """
    directory = pathlib.Path(checkpoint_dir)
    tokenizer_path = directory / "tokenizer.json"
    if not tokenizer_path.is_file():
      raise FileNotFoundError(f"{tokenizer_path} not found (a fast-tokenizer file is needed)")
    unknown = set(overrides) - {"pad_id", "eos_id", "mask_id", "bos_id"}
    if unknown:
      raise TypeError(f"unknown special ids {sorted(unknown)}")
    try:
      tokenizer = tokenizers.Tokenizer.from_file(str(tokenizer_path))
    except Exception as e:  # pylint: disable=broad-except  (the Rust library raises Exception)
      first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
      raise ValueError(f"{tokenizer_path} is not a readable tokenizer ({first}); restore it, "
                       "re-convert the checkpoint, or point --tokenizer_dir at good files"
                       ) from None
    configs = [(directory / name) for name in
               ("tokenizer_config.json", "special_tokens_map.json")]
    token_configs = [read_json_object(path) for path in configs if path.is_file()]
    model_config = (read_json_object(directory / "config.json")
                    if (directory / "config.json").is_file() else {})

    def lookup(name: str, extra_strings: Sequence[str] = ()) -> int | None:
      if name + "_id" in overrides:
        return overrides[name + "_id"]
      from_model = _first_int(model_config.get(f"{name}_token_id"))
      if from_model is not None:
        return from_model
      strings = [token_string(config.get(f"{name}_token")) for config in token_configs]
      for string in [*strings, *extra_strings]:
        token_id = tokenizer.token_to_id(string) if string else None
        if token_id is not None:
          return token_id
      return None

    eos_id = lookup("eos")
    mask_id = lookup("mask", KNOWN_MASK_TOKENS)
    pad_id = lookup("pad")
    for name, value in (("eos", eos_id), ("mask", mask_id)):
      if value is None:
        raise ValueError(
            f"{directory}: no {name} token id found (config.json {name}_token_id, "
            f"{name}_token in tokenizer_config.json / special_tokens_map.json); pass {name}_id=")
    return cls(tokenizer, pad_id=eos_id if pad_id is None else pad_id, eos_id=eos_id,
               mask_id=mask_id, bos_id=lookup("bos"), source=str(directory))

  @property
  def vocab_size(self) -> int:
    return self.tokenizer.get_vocab_size()

  def encode(self, text: str) -> list[int]:
    return self.tokenizer.encode(text, add_special_tokens=False).ids

  def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
    return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

  def token_to_id(self, token: str) -> int | None:
    return self.tokenizer.token_to_id(token)

  def __repr__(self) -> str:
    return (f"CheckpointTokenizer({self.source!r}, vocab_size={self.vocab_size}, "
            f"pad_id={self.pad_id}, eos_id={self.eos_id}, mask_id={self.mask_id}, "
            f"bos_id={self.bos_id})")


def pad_left(sequences: Sequence[Sequence[int]], pad_id: int, length: int | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
  """Left-pads token id lists into one batch.

  Args:
    sequences: B lists of token ids (each non-empty).
    pad_id: id written in the padding.
    length: P, the padded length; None for the longest sequence. A longer sequence is an error.

  Returns:
    tokens_BP: int32 [B, P], each row `[pad_id] * (P - n) + ids`.
    mask_BP: bool [B, P], True on real tokens.
  """
  if not sequences:
    raise ValueError("pad_left needs at least one sequence")
  lengths = [len(ids) for ids in sequences]
  for index, n in enumerate(lengths):
    if n == 0:
      raise ValueError(f"prompt {index} is empty")
  if length is None:
    length = max(lengths)
  for index, n in enumerate(lengths):
    if n > length:
      raise ValueError(f"prompt {index} has {n} tokens, more than the maximum length {length}")
  tokens_BP = np.full((len(sequences), length), pad_id, dtype=np.int32)
  mask_BP = np.zeros((len(sequences), length), dtype=bool)
  for row, ids in enumerate(sequences):
    tokens_BP[row, length - len(ids):] = np.asarray(ids, dtype=np.int64)
    mask_BP[row, length - len(ids):] = True
  return tokens_BP, mask_BP


def encode_prompts(tokenizer: Tokenizer, prompts: Sequence[str], max_length: int | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
  """Encodes prompt texts and left-pads them (to `max_length` when given) with the pad id."""
  return pad_left([tokenizer.encode(prompt) for prompt in prompts], tokenizer.pad_id, max_length)
