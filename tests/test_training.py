"""Masked diffusion training: the loss falls, and an interrupted run resumes to the same weights."""

import jax
import numpy as np
import pytest

from dllm_jax import training
from dllm_jax.tasks import builtin
from dllm_jax.tasks import countdown as cd
from dllm_jax.tasks import countdown_data as cdd
from dllm_jax.tasks.char_tokenizer import CharTokenizer

TASK = cd.CountdownTask(num_numbers=3, max_number=9)
TOKENIZER = CharTokenizer()
MODEL = builtin.tiny_model_config(TOKENIZER, cdd.prompt_width(TASK) + cdd.gen_length(TASK),
                                  hidden_size=64, num_layers=2)


@pytest.fixture(scope="module")
def bank():
  return cdd.AnswerBank.build(TASK, TOKENIZER)


def _batches(bank, config):
  return lambda step: bank.sample_batch(np.random.default_rng([config.seed, step]),
                                        config.batch_size)


def test_loss_decreases(bank, tmp_path):
  config = training.TrainConfig(num_steps=80, batch_size=64, learning_rate=3e-3, warmup_steps=5,
                                checkpoint_every=1000, log_every=10)
  _, history = training.train(MODEL, config, _batches(bank, config), tmp_path, log=lambda s: None)
  assert history[-1]["loss"] < 0.85 * history[0]["loss"]  # an untrained step would stay flat


def test_interrupted_run_resumes_to_the_same_parameters(bank, tmp_path):
  config = training.TrainConfig(num_steps=12, batch_size=32, warmup_steps=2,
                                checkpoint_every=4, log_every=4)
  straight, _ = training.train(MODEL, config, _batches(bank, config), tmp_path / "a",
                               log=lambda s: None)
  training.train(MODEL, config, _batches(bank, config), tmp_path / "b", stop_after=6,
                 log=lambda s: None)
  lines = []
  resumed, _ = training.train(MODEL, config, _batches(bank, config), tmp_path / "b",
                              log=lines.append)
  assert any("resumed from step 6" in line for line in lines)
  jax.tree.map(np.testing.assert_array_equal, resumed, straight)


def test_masked_diffusion_loss_weights_masked_tokens_by_one_over_t():
  """With a model that predicts uniformly, CE = log V at every masked token, so the loss is
  log V * E[#masked / t] / G = log V in expectation (masking probability t, weight 1 / t)."""
  import jax.numpy as jnp
  V, B, G = 16, 4096, 8
  uniform = lambda params, tokens, mask: jnp.zeros((*tokens.shape, V))
  loss, metrics = training.masked_diffusion_loss(
      uniform, None, jnp.zeros((B, 3), jnp.int32), jnp.ones((B, 3), bool),
      jnp.ones((B, G), jnp.int32), jax.random.key(0), mask_token_id=0, t_min=1e-3)
  assert float(metrics["masked_ce"]) == pytest.approx(np.log(V), rel=1e-5)
  assert float(loss) == pytest.approx(np.log(V), rel=0.03)


def test_a_different_run_in_the_same_directory_is_an_error(bank, tmp_path):
  config = training.TrainConfig(num_steps=2, batch_size=8, warmup_steps=1)
  training.train(MODEL, config, _batches(bank, config), tmp_path, log=lambda s: None)
  with pytest.raises(ValueError, match="holds checkpoints of a different run"):
    training.train(MODEL, config.__class__(num_steps=3, batch_size=8, warmup_steps=1),
                   _batches(bank, config), tmp_path, log=lambda s: None)
