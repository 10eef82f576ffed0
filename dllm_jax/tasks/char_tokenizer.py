"""A tiny character-level vocabulary for the built-in tasks, with pad, mask and EOS tokens.

Ids: 0 pad, 1 mask, 2 EOS, then one id per character of `CHARS`. Prompts are left-padded to a
fixed width (pad = False in the prompt mask); answers are right-padded with EOS to the
generation length, as LLaDA's SFT data is, so the model also learns where the answer ends.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

PAD, MASK, EOS = "<pad>", "<mask>", "<eos>"
CHARS = "0123456789+-*/()=, "


@dataclasses.dataclass(frozen=True)
class CharTokenizer:
  chars: str = CHARS
  vocab_size: int = 24  # room to spare; ids past the used ones are never produced in training

  pad_id = 0
  mask_id = 1
  eos_id = 2

  def __post_init__(self):
    if len(set(self.chars)) != len(self.chars):
      raise ValueError("tokenizer characters must be distinct")
    if self.vocab_size < 3 + len(self.chars):
      raise ValueError(f"vocab_size {self.vocab_size} < {3 + len(self.chars)} used ids")

  @property
  def _index(self) -> dict[str, int]:
    return {c: 3 + i for i, c in enumerate(self.chars)}

  def encode(self, text: str) -> list[int]:
    index = self._index
    try:
      return [index[c] for c in text]
    except KeyError as e:
      raise ValueError(f"character {e.args[0]!r} is not in the vocabulary") from None

  def decode(self, ids: Sequence[int], stop_at_eos: bool = True) -> str:
    """Characters of `ids`; with `stop_at_eos`, everything from the first EOS on is dropped.
    Special tokens other than EOS (pad, mask, unused ids) decode to '?'."""
    out = []
    for i in (int(x) for x in ids):
      if i == self.eos_id and stop_at_eos:
        break
      out.append(self.chars[i - 3] if 3 <= i < 3 + len(self.chars) else
                 {self.pad_id: "?", self.mask_id: "?", self.eos_id: "|"}.get(i, "?"))
    return "".join(out)

  def encode_prompts(self, texts: Sequence[str], width: int) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded prompt ids [B, width] (int32) and their mask (True = real token)."""
    ids_BP = np.full((len(texts), width), self.pad_id, np.int32)
    mask_BP = np.zeros((len(texts), width), bool)
    for b, text in enumerate(texts):
      ids = self.encode(text)
      if len(ids) > width:
        raise ValueError(f"prompt {text!r} is longer than {width} tokens")
      if ids:
        ids_BP[b, width - len(ids):] = ids
        mask_BP[b, width - len(ids):] = True
    return ids_BP, mask_BP

  def encode_answers(self, texts: Sequence[str], width: int) -> np.ndarray:
    """Answer ids [B, width] (int32), right-padded with EOS."""
    ids_BG = np.full((len(texts), width), self.eos_id, np.int32)
    for b, text in enumerate(texts):
      ids = self.encode(text)
      if len(ids) > width:
        raise ValueError(f"answer {text!r} is longer than {width} tokens")
      ids_BG[b, :len(ids)] = ids
    return ids_BG
