"""The GRPO trainer's recipe, checked against hand computations: `make_optimizer` (linear
warm-up, cosine decay, decoupled weight decay, gradient clipping by global norm, then Adam) and
`prompts_per_step` (a step decodes prompts_per_step x group_size rollouts, each prompt's group
in consecutive rows)."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dllm_jax import policy_training as pt
from dllm_jax import sampling as S
from dllm_jax.sampling import oracle

# 3 GRPO steps x 2 iterations = 6 optimiser updates; warm-up over the first 2 of them.
RECIPE = pt.GRPOConfig(num_steps=3, iterations=2, learning_rate=0.1, warmup_steps=2,
                       weight_decay=0.1, grad_clip=0.2)
# Global norms 5.0, 0.01, 3.0, 0.05, 0.1, 2.0: some clipped (> 0.2), some not; Adam is
# invariant to one scale for all steps, not to clipping only some of them.
GRADS = [np.array([3.0, 0.0, -4.0, 0.0, 0.0]), np.array([0.0, 0.006, 0.0, -0.008, 0.0]),
         np.array([0.0, 1.8, 0.0, 0.0, 2.4]), np.array([0.03, -0.04, 0.0, 0.0, 0.0]),
         np.array([-0.06, 0.0, 0.08, 0.0, 0.0]), np.array([0.0, 0.0, 1.2, 1.6, 0.0])]
START = np.array([1.0, -2.0, 0.5, 3.0, -1.0])


def _learning_rate(count: int, config: pt.GRPOConfig) -> float:
  """Linear from 0 to the peak over `warmup_steps` updates, then a half cosine to 0 at
  num_steps * iterations updates."""
  total = config.num_steps * config.iterations
  if count < config.warmup_steps:
    return config.learning_rate * count / config.warmup_steps
  progress = (count - config.warmup_steps) / (total - config.warmup_steps)
  return config.learning_rate * 0.5 * (1 + np.cos(np.pi * progress))


def _by_hand(config: pt.GRPOConfig, clip: bool = True) -> list[np.ndarray]:
  """AdamW (b1 0.9, b2 0.999, eps 1e-8; decay added to the Adam direction, both scaled by the
  learning rate) on the clipped gradients; the parameters after each update."""
  p, m, v, out = START.copy(), np.zeros(5), np.zeros(5), []
  for count, g in enumerate(GRADS):
    norm = np.linalg.norm(g)
    if clip and norm > config.grad_clip:
      g = g * config.grad_clip / norm
    m = 0.9 * m + 0.1 * g
    v = 0.999 * v + 0.001 * g * g
    m_hat, v_hat = m / (1 - 0.9 ** (count + 1)), v / (1 - 0.999 ** (count + 1))
    p = p - _learning_rate(count, config) * (m_hat / (np.sqrt(v_hat) + 1e-8)
                                             + config.weight_decay * p)
    out.append(p.copy())
  return out


def _optax(config: pt.GRPOConfig) -> list[np.ndarray]:
  optimizer = pt.make_optimizer(config)
  params = {"w": jnp.asarray(START, jnp.float32)}
  state, out = optimizer.init(params), []
  for g in GRADS:
    updates, state = optimizer.update({"w": jnp.asarray(g, jnp.float32)}, state, params)
    params = jax.tree.map(lambda a, b: a + b, params, updates)
    out.append(np.asarray(params["w"], np.float64))
  return out


def test_make_optimizer_is_warmup_cosine_adamw_on_clipped_gradients():
  np.testing.assert_allclose([_learning_rate(c, RECIPE) for c in range(6)],
                             [0.0, 0.05, 0.1, 0.1 * (0.5 + 0.5 * np.cos(np.pi / 4)), 0.05,
                              0.1 * (0.5 - 0.5 * np.cos(np.pi / 4))], rtol=1e-12)
  got, want = _optax(RECIPE), _by_hand(RECIPE)
  np.testing.assert_array_equal(got[0], START)  # the warm-up starts at learning rate 0
  for step, (g, w) in enumerate(zip(got, want)):
    np.testing.assert_allclose(g, w, rtol=2e-5, atol=1e-6, err_msg=f"after update {step + 1}")
  # Each part of the recipe moves the result by far more than the tolerance above, so the
  # comparison sees a missing one: clipping, weight decay, the warm-up, the cosine.
  variants = {"no clipping": _by_hand(RECIPE, clip=False),
              "no weight decay": _by_hand(dataclasses.replace(RECIPE, weight_decay=0.0)),
              "no warm-up": _by_hand(dataclasses.replace(RECIPE, warmup_steps=0)),
              "a longer cosine": _by_hand(dataclasses.replace(RECIPE, num_steps=6))}
  for name, other in variants.items():
    assert np.abs(other[-1] - want[-1]).max() > 1e-3, name


def test_the_schedule_spans_every_update_of_the_run():
  """The cosine reaches 0 at num_steps x iterations updates (the whole run), and a warm-up
  longer than the run still leaves a valid schedule."""
  config = pt.GRPOConfig(num_steps=5, iterations=2, learning_rate=1.0, warmup_steps=2,
                         weight_decay=0.0, grad_clip=1e9)
  optimizer = pt.make_optimizer(config)
  params = {"w": jnp.ones(1)}
  state = optimizer.init(params)
  steps = []
  for _ in range(10):  # constant gradients: Adam's direction is 1, the step the learning rate
    updates, state = optimizer.update({"w": jnp.ones(1)}, state, params)
    steps.append(-float(updates["w"][0]))
  np.testing.assert_allclose(steps, [_learning_rate(c, config) for c in range(10)], atol=2e-5)
  assert steps[0] == 0 and steps[2] == pytest.approx(1.0, abs=2e-5)  # the peak
  long = pt.make_optimizer(dataclasses.replace(config, warmup_steps=50))
  updates, _ = long.update({"w": jnp.ones(1)}, long.init(params), params)
  assert np.isfinite(updates["w"]).all()


# Oracle (as in test_policy_training.py): every rollout is correct, so only the shapes matter.
V, G = 3, 4
TARGET = np.array([0, 2, 1, 1, 0])
DENOISE = oracle.make_oracle_denoise(V, G + 1)
LOG_P = jnp.where(jnp.arange(V ** (G + 1)) == oracle.sequence_index(TARGET[None], V)[0], 0.0,
                  -jnp.inf)
SAMPLER = S.Sampler(gen_length=G, mask_token_id=V, remasking=S.LearnedPolicy())


@pytest.mark.slow  # trains (2 GRPO steps)
def test_a_step_decodes_prompts_per_step_times_group_size_rollouts(tmp_path):
  config = pt.GRPOConfig(num_steps=2, prompts_per_step=3, group_size=2, learning_rate=1e-3,
                         warmup_steps=0, checkpoint_every=2)
  calls = []

  def grade(problem_N, generated_NG):
    calls.append((np.asarray(problem_N).copy(), np.asarray(generated_NG).shape))
    return np.all(generated_NG == TARGET[1:], axis=-1)

  num_prompts = 5
  _, history = pt.train(SAMPLER, DENOISE, LOG_P, [[0]] * num_prompts, grade, config, tmp_path,
                        pad_id=0, progress=False)
  assert len(calls) == 2
  for step, (problem_N, shape) in enumerate(calls):
    # Prompt p's group is rows p*G .. p*G + G - 1, as group_advantages reads them.
    np.testing.assert_array_equal(problem_N,
                                  np.repeat(pt.step_prompts(config, step, num_prompts), 2))
    assert shape == (6, G)
  # Every step is timed, and the run's time is their sum.
  lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert all(r["seconds"] > 0 for r in lines) and [r["step"] for r in history] == [1, 2]
  assert pt.train_seconds(tmp_path) == pytest.approx(sum(r["seconds"] for r in lines))


def test_the_warm_starts_cosine_decays_its_learning_rate_to_zero():
  """`imitation_cosine`: Adam steps of lr * (1 + cos(pi k / K)) / 2 over K = imitation_steps x
  imitation_iterations updates; without it, constant steps of lr."""
  config = pt.GRPOConfig(imitate_threshold=0.9, imitation_steps=2, imitation_iterations=3,
                         imitation_learning_rate=0.5)
  for cosine in (False, True):
    optimizer = pt.imitation_optimizer(dataclasses.replace(config, imitation_cosine=cosine))
    params = {"w": jnp.ones(1)}
    state, steps = optimizer.init(params), []
    for _ in range(6):  # constant gradients: Adam's direction is 1, the step the learning rate
      updates, state = optimizer.update({"w": jnp.ones(1)}, state, params)
      steps.append(-float(updates["w"][0]))
    want = 0.5 * (0.5 + 0.5 * np.cos(np.pi * np.arange(6) / 6)) if cosine else np.full(6, 0.5)
    np.testing.assert_allclose(steps, want, atol=2e-5)
