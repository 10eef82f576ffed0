"""The shipped grid-path model loads (checksums checked), solves held-out problems, and its
left-to-right samples fail by walking into dead ends."""

import jax
import numpy as np

from dllm_jax import models, sampling
from dllm_jax.tasks import builtin, grid_path

PROBLEMS = 32


def test_shipped_model_solves_held_out_problems_by_low_confidence():
  model = builtin.load_builtin(builtin.GRID_PATH)
  assert isinstance(model.task, grid_path.GridPathTask) and model.gen_length == 19
  assert model.tokenizer.chars == grid_path.CELLS + grid_path.SEPARATOR
  problems = model.task.sample_problems("heldout", PROBLEMS, seed=1)
  prompt, mask = model.encode_prompts(problems)
  sampler = sampling.Sampler.for_model(model.config, gen_length=model.gen_length)  # greedy
  out = sampling.generate(sampler, models.make_denoise(model.config), model.params, prompt, mask,
                          jax.random.split(jax.random.key(0), PROBLEMS))
  texts = [model.tokenizer.decode(row) for row in np.asarray(out.generated_BG)]
  solved = [model.verify(p, row) for p, row in zip(problems, np.asarray(out.generated_BG))]
  assert solved == [model.task.verify(p, t) for p, t in zip(problems, texts)]
  # Measured on CPU: 29 of 32 solved, legal moves for 16.9 of 16-19 cells on average; an
  # untrained model solves none and breaks a rule within a few moves.
  assert sum(solved) >= 24, (sum(solved), texts)
  legal = np.mean([len(model.task.legal_prefix(p, t)) for p, t in zip(problems, texts)])
  assert legal >= 15, legal


def test_left_to_right_samples_fail_mostly_by_dead_ends():
  """Measured on CPU, 32 held-out problems x 4 samples at temperature 1: 68 of 128 samples fail
  and 61 of those (0.90) are dead ends, every move legal until no completion was left (an
  untrained model fails by breaking rules instead)."""
  model = builtin.load_builtin(builtin.GRID_PATH)
  problems = [p for p in model.task.sample_problems("heldout", PROBLEMS, seed=2) for _ in range(4)]
  prompt, mask = model.encode_prompts(problems)
  sampler = sampling.Sampler.for_model(model.config, gen_length=model.gen_length, block_length=1,
                                       temperature=1.0)
  out = sampling.generate(sampler, models.make_denoise(model.config), model.params, prompt, mask,
                          jax.random.split(jax.random.key(0), len(problems)))
  texts = [model.tokenizer.decode(row) for row in np.asarray(out.generated_BG)]
  failed = [(p, t) for p, t in zip(problems, texts) if not model.task.verify(p, t)]
  dead = [model.task.dead_end(p, t) for p, t in failed]
  assert 30 <= len(failed) <= 100, len(failed)
  assert np.mean(dead) >= 0.75, (len(failed), sum(dead))
