"""A tiny random model with a real (tiny, byte-level BPE) tokenizer, saved as a dllm_jax checkpoint
the way a converted one is laid out: config.json, params/, tokenizer/."""

from __future__ import annotations

import json
import pathlib

import tokenizers
from tokenizers import decoders, models as tok_models, pre_tokenizers, trainers

from dllm_jax import checkpoint, models
from dllm_jax.data import jsonl

SPECIAL = ["<pad>", "<|endoftext|>", "<|mdm_mask|>", "<|eot_id|>"]


def build_tokenizer(shared_data: pathlib.Path, vocab_size: int = 600,
                    special: list[str] | None = None) -> tokenizers.Tokenizer:
  """Byte-level BPE trained on a few problems of every benchmark (any text encodes)."""
  texts = []
  for name in ("math500", "humaneval", "mbpp"):
    texts += [p.question for p in jsonl.load_benchmark(name, shared_data, limit=20)]
  tokenizer = tokenizers.Tokenizer(tok_models.BPE())
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special or SPECIAL,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tokenizer.train_from_iterator(texts, trainer)
  return tokenizer


def write_tiny_checkpoint(directory: pathlib.Path, shared_data: pathlib.Path,
                          seed: int = 0) -> pathlib.Path:
  tokenizer = build_tokenizer(shared_data)
  ids = {token: tokenizer.token_to_id(token) for token in SPECIAL}
  config = models.llada_tiny(vocab_size=tokenizer.get_vocab_size(), max_length=4096,
                             pad_token_id=ids["<pad>"], eos_token_id=ids["<|endoftext|>"],
                             mask_token_id=ids["<|mdm_mask|>"], eot_token_id=ids["<|eot_id|>"],
                             bos_token_id=None)
  checkpoint.save(directory, models.init_params(config, seed=seed), config, overwrite=True)
  (directory / "tokenizer").mkdir()
  tokenizer.save(str(directory / "tokenizer" / "tokenizer.json"))
  (directory / "tokenizer" / "tokenizer_config.json").write_text(json.dumps(
      {"pad_token": "<pad>", "eos_token": "<|endoftext|>", "mask_token": "<|mdm_mask|>"}))
  checkpoint.update_checksums(directory)  # the tokenizer files are checked too
  return directory
