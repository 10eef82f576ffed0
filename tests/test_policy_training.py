"""GRPO for the learned unmasking policy: the loss and gradient by hand, a training run on an
oracle denoiser whose best policy is known, and resumption."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dllm_jax import policy_training as pt
from dllm_jax import sampling as S
from dllm_jax.sampling import oracle, policy
from dllm_jax.sampling.learned_policy import PolicyTrace

NET = policy.PolicyConfig()
# Compiled once each: run op by op, the hand checks below took ~40 s apiece (one compile per op).
_policy_logits = jax.jit(policy.policy_logits, static_argnums=0)
_grpo_loss = jax.jit(pt.grpo_loss, static_argnums=1)
_trace_logits = jax.jit(pt.trace_logits, static_argnums=0)


def test_rewards_and_group_advantages():
  reward = pt.rewards(jnp.array([1.0, 0.0, 1.0, 1.0]), jnp.array([1, 3, 4, 8]), 8, 2.0)
  np.testing.assert_allclose(reward, [1.0, 0.0, (5 / 8) ** 2, (1 / 8) ** 2])
  np.testing.assert_allclose(pt.group_advantages(reward, 2),
                             [0.5, -0.5, ((5 / 8) ** 2 - (1 / 8) ** 2) / 2,
                              ((1 / 8) ** 2 - (5 / 8) ** 2) / 2])


def _sigmoid(x):
  return 1 / (1 + np.exp(-x))


def test_loss_and_gradient_equal_a_hand_computation():
  """4 rollouts x 3 steps x 4 positions; old log-probs shifted so that some ratios fall outside
  [1 - eps, 1 + eps] on the side where clipping binds and some on the side where it does not."""
  rng = np.random.default_rng(0)
  N, Sn, W, eps, tau = 4, 3, 4, 0.5, 0.7
  rule = S.LearnedPolicy(temperature=tau)
  params = policy.init_policy(NET, 3)
  params["modulation"]["kernel"] = jnp.asarray(rng.normal(0, 0.3, (128, 768)), jnp.float32)
  masked = rng.random((N, Sn, W)) < 0.7
  trace = PolicyTrace(confidence_BSW=jnp.asarray(rng.random((N, Sn, W)), jnp.float32),
                      masked_BSW=jnp.asarray(masked),
                      t_BS=jnp.asarray(rng.random((N, Sn)), jnp.float32),
                      action_BSW=jnp.asarray(masked & (rng.random((N, Sn, W)) < 0.4)),
                      active_BS=jnp.asarray([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]], bool),
                      logprob_BS=jnp.zeros((N, Sn)))
  advantage = np.array([0.6, -0.4, 0.3, -0.5])
  # Hand computation of the log-probabilities and d/d(output bias) from the network's logits.
  z = np.asarray(_policy_logits(NET, params, trace.confidence_BSW.reshape(-1, W),
                                      trace.masked_BSW.reshape(-1, W),
                                      trace.t_BS.reshape(-1)), np.float64).reshape(N, Sn, W)
  p = _sigmoid(z / tau)
  a = np.asarray(trace.action_BSW)
  new_logprob = np.where(masked, np.where(a, np.log(p), np.log1p(-p)), 0).sum(-1)
  dlogprob_db = np.where(masked, (a - p) / tau, 0).sum(-1)
  shifts = np.array([[0.9, -0.1, 0.2], [-0.8, 0.05, 0.0], [-0.8, 0.0, 0.0], [0.9, 0.3, -0.2]])
  old = new_logprob - shifts  # ratio = exp(shift)
  ratio = np.exp(shifts)
  active = np.asarray(trace.active_BS, np.float64)
  A = advantage[:, None]
  unclipped, clipped = ratio * A, np.clip(ratio, 1 - eps, 1 + eps) * A
  objective = np.minimum(unclipped, clipped)
  want_loss = -np.mean((objective * active).sum(1) / active.sum(1))
  # The gradient flows through r * A where that term is the minimum, else through the clipped
  # term, which is constant outside [1 - eps, 1 + eps].
  through = (unclipped <= clipped) | ((ratio > 1 - eps) & (ratio < 1 + eps))
  dobj_db = np.where(through, A * ratio * dlogprob_db, 0.0)
  want_grad = -np.mean((dobj_db * active).sum(1) / active.sum(1))
  outside = (ratio < 1 - eps) | (ratio > 1 + eps)
  assert (~through & (active > 0)).any()  # clipping binds: no gradient
  assert (through & outside & (active > 0)).any()  # outside the range, clipping does not bind

  loss_fn = lambda prm: pt.grpo_loss(prm, rule, trace, jnp.asarray(old, jnp.float32),
                                     jnp.asarray(advantage, jnp.float32), eps)
  (loss, _), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params)
  np.testing.assert_allclose(float(loss), want_loss, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(float(grads["head"]["bias"][0]), want_grad, rtol=1e-3, atol=1e-6)


# Oracle: the "prompt" is position 0 and the 6 generated positions are fully determined, so every
# conditional is deterministic, every rollout is correct, and the best policy unmasks all six at
# the first step (reward ((L - NFE + 1) / L)^alpha is 1 only at NFE = 1).
V, G = 3, 6
TARGET = np.array([0, 2, 1, 1, 0, 2, 1])
DENOISE = oracle.make_oracle_denoise(V, G + 1)
LOG_P = jnp.where(jnp.arange(V ** (G + 1)) == oracle.sequence_index(TARGET[None], V)[0], 0.0,
                  -jnp.inf)
SAMPLER = S.Sampler(gen_length=G, mask_token_id=V, remasking=S.LearnedPolicy())
CONFIG = pt.GRPOConfig(num_steps=40, prompts_per_step=2, group_size=8, alpha=1.0,
                       learning_rate=3e-3, warmup_steps=0, checkpoint_every=10)


def _grade(problems, generated):
  return np.all(generated == TARGET[1:], axis=-1)


def _mean_nfe(params, n=256):
  prompt = jnp.zeros((n, 1), jnp.int32)
  out = S.generate(SAMPLER, DENOISE, LOG_P, prompt, jnp.ones((n, 1), bool), jax.random.key(99),
                   policy_params=params)
  assert np.all(_grade(None, np.asarray(out.generated_BG)))
  return float(np.mean(out.nfe_B))


def test_training_on_an_oracle_reaches_the_known_best_policy(tmp_path):
  before = _mean_nfe(policy.init_policy(NET, CONFIG.seed))
  params, history = pt.train(SAMPLER, DENOISE, LOG_P, [[0]] * 4, _grade, CONFIG, tmp_path,
                             pad_id=0, progress=False)
  after = _mean_nfe(params)
  print(f"mean NFE {before:.2f} -> {after:.2f}; reward {history[0]['reward']:.3f} -> "
        f"{history[-1]['reward']:.3f}")
  assert before > 3
  assert after <= 1.05  # the best policy: everything at once
  # The diagnostics: once every rollout unmasks everything at once, rewards are all equal.
  assert history[-1]["zero_variance_groups"] == 1.0 and history[-1]["grad_norm"] < 1e-6
  assert history[-1]["entropy"] < history[0]["entropy"]
  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  assert len(lines) == CONFIG.num_steps
  np.testing.assert_allclose(pt.load_policy(tmp_path, SAMPLER.remasking)["head"]["bias"],
                             params["head"]["bias"])


def test_a_resumed_run_repeats_an_uninterrupted_one(tmp_path):
  config = dataclasses.replace(CONFIG, num_steps=4, checkpoint_every=2)
  whole, _ = pt.train(SAMPLER, DENOISE, LOG_P, [[0]] * 4, _grade, config, tmp_path / "a",
                      pad_id=0, progress=False)
  pt.train(SAMPLER, DENOISE, LOG_P, [[0]] * 4, _grade, config, tmp_path / "b", pad_id=0,
           progress=False, stop_after=2)
  resumed, history = pt.train(SAMPLER, DENOISE, LOG_P, [[0]] * 4, _grade, config, tmp_path / "b",
                              pad_id=0, progress=False)
  assert [h["step"] for h in history] == [3, 4]
  jax.tree.map(np.testing.assert_array_equal, whole, resumed)
  assert len((tmp_path / "b" / "metrics.jsonl").read_text().splitlines()) == 4


def test_prompt_order_is_seeded_epochs():
  config = pt.GRPOConfig(prompts_per_step=4)
  epoch = np.concatenate([pt.step_prompts(config, s, 8) for s in range(2)])
  assert sorted(epoch) == list(range(8))  # each prompt once per epoch
  assert not np.array_equal(pt.step_prompts(config, 0, 8), pt.step_prompts(config, 2, 8))
  np.testing.assert_array_equal(pt.step_prompts(config, 5, 8), pt.step_prompts(config, 5, 8))
  assert sorted(pt.step_prompts(config, 0, 3)[:3]) == [0, 1, 2]  # fewer prompts than a step


def test_entropy_bonus_and_zero_variance_weights_by_hand():
  rng = np.random.default_rng(1)
  N, Sn, W = 4, 2, 3
  rule = S.LearnedPolicy(temperature=0.8)
  params = policy.init_policy(NET, 5)
  masked = rng.random((N, Sn, W)) < 0.7
  trace = PolicyTrace(confidence_BSW=jnp.asarray(rng.random((N, Sn, W)), jnp.float32),
                      masked_BSW=jnp.asarray(masked), t_BS=jnp.zeros((N, Sn)),
                      action_BSW=jnp.asarray(masked & (rng.random((N, Sn, W)) < 0.5)),
                      active_BS=jnp.asarray([[1, 1], [1, 0], [1, 1], [0, 0]], bool),
                      logprob_BS=jnp.zeros((N, Sn)))
  z = np.asarray(_policy_logits(NET, params, trace.confidence_BSW.reshape(-1, W),
                                      trace.masked_BSW.reshape(-1, W), trace.t_BS.reshape(-1)),
                 np.float64).reshape(N, Sn, W) / 0.8
  p = _sigmoid(z)
  h = -(p * np.log(p) + (1 - p) * np.log1p(-p))
  on = masked & np.asarray(trace.active_BS)[..., None]
  want_entropy = (h * on).sum() / on.sum()
  reward = jnp.asarray([1.0, 1.0, 0.0, 1.0])  # groups of 2: the first has no variance
  np.testing.assert_array_equal(pt.zero_variance_groups(reward, 2), [True, True, False, False])
  weights = pt.rollout_weights(reward, pt.GRPOConfig(group_size=2, drop_zero_variance=True))
  np.testing.assert_allclose(weights, [0, 0, 0.5, 0.5])
  np.testing.assert_allclose(pt.rollout_weights(reward, pt.GRPOConfig(group_size=2)), [0.25] * 4)
  advantage = pt.group_advantages(reward, 2)
  old = _trace_logits(rule, params, trace)  # any old log-probs: use the new ones (ratio 1)
  old_logprob = np.asarray(S.learned_policy.bernoulli_log_prob(
      old, trace.action_BSW, trace.masked_BSW, 0.8)) * np.asarray(trace.active_BS)
  base, aux = _grpo_loss(params, rule, trace, jnp.asarray(old_logprob), advantage, 0.5, weights)
  bonus, _ = _grpo_loss(params, rule, trace, jnp.asarray(old_logprob), advantage, 0.5, weights,
                          entropy_coef=0.3)
  np.testing.assert_allclose(float(aux["entropy"]), want_entropy, rtol=1e-5)
  np.testing.assert_allclose(float(bonus - base), -0.3 * want_entropy, rtol=1e-4, atol=1e-7)
  # Dropping the zero-variance group (2 of 4 rollouts) doubles the gradient of the others.
  grad = lambda w: jax.jit(jax.grad(lambda prm: pt.grpo_loss(
      prm, rule, trace, jnp.asarray(old_logprob), advantage, 0.5, w)[0]))(params)
  dropped, plain = grad(weights), grad(None)
  np.testing.assert_allclose(dropped["head"]["kernel"], 2 * plain["head"]["kernel"], rtol=1e-4,
                             atol=1e-9)
  assert np.abs(plain["head"]["kernel"]).max() > 1e-4


def test_resume_with_more_steps_and_refusal_names_the_field(tmp_path):
  config = dataclasses.replace(CONFIG, num_steps=2, checkpoint_every=1)
  pt.train(SAMPLER, DENOISE, LOG_P, [[0]] * 4, _grade, config, tmp_path, pad_id=0,
           progress=False)
  _, history = pt.train(SAMPLER, DENOISE, LOG_P, [[0]] * 4, _grade,
                        dataclasses.replace(config, num_steps=3), tmp_path, pad_id=0,
                        progress=False)
  assert [h["step"] for h in history] == [3]
  assert {"entropy", "zero_variance_groups", "grad_norm"} <= set(history[0])
  with pytest.raises(ValueError, match=r"other settings: grpo.learning_rate \(0.003 there, "
                                       r"0.001 now\)"):
    pt.train(SAMPLER, DENOISE, LOG_P, [[0]] * 4, _grade,
             dataclasses.replace(config, num_steps=3, learning_rate=1e-3), tmp_path, pad_id=0,
             progress=False)
  with pytest.raises(ValueError, match="holds step 3, past --num_steps=2"):
    pt.train(SAMPLER, DENOISE, LOG_P, [[0]] * 4, _grade, config, tmp_path, pad_id=0,
             progress=False)
