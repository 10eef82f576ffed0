"""A learned unmasking policy as a remasking rule, and the trace that training needs.

At each step the policy network (`policy.py`) reads the current block's window (top-1 dLLM
probability and mask bit per position, the row's steps taken / gen_length) and gives one logit
z_i per position. The action is an independent Bernoulli draw per masked position of the block,
a_i ~ Bernoulli(sigmoid(z_i / temperature)); when it selects nothing, the most probable masked
position is unmasked anyway. That fallback is part of the environment: the action's probability
is the product of the Bernoulli likelihoods, whatever the fallback commits. Values come from the
loop's draws (argmax at temperature 0, else the sampler's temperature). Blocks run until
complete, so the steps taken (and the NFE) are the policy's choice.

The decode loop writes a `PolicyTrace` for this rule: per step the policy's inputs, its action and
the action's log-probability, enough to recompute that log-probability under other params
(`trace_log_probs`) without running the dLLM again.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import struct

from dllm_jax.sampling import row_random
from dllm_jax.sampling.policy import PolicyConfig, PolicyParams, policy_logits
from dllm_jax.sampling.position_first import max_probability
from dllm_jax.sampling.remasking import StepInputs, select_top_k


@struct.dataclass
class PolicyTrace:
  """S = the loop's step budget (gen_length), W = the block length."""
  confidence_BSW: jax.Array  # policy input c (the dLLM's top-1 probability)
  masked_BSW: jax.Array      # policy input m (still masked in the current block)
  t_BS: jax.Array            # policy input t (steps taken / gen_length)
  action_BSW: jax.Array      # the Bernoulli draws
  active_BS: jax.Array       # the row had masks to commit at this step (one NFE)
  logprob_BS: jax.Array      # log-probability of the action under the rollout's policy

  @classmethod
  def empty(cls, batch: int, steps: int, width: int) -> PolicyTrace:
    zeros = lambda dtype, *shape: jnp.zeros((batch, steps, *shape), dtype)
    return cls(zeros(jnp.float32, width), zeros(bool, width), zeros(jnp.float32),
               zeros(bool, width), zeros(bool), zeros(jnp.float32))


def bernoulli_log_prob(logits_BW: jax.Array, action_BW: jax.Array, masked_BW: jax.Array,
                       temperature: float) -> jax.Array:
  """sum over masked i of log Bernoulli(a_i; sigmoid(z_i / temperature)): [B]."""
  z_BW = logits_BW / temperature
  log_lik_BW = jnp.where(action_BW, jax.nn.log_sigmoid(z_BW), jax.nn.log_sigmoid(-z_BW))
  return jnp.sum(jnp.where(masked_BW, log_lik_BW, 0.0), axis=-1)


@dataclasses.dataclass(frozen=True)
class LearnedPolicy:
  """Unmask each masked position of the block with probability sigmoid(logit / temperature),
  at least one per step. The network's params are `generate(..., policy_params=...)`."""

  network: PolicyConfig = PolicyConfig()
  temperature: float = 1.0
  uses_schedule = False

  def __post_init__(self):
    if not self.temperature > 0:
      raise ValueError(f"LearnedPolicy.temperature must be > 0, got {self.temperature}")
    if not isinstance(self.network, PolicyConfig):
      raise ValueError(f"LearnedPolicy.network must be a PolicyConfig, got {self.network!r}")

  def inputs(self, inputs: StepInputs) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The network's inputs (c [B, W], m [B, W], t [B]) at this step."""
    gen_length = inputs.gen_length or inputs.x0_BG.shape[1]
    return (max_probability(inputs.logits_BGV), inputs.eligible_BG,
            inputs.steps_taken_B.astype(jnp.float32) / gen_length)

  def confidence(self, inputs: StepInputs, keys_B: jax.Array) -> jax.Array:
    return policy_logits(self.network, inputs.policy_params, *self.inputs(inputs))

  def action(self, score_BW: jax.Array, inputs: StepInputs, keys_B: jax.Array) -> jax.Array:
    """The Bernoulli draws [B, W] (False outside the eligible positions)."""
    u_BW = inputs.draws(row_random.uniform, keys_B)
    return inputs.eligible_BG & (u_BW < jax.nn.sigmoid(score_BW / self.temperature))

  def select(self, score_BW: jax.Array, inputs: StepInputs, keys_B: jax.Array) -> jax.Array:
    action_BW = self.action(score_BW, inputs, keys_B)
    best_BW = select_top_k(score_BW, inputs.eligible_BG, jnp.ones_like(inputs.count_B))
    return jnp.where(jnp.any(action_BW, axis=-1, keepdims=True), action_BW, best_BW)

  def record(self, trace: PolicyTrace, step: jax.Array, score_BW: jax.Array,
             inputs: StepInputs, keys_B: jax.Array) -> PolicyTrace:
    """`trace` with iteration `step` written."""
    confidence_BW, masked_BW, t_B = self.inputs(inputs)
    action_BW = self.action(score_BW, inputs, keys_B)
    active_B = jnp.any(masked_BW, axis=-1)
    logprob_B = bernoulli_log_prob(score_BW, action_BW, masked_BW, self.temperature)
    put = lambda x_BS, x_B: jax.lax.dynamic_update_index_in_dim(x_BS, x_B, step, axis=1)
    return PolicyTrace(put(trace.confidence_BSW, confidence_BW), put(trace.masked_BSW, masked_BW),
                       put(trace.t_BS, t_B), put(trace.action_BSW, action_BW),
                       put(trace.active_BS, active_B), put(trace.logprob_BS, logprob_B * active_B))


def bernoulli_entropy(logits_BW: jax.Array, masked_BW: jax.Array, temperature: float
                      ) -> jax.Array:
  """sum over masked i of the entropy (nats) of Bernoulli(sigmoid(z_i / temperature)): [B]."""
  z_BW = logits_BW / temperature
  p_BW = jax.nn.sigmoid(z_BW)
  entropy_BW = -(p_BW * jax.nn.log_sigmoid(z_BW) + (1 - p_BW) * jax.nn.log_sigmoid(-z_BW))
  return jnp.sum(jnp.where(masked_BW, entropy_BW, 0.0), axis=-1)


def trace_logits(rule: LearnedPolicy, params: PolicyParams, trace: PolicyTrace,
                 steps_per_chunk: int = 16) -> jax.Array:
  """The policy's logits [B, S, W] at every recorded state under `params`. Steps are evaluated
  `steps_per_chunk` at a time and rematerialised in the backward pass, so memory stays that of a
  few steps when gen_length is long."""

  def one_step(xs):
    return policy_logits(rule.network, params, *xs)

  swap = lambda x: jnp.swapaxes(x, 0, 1)
  xs = (trace.confidence_BSW, trace.masked_BSW, trace.t_BS)
  return swap(jax.lax.map(jax.checkpoint(one_step), tuple(map(swap, xs)),
                          batch_size=steps_per_chunk))


def trace_log_probs(rule: LearnedPolicy, params: PolicyParams, trace: PolicyTrace,
                    steps_per_chunk: int = 16) -> jax.Array:
  """The log-probability [B, S] of every recorded action under `params` (0 on inactive steps)."""
  logits_BSW = trace_logits(rule, params, trace, steps_per_chunk)
  return (bernoulli_log_prob(logits_BSW, trace.action_BSW, trace.masked_BSW, rule.temperature)
          * trace.active_BS)
