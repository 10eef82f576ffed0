"""Prompts: chat templates of LLaDA, Dream, WeDLM, LLaDA2 and SDAR checkpoints and the per-benchmark
messages.

Chat templates. A checkpoint's own template always wins: `load_chat_template` reads the Jinja
string "chat_template" of its `tokenizer_config.json` (or `chat_template.jinja` /
`chat_template.json`, where newer `transformers` save it) and renders it with jinja2 the way
`transformers` does (sandboxed, trim_blocks, lstrip_blocks, `bos_token` / `eos_token` in the
context, `add_generation_prompt=True`). Only when a checkpoint has none is the family's fallback
used:

- "llada" (LLaDA-8B-Instruct, Llama-3 style, BOS `<|startoftext|>`):
  `<|startoftext|><|start_header_id|>user<|end_header_id|>\\n\\n{text}<|eot_id|>`
  `<|start_header_id|>assistant<|end_header_id|>\\n\\n` (message contents are stripped).
- "dream" (Dream-v0-Instruct-7B, Qwen2.5 ChatML):
  `<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n`
  `<|im_start|>user\\n{text}<|im_end|>\\n`
  `<|im_start|>assistant\\n` (a leading system message replaces the default one; no tool support).
- "wedlm" (WeDLM-8B/7B-Instruct, Qwen3 / Qwen2.5 ChatML, no default system message):
  `<|im_start|>user\\n{text}<|im_end|>\\n<|im_start|>assistant\\n` (a system message, if
  given, comes first in its own `<|im_start|>system` turn).
- "llada2_moe" (LLaDA2.0 / 2.1, Ling-2.0 turns, thinking off, as dInfer's benchmarks prompt it):
  `<role>SYSTEM</role>detailed thinking off<|role_end|><role>HUMAN</role>{text}<|role_end|>`
  `<role>ASSISTANT</role>` (a system message goes before "detailed thinking off", then a newline).
- "sdar" (SDAR, Qwen3 ChatML): the "wedlm" turns.

Messages. Math (MATH500, AIME): the problem, then a request to reason step by step and put the final
answer in \\boxed{} (the graders take the last \\boxed{}). HumanEval (instruct style): complete the
function, with the signature + docstring in a ```python block. MBPP: the task and its test asserts
(the prompt of the MBPP paper), answer in a ```python block.

Plain mode (`template=None`), for the tiny built-in model without a chat format: math and MBPP
give the message followed by a newline; HumanEval gives the bare code prompt to be continued.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
from typing import Any, Mapping, Sequence

import jinja2
import jinja2.ext
import jinja2.sandbox

from dllm_jax.data.problems import Problem
from dllm_jax.data.tokenize import read_json_object, token_string

PathLike = str | os.PathLike
Message = Mapping[str, str]  # {"role": "system" | "user" | "assistant", "content": str}

FAMILIES = ("llada", "dream", "wedlm", "llada2_moe", "sdar")

LLADA_BOS = "<|startoftext|>"
LLADA_EOS = "<|endoftext|>"
DREAM_EOS = "<|endoftext|>"
DREAM_DEFAULT_SYSTEM = "You are a helpful assistant."
WEDLM_EOS = "<|endoftext|>"
LLADA2_EOS = "<|endoftext|>"

LLADA_FALLBACK_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first %}{{ bos_token }}{% endif %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{{ message['content'] | trim }}{{ '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{% endif %}")

DREAM_FALLBACK_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\n" + DREAM_DEFAULT_SYSTEM + "<|im_end|>\\n' }}"
    "{% endif %}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")

WEDLM_FALLBACK_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")

LLADA2_FALLBACK_TEMPLATE = (
    "{{ '<role>SYSTEM</role>' }}"
    "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] + '\\n' }}{% endif %}"
    "{{ 'detailed thinking off<|role_end|>' }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}"
    "{{ '<role>HUMAN</role>' + message['content'] + '<|role_end|>' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{{ '<role>ASSISTANT</role>' + message['content'] + '<|role_end|>' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<role>ASSISTANT</role>' }}{% endif %}")

MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
HUMANEVAL_INSTRUCTION = (
    "Complete the following Python function. Reply with the complete function, signature "
    "included, in a single ```python code block.")
MBPP_INSTRUCTION = "Reply with your code in a single ```python code block."


# ---------------------------------------------------------------------------- chat templates


def _raise_exception(message: str) -> None:
  raise jinja2.exceptions.TemplateError(message)


def _tojson(value: Any, indent: int | None = None) -> str:
  return json.dumps(value, ensure_ascii=False, indent=indent)


@functools.lru_cache(maxsize=32)
def _compile(source: str) -> jinja2.Template:
  env = jinja2.sandbox.ImmutableSandboxedEnvironment(
      trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
  env.filters["tojson"] = _tojson
  env.globals["raise_exception"] = _raise_exception
  return env.from_string(source)


@dataclasses.dataclass(frozen=True)
class ChatTemplate:
  """A Jinja chat template plus the special-token strings its context provides.

  Attributes:
    template: the Jinja source (Hugging Face "chat_template" conventions).
    bos_token: value of `bos_token` in the template context ("" if the tokenizer has none).
    eos_token: value of `eos_token` in the template context.
    source: where the template came from (a file path or "fallback:<family>"), for messages.
  """

  template: str
  bos_token: str = ""
  eos_token: str = ""
  source: str = "inline"

  def __post_init__(self):
    try:
      _compile(self.template)
    except jinja2.exceptions.TemplateSyntaxError as e:
      raise ValueError(f"chat template from {self.source} does not parse: {e}") from e

  def render(self, messages: Sequence[Message], add_generation_prompt: bool = True,
             **context: Any) -> str:
    """The conversation as the model's prompt text; extra `context` goes to the template."""
    if not messages:
      raise ValueError("no messages to render")
    for index, message in enumerate(messages):
      if not isinstance(message.get("role"), str) or not isinstance(message.get("content"), str):
        raise ValueError(f"message {index} needs string 'role' and 'content', got {message!r}")
    return _compile(self.template).render(
        messages=[dict(message) for message in messages],
        add_generation_prompt=add_generation_prompt,
        bos_token=self.bos_token, eos_token=self.eos_token, **context)

  def render_user(self, text: str, system: str | None = None) -> str:
    """One user turn (after an optional system message), ready for the assistant's answer."""
    messages = [] if system is None else [{"role": "system", "content": system}]
    return self.render(messages + [{"role": "user", "content": text}])


def fallback_template(family: str) -> ChatTemplate:
  """The documented template of `family` (see FAMILIES), for checkpoints without one."""
  if family == "llada":
    return ChatTemplate(LLADA_FALLBACK_TEMPLATE, LLADA_BOS, LLADA_EOS, "fallback:llada")
  if family == "dream":
    return ChatTemplate(DREAM_FALLBACK_TEMPLATE, "", DREAM_EOS, "fallback:dream")
  if family in ("wedlm", "sdar"):
    return ChatTemplate(WEDLM_FALLBACK_TEMPLATE, "", WEDLM_EOS, f"fallback:{family}")
  if family == "llada2_moe":
    return ChatTemplate(LLADA2_FALLBACK_TEMPLATE, "", LLADA2_EOS, "fallback:llada2_moe")
  raise ValueError(f"unknown model family {family!r}; expected one of {FAMILIES}")


def _pick_template(value: Any, where: pathlib.Path) -> str:
  """The template of a "chat_template" value: a string, or a list of {"name", "template"}."""
  if isinstance(value, str):
    return value
  if isinstance(value, list) and value:
    named = {entry.get("name"): entry.get("template") for entry in value if isinstance(entry, dict)}
    chosen = named.get("default", next(iter(named.values()), None))
    if isinstance(chosen, str):
      return chosen
  raise ValueError(f"{where}: 'chat_template' should be a string or a list of named templates")


def load_chat_template(checkpoint_dir: PathLike, family: str | None = None) -> ChatTemplate:
  """The chat template of a checkpoint directory, or `family`'s fallback when it has none.

  Looks at `tokenizer_config.json` ("chat_template", "bos_token", "eos_token"), then
  `chat_template.jinja`, then `chat_template.json`; special tokens missing from
  `tokenizer_config.json` are taken from `special_tokens_map.json`, else from the fallback.
  """
  directory = pathlib.Path(checkpoint_dir)
  if not directory.is_dir():
    raise FileNotFoundError(f"checkpoint directory {directory} not found")
  config_path = directory / "tokenizer_config.json"
  config = read_json_object(config_path) if config_path.is_file() else {}
  special_path = directory / "special_tokens_map.json"
  special = read_json_object(special_path) if special_path.is_file() else {}

  template, source = None, None
  if config.get("chat_template") is not None:
    template, source = _pick_template(config["chat_template"], config_path), str(config_path)
  elif (directory / "chat_template.jinja").is_file():
    source = str(directory / "chat_template.jinja")
    template = (directory / "chat_template.jinja").read_text(encoding="utf-8")
  elif (directory / "chat_template.json").is_file():
    path = directory / "chat_template.json"
    template, source = _pick_template(read_json_object(path).get("chat_template"), path), str(path)

  fallback = fallback_template(family) if family is not None else None
  if template is None:
    if fallback is None:
      raise ValueError(
          f"{directory} has no chat template (looked in tokenizer_config.json, "
          f"chat_template.jinja, chat_template.json); pass family= one of {FAMILIES} for the "
          "fallback template, or use plain prompts")
    template, source = fallback.template, f"{fallback.source} (none in {directory})"

  def special_token(name: str) -> str:
    value = token_string(config.get(name)) or token_string(special.get(name))
    if value is None and fallback is not None:
      value = getattr(fallback, name)
    return value or ""

  return ChatTemplate(template, special_token("bos_token"), special_token("eos_token"), source)


# ---------------------------------------------------------------------------- benchmark messages


def math_message(problem: Problem) -> str:
  return f"{problem.question.strip()}\n{MATH_INSTRUCTION}"


def humaneval_message(problem: Problem) -> str:
  code = problem.code_prompt or problem.question
  return f"{HUMANEVAL_INSTRUCTION}\n\n```python\n{code.rstrip()}\n```"


def mbpp_message(problem: Problem) -> str:
  tests = "\n".join(test.strip() for test in problem.test_list)
  return (f"You are an expert Python programmer, and here is your task: {problem.question.strip()} "
          f"Your code should pass these tests:\n\n{tests}\n\n{MBPP_INSTRUCTION}")


def user_message(problem: Problem) -> str:
  """The user turn asking the model to solve `problem`."""
  if problem.is_math:
    return math_message(problem)
  if problem.benchmark == "humaneval":
    return humaneval_message(problem)
  return mbpp_message(problem)


def plain_prompt(problem: Problem) -> str:
  """Prompt without a chat format: the message and a newline; HumanEval: the bare code prompt."""
  if problem.benchmark == "humaneval":
    return problem.code_prompt or problem.question
  return user_message(problem) + "\n"


def build_prompt(problem: Problem, template: ChatTemplate | None = None,
                 system: str | None = None) -> str:
  """The full prompt text for `problem`: chat-templated, or plain when `template` is None."""
  if template is None:
    if system is not None:
      raise ValueError("a system message needs a chat template")
    return plain_prompt(problem)
  return template.render_user(user_message(problem), system=system)


def build_prompts(problems: Sequence[Problem], template: ChatTemplate | None = None,
                  system: str | None = None) -> list[str]:
  return [build_prompt(problem, template, system) for problem in problems]
