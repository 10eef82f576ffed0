"""Chat templates, benchmark prompts, the checkpoint tokenizer and left padding (tiny tokenizer)."""

import json
import pathlib

import numpy as np
import pytest
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from dllm_jax.data import jsonl, prompts
from dllm_jax.data.tokenize import CheckpointTokenizer, Tokenizer, encode_prompts, pad_left

SPECIAL_TOKENS = ["<|startoftext|>", "<|endoftext|>", "<|start_header_id|>", "<|end_header_id|>",
                  "<|eot_id|>", "<|mdm_mask|>", "<|im_start|>", "<|im_end|>"]
TRAINING_TEXT = ["Please reason step by step, and put your final answer within \\boxed{}.",
                 "def add(a, b):\n    return a + b\n", "assert add(1, 2) == 3",
                 "user assistant system You are a helpful assistant."]
# A checkpoint template unlike either fallback, to tell which one was used.
CHECKPOINT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}"
                       "{{ eos_token }}{% endfor %}{% if add_generation_prompt %}[assistant]"
                       "{% endif %}")
# The template in GSAI-ML/LLaDA-8B-Instruct's tokenizer_config.json (it always appends the header).
LLADA_INSTRUCT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ "
    "message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}")


def write_json(path: pathlib.Path, value) -> None:
  path.write_text(json.dumps(value))


@pytest.fixture(scope="module")
def tiny_tokenizer_file(tmp_path_factory) -> pathlib.Path:
  tokenizer = tokenizers.Tokenizer(models.BPE())
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIAL_TOKENS,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tokenizer.train_from_iterator(TRAINING_TEXT, trainer)
  path = tmp_path_factory.mktemp("tokenizer") / "tokenizer.json"
  tokenizer.save(str(path))
  return path


def make_checkpoint(directory: pathlib.Path, tokenizer_file: pathlib.Path, *,
                    tokenizer_config=None, config=None) -> pathlib.Path:
  directory.mkdir(parents=True, exist_ok=True)
  (directory / "tokenizer.json").write_bytes(tokenizer_file.read_bytes())
  if tokenizer_config is not None:
    write_json(directory / "tokenizer_config.json", tokenizer_config)
  if config is not None:
    write_json(directory / "config.json", config)
  return directory


@pytest.fixture
def checkpoint(tmp_path, tiny_tokenizer_file) -> pathlib.Path:
  return make_checkpoint(
      tmp_path / "ckpt", tiny_tokenizer_file,
      tokenizer_config={"chat_template": CHECKPOINT_TEMPLATE, "eos_token": "<|endoftext|>",
                        "bos_token": {"content": "<|startoftext|>", "special": True},
                        "pad_token": "<|endoftext|>"},
      config={"mask_token_id": 5, "eos_token_id": 1, "pad_token_id": 1, "bos_token_id": 0})


@pytest.fixture(scope="module")
def problems(shared_data):
  return {name: jsonl.load_benchmark(name, shared_data, limit=12)[-1]
          for name in ("math500", "aime25", "humaneval", "mbpp", "mbpp_sanitized")}


# ---------------------------------------------------------------------------- chat templates


def test_checkpoint_template_wins_over_fallback(checkpoint):
  template = prompts.load_chat_template(checkpoint, family="llada")
  assert template.source.endswith("tokenizer_config.json")
  assert template.bos_token == "<|startoftext|>" and template.eos_token == "<|endoftext|>"
  assert template.render_user("Hi") == "<|startoftext|>[user]Hi<|endoftext|>[assistant]"
  messages = [{"role": "user", "content": "Hi"}]
  assert template.render(messages, add_generation_prompt=False) == (
      "<|startoftext|>[user]Hi<|endoftext|>")


def test_llada_fallback(tmp_path, tiny_tokenizer_file):
  directory = make_checkpoint(tmp_path / "bare", tiny_tokenizer_file)
  template = prompts.load_chat_template(directory, family="llada")
  assert template.source.startswith("fallback:llada")
  assert template.render_user("  What is 1+1?\n") == (
      "<|startoftext|><|start_header_id|>user<|end_header_id|>\n\nWhat is 1+1?<|eot_id|>"
      "<|start_header_id|>assistant<|end_header_id|>\n\n")
  with pytest.raises(ValueError, match="no chat template"):
    prompts.load_chat_template(directory)


def test_llada_fallback_matches_the_llada_instruct_template():
  real = prompts.ChatTemplate(LLADA_INSTRUCT_TEMPLATE, bos_token="<|startoftext|>")
  fallback = prompts.fallback_template("llada")
  for system in (None, "Be brief."):
    assert fallback.render_user(" x\n", system) == real.render_user(" x\n", system)


def test_dream_fallback(tmp_path):
  template = prompts.fallback_template("dream")
  assert template.render_user("Hi") == (
      "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
      "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
  assert template.render_user("Hi", system="Be brief.") == (
      "<|im_start|>system\nBe brief.<|im_end|>\n"
      "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
  with pytest.raises(ValueError, match="unknown model family"):
    prompts.fallback_template("gpt")


def test_template_list_form_and_jinja_file(tmp_path, tiny_tokenizer_file):
  listed = make_checkpoint(tmp_path / "listed", tiny_tokenizer_file, tokenizer_config={
      "chat_template": [{"name": "tool_use", "template": "TOOLS"},
                        {"name": "default", "template": "{{ messages[0]['content'] }}!"}]})
  assert prompts.load_chat_template(listed).render_user("Hi") == "Hi!"

  jinja_file = make_checkpoint(tmp_path / "jinja", tiny_tokenizer_file,
                               tokenizer_config={"eos_token": "<|im_end|>"})
  (jinja_file / "chat_template.jinja").write_text(
      "{% for m in messages %}{{ m['content'] }}{{ eos_token }}\n{% endfor %}")
  template = prompts.load_chat_template(jinja_file, family="dream")
  assert template.render_user("Hi") == "Hi<|im_end|>\n"  # trim_blocks drops the tag's newline


def test_template_errors(tmp_path):
  with pytest.raises(ValueError, match="does not parse"):
    prompts.ChatTemplate("{% for %}")
  with pytest.raises(ValueError, match="no messages"):
    prompts.fallback_template("llada").render([])
  raising = prompts.ChatTemplate("{{ raise_exception('only user turns') }}")
  with pytest.raises(Exception, match="only user turns"):
    raising.render_user("Hi")
  with pytest.raises(FileNotFoundError):
    prompts.load_chat_template(tmp_path / "missing")


# ---------------------------------------------------------------------------- benchmark prompts


def test_math_prompt(problems):
  for name in ("math500", "aime25"):
    problem = problems[name]
    message = prompts.user_message(problem)
    assert message.startswith(problem.question.strip())
    assert message.endswith("put your final answer within \\boxed{}.")


def test_humaneval_prompt(problems):
  problem = problems["humaneval"]
  message = prompts.user_message(problem)
  assert message.startswith("Complete the following Python function")
  assert f"```python\n{problem.code_prompt.rstrip()}\n```" in message
  assert prompts.build_prompt(problem) == problem.code_prompt  # plain mode: bare completion


def test_mbpp_prompts_show_the_tests(problems):
  for name in ("mbpp", "mbpp_sanitized"):
    problem = problems[name]
    message = prompts.user_message(problem)
    assert problem.question.strip() in message
    assert "\n".join(problem.test_list) in message
    assert prompts.build_prompt(problem) == message + "\n"


def test_chat_prompt_wraps_the_user_message(problems):
  template = prompts.fallback_template("dream")
  problem = problems["math500"]
  prompt = prompts.build_prompt(problem, template)
  assert prompt == template.render_user(prompts.user_message(problem))
  assert prompts.build_prompts([problem, problem], template) == [prompt, prompt]
  with pytest.raises(ValueError, match="system message needs a chat template"):
    prompts.build_prompt(problem, None, system="x")


# ---------------------------------------------------------------------------- tokenizer


def test_special_ids_from_config_json(checkpoint):
  tokenizer = CheckpointTokenizer.from_checkpoint(checkpoint)
  assert isinstance(tokenizer, Tokenizer)
  assert (tokenizer.pad_id, tokenizer.eos_id, tokenizer.mask_id, tokenizer.bos_id) == (1, 1, 5, 0)
  assert CheckpointTokenizer.from_checkpoint(checkpoint, mask_id=7).mask_id == 7


def test_special_ids_from_token_strings(tmp_path, tiny_tokenizer_file):
  directory = make_checkpoint(tmp_path / "strings", tiny_tokenizer_file,
                              tokenizer_config={"eos_token": {"content": "<|im_end|>"}})
  write_json(directory / "special_tokens_map.json", {"bos_token": "<|startoftext|>"})
  tokenizer = CheckpointTokenizer.from_checkpoint(directory)
  vocab = tokenizer.tokenizer.get_vocab()
  assert tokenizer.eos_id == vocab["<|im_end|>"] == tokenizer.pad_id  # pad falls back to eos
  assert tokenizer.mask_id == vocab["<|mdm_mask|>"]  # the known LLaDA mask string
  assert tokenizer.bos_id == vocab["<|startoftext|>"]


def test_special_id_errors(tmp_path, tiny_tokenizer_file):
  no_eos = make_checkpoint(tmp_path / "no_eos", tiny_tokenizer_file)
  with pytest.raises(ValueError, match="no eos token id"):
    CheckpointTokenizer.from_checkpoint(no_eos)
  outside = make_checkpoint(tmp_path / "outside", tiny_tokenizer_file,
                            config={"eos_token_id": 1, "mask_token_id": 126336})
  with pytest.raises(ValueError, match="mask_id 126336 is not in the vocabulary"):
    CheckpointTokenizer.from_checkpoint(outside)
  with pytest.raises(FileNotFoundError, match="tokenizer.json"):
    CheckpointTokenizer.from_checkpoint(tmp_path)


def test_templated_prompt_tokenises_with_special_tokens(checkpoint, problems):
  tokenizer = CheckpointTokenizer.from_checkpoint(checkpoint)
  template = prompts.fallback_template("llada")
  text = prompts.build_prompt(problems["humaneval"], template)
  ids = tokenizer.encode(text)
  vocab = tokenizer.tokenizer.get_vocab()
  assert ids[:2] == [vocab["<|startoftext|>"], vocab["<|start_header_id|>"]]
  last_header_end = len(ids) - 1 - ids[::-1].index(vocab["<|end_header_id|>"])
  assert tokenizer.decode(ids[last_header_end + 1:]) == "\n\n"  # the prompt ends the header
  assert ids.count(vocab["<|eot_id|>"]) == 1
  assert tokenizer.decode(ids) == text  # byte-level BPE is lossless
  assert "<|eot_id|>" not in tokenizer.decode(ids, skip_special_tokens=True)


# ---------------------------------------------------------------------------- padding


def test_pad_left():
  tokens, mask = pad_left([[5, 6, 7], [8], [9, 10]], pad_id=0)
  np.testing.assert_array_equal(tokens, [[5, 6, 7], [0, 0, 8], [0, 9, 10]])
  np.testing.assert_array_equal(mask, [[1, 1, 1], [0, 0, 1], [0, 1, 1]])
  assert tokens.dtype == np.int32 and mask.dtype == np.bool_

  tokens, mask = pad_left([[5, 6]], pad_id=3, length=4)
  np.testing.assert_array_equal(tokens, [[3, 3, 5, 6]])
  np.testing.assert_array_equal(mask, [[False, False, True, True]])


def test_pad_left_errors():
  with pytest.raises(ValueError, match="prompt 1 has 3 tokens, more than the maximum length 2"):
    pad_left([[1], [1, 2, 3]], pad_id=0, length=2)
  with pytest.raises(ValueError, match="at least one"):
    pad_left([], pad_id=0)
  with pytest.raises(ValueError, match="prompt 0 is empty"):
    pad_left([[]], pad_id=0)


def test_encode_prompts(checkpoint):
  tokenizer = CheckpointTokenizer.from_checkpoint(checkpoint)
  texts = ["def add(a, b):", "assert add(1, 2) == 3 and add(2, 3) == 5"]
  tokens, mask = encode_prompts(tokenizer, texts)
  lengths = [len(tokenizer.encode(text)) for text in texts]
  assert tokens.shape == (2, max(lengths))
  assert mask.sum(axis=1).tolist() == lengths
  assert (tokens[~mask] == tokenizer.pad_id).all()
  assert tokenizer.decode(tokens[0][mask[0]].tolist()) == texts[0]
  with pytest.raises(ValueError, match=f"prompt 1 has {lengths[1]} tokens"):
    encode_prompts(tokenizer, texts, max_length=lengths[0])
