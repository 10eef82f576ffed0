"""The built-in models: tiny LLaDA-layout dLLMs this project trains on CPU and ships, one per
task (Countdown, lagged differences, grid paths), each saved with the task it was trained on.

A model directory holds the `dllm_jax.checkpoint` files and `train_config.json`, whose "task"
record names the task (`"name"`; Countdown when absent, as in the first shipped model) and its
fields.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

import numpy as np

from dllm_jax import checkpoint, models
from dllm_jax.tasks import countdown, countdown_data, grid_path, lagged_difference
from dllm_jax.tasks.char_tokenizer import CharTokenizer
from dllm_jax.tasks.countdown import CountdownTask
from dllm_jax.tasks.grid_path import GridPathTask
from dllm_jax.tasks.lagged_difference import LaggedDifferenceTask

ASSETS = pathlib.Path(__file__).resolve().parents[1] / "assets"
COUNTDOWN = ASSETS / "countdown_tiny"
LAGGED_DIFFERENCE = ASSETS / "lagged_difference_tiny"
GRID_PATH = ASSETS / "grid_path_tiny"
TASKS = {"countdown": CountdownTask, "lagged_difference": LaggedDifferenceTask,
         "grid_path": GridPathTask}


@dataclasses.dataclass(frozen=True)
class BuiltinModel:
  params: Any
  config: models.ModelConfig
  task: Any  # CountdownTask | LaggedDifferenceTask | GridPathTask
  tokenizer: CharTokenizer

  # What the experiments need of a task, whichever it is. A problem is a countdown.Problem, a
  # lagged-difference seed string or a grid-path problem string.

  @property
  def gen_length(self) -> int:
    if isinstance(self.task, CountdownTask):
      return countdown_data.gen_length(self.task)
    return self.task.gen_length

  def encode_prompts(self, problems) -> tuple[np.ndarray, np.ndarray]:
    """Prompt ids [B, P] and mask [B, P]."""
    if isinstance(self.task, CountdownTask):
      return countdown_data.encode_prompts(self.tokenizer, self.task, problems)
    if isinstance(self.task, GridPathTask):
      return grid_path.encode_prompts(self.tokenizer, self.task, problems)
    return lagged_difference.encode_prompts(self.tokenizer, self.task, problems)

  def verify(self, problem, generated_G) -> bool:
    """Whether generated ids (decoded up to EOS) answer `problem`."""
    if isinstance(self.task, CountdownTask):
      return countdown.verify(problem, self.tokenizer.decode(generated_G))
    return self.task.verify(problem, self.tokenizer.decode(generated_G))


def task_record(task: CountdownTask | LaggedDifferenceTask | GridPathTask) -> dict[str, Any]:
  """The "task" record of train_config.json."""
  name = next(n for n, cls in TASKS.items() if isinstance(task, cls))
  return {"name": name, **dataclasses.asdict(task)}


def task_from_record(record: dict[str, Any]) -> CountdownTask | LaggedDifferenceTask | GridPathTask:
  fields = dict(record)
  name = fields.pop("name", "countdown")
  if name not in TASKS:
    raise ValueError(f"unknown built-in task {name!r}; known: {', '.join(TASKS)}")
  return TASKS[name](**fields)


def load_builtin(path: str | pathlib.Path = COUNTDOWN) -> BuiltinModel:
  """A shipped (or newly trained) model with the task it was trained on."""
  path = pathlib.Path(path)
  if not (path / "train_config.json").is_file():
    raise FileNotFoundError(f"{path} holds no built-in model (no train_config.json); train one "
                            "with experiments/train_tiny.py")
  params, config = checkpoint.load(path)
  task = task_from_record(json.loads((path / "train_config.json").read_text())["task"])
  return BuiltinModel(params, config, task, task_tokenizer(task))


def task_tokenizer(task) -> CharTokenizer:
  """The task's vocabulary: its own (grid paths: cell letters), or the digits and operators."""
  return task.tokenizer() if hasattr(task, "tokenizer") else CharTokenizer()


def tiny_model_config(tokenizer: CharTokenizer, max_length: int, hidden_size: int = 128,
                      num_layers: int = 4, head_dim: int = 32) -> models.ModelConfig:
  """The built-in models' architecture: the LLaDA layout at a tiny size, sized to the canvas."""
  return models.ModelConfig(
      family="llada", vocab_size=tokenizer.vocab_size, hidden_size=hidden_size,
      num_layers=num_layers, num_heads=hidden_size // head_dim,
      num_kv_heads=hidden_size // head_dim, head_dim=head_dim,
      mlp_hidden_size=(8 * hidden_size // 3 + 31) // 32 * 32, rope_theta=10000.0, norm_eps=1e-5,
      max_length=max_length, mask_token_id=tokenizer.mask_id, eos_token_id=tokenizer.eos_id,
      pad_token_id=tokenizer.pad_id)
