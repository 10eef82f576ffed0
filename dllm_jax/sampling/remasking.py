"""Remasking rules: which masked positions of the current block a step commits.

Each rule scores the eligible positions (`confidence`) and picks the ones to commit (`select`);
both receive one random key per batch row (`keys_B`).
Scheduled rules commit exactly the schedule's count per step, the best-scored first, or, with
`alg_temp > 0`, a sample without replacement from softmax(score / alg_temp) (Dream's `alg_temp`,
done by Gumbel-top-k). `DreamOrigin` and `Threshold` decide the count themselves.

Rule                     score of position i (x0 = the value drawn at i)
Random                   u ~ U(0, 1)                                  (LLaDA "random")
LowConfidence            softmax(logits)[x0], untempered              (LLaDA "low_confidence")
MaskGitPlus              p(x0) under the tempered, filtered sampling distribution (Dream)
TopKMargin               top-1 minus top-2 probability of that distribution      (Dream)
Entropy                  sum_v p(v) log p(v), i.e. minus its entropy             (Dream)
WeDLMEntropy             -(H(softmax(logits)) + lambda * (i - first masked i))   (WeDLM)
DreamOrigin              reveals each masked position with probability 1 - t_{j+1} / t_j
Threshold                softmax(logits)[x0]; commits all >= threshold, at least one (Fast-dLLM)
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from dllm_jax.sampling import row_random
from dllm_jax.sampling.schedule import DreamSchedule

# Eligible positions scored -inf (e.g. an EOS forbidden by `eos_confidence_inf`) still rank above
# ineligible ones, so a step never commits outside the current block or fewer than scheduled.
_FLOOR = -1e30


class StepInputs(NamedTuple):
  """What a rule sees at one step, for the positions [start, start + G) of the generated
  region: the current block's window, or the whole region (start = 0)."""
  logits_BGV: jax.Array         # model logits after forbidden tokens are set to -inf
  sample_logits_BGV: jax.Array  # logits of the sampling distribution (tempered, filtered)
  x0_BG: jax.Array              # drawn token values
  eligible_BG: jax.Array        # still masked and inside the row's current block
  count_B: jax.Array            # the schedule's count for this step
  step_in_block: jax.Array      # scalar
  steps_per_block: int
  start: jax.Array | int = 0    # first position of the window in the generated region
  gen_length: int | None = None  # the whole region's length (None: the window is the region)
  steps_taken_B: jax.Array | None = None  # iterations in which each row committed so far
  policy_params: Any = None     # LearnedPolicy: the network's weights

  def draws(self, draw, keys_B: jax.Array) -> jax.Array:
    """`draw(keys_B, (gen_length,))` [B, gen_length] sliced to the window: a position's random
    number does not depend on whether a window or the whole region is scored."""
    return row_random.window_draws(draw, keys_B, self.start, self.x0_BG.shape[1],
                                   self.gen_length)


def entropy(logits_BGV: jax.Array) -> jax.Array:
  """Entropy of softmax(logits) per position (terms with p = 0 count 0)."""
  log_p = jax.nn.log_softmax(logits_BGV.astype(jnp.float32), axis=-1)
  return -jnp.sum(jnp.where(jnp.isfinite(log_p), jnp.exp(log_p) * log_p, 0.0), axis=-1)


def token_probability(logits_BGV: jax.Array, x0_BG: jax.Array) -> jax.Array:
  log_probs = jax.nn.log_softmax(logits_BGV.astype(jnp.float32), axis=-1)
  return jnp.exp(jnp.take_along_axis(log_probs, x0_BG[..., None], axis=-1)[..., 0])


def select_top_k(score_BG: jax.Array, eligible_BG: jax.Array, count_B: jax.Array) -> jax.Array:
  """The `count_B` best-scored eligible positions of each row (ties: lower index first)."""
  score_BG = jnp.where(eligible_BG, jnp.maximum(score_BG, _FLOOR), -jnp.inf)
  order_BG = jnp.argsort(-score_BG, axis=-1, stable=True)
  rank_BG = jnp.argsort(order_BG, axis=-1, stable=True)
  return eligible_BG & (rank_BG < count_B[:, None])


def apply_rule(rule, inputs: StepInputs, key_token: jax.Array, key_score: jax.Array,
               key_select: jax.Array, top_p: float | None, top_k: int | None,
               adjust_score=None) -> tuple[StepInputs, jax.Array, jax.Array]:
  """One step of a rule, as every decode loop runs it: a rule with its own token temperature
  (`redraw`, EGI's first step) redraws the values with the loop's token keys, the rule scores
  the positions (`adjust_score(score, x0)` may change the scores, e.g. EOS last) and selects.
  Returns the inputs with the values to commit, the scores, and the selected eligible positions."""
  if hasattr(rule, "redraw"):
    inputs = inputs._replace(x0_BG=rule.redraw(inputs, key_token, top_p, top_k))
  score_BG = rule.confidence(inputs, key_score)
  if adjust_score is not None:
    score_BG = adjust_score(score_BG, inputs.x0_BG)
  return inputs, score_BG, rule.select(score_BG, inputs, key_select) & inputs.eligible_BG


@dataclasses.dataclass(frozen=True)
class _Scheduled:
  """Commits the schedule's count per step, best-scored first (or sampled with alg_temp)."""

  alg_temp: float = 0.0
  uses_schedule = True

  def __post_init__(self):
    if self.alg_temp < 0:
      raise ValueError(f"{type(self).__name__}.alg_temp must be >= 0, got {self.alg_temp}")

  def confidence(self, inputs: StepInputs, keys_B: jax.Array) -> jax.Array:
    raise NotImplementedError

  def select(self, score_BG: jax.Array, inputs: StepInputs, keys_B: jax.Array) -> jax.Array:
    if self.alg_temp > 0:
      score_BG = score_BG / self.alg_temp + inputs.draws(row_random.gumbel, keys_B)
    return select_top_k(score_BG, inputs.eligible_BG, inputs.count_B)


@dataclasses.dataclass(frozen=True)
class Random(_Scheduled):
  """LLaDA's random remasking: a uniformly random order of positions."""

  def confidence(self, inputs: StepInputs, keys_B: jax.Array) -> jax.Array:
    return inputs.draws(row_random.uniform, keys_B)


@dataclasses.dataclass(frozen=True)
class LowConfidence(_Scheduled):
  """LLaDA's low-confidence remasking: keep the most probable draws (untempered softmax)."""

  def confidence(self, inputs: StepInputs, keys_B: jax.Array) -> jax.Array:
    return token_probability(inputs.logits_BGV, inputs.x0_BG)


@dataclasses.dataclass(frozen=True)
class MaskGitPlus(_Scheduled):
  """Dream's maskgit_plus: probability of the draw under the sampling distribution."""

  def confidence(self, inputs: StepInputs, keys_B: jax.Array) -> jax.Array:
    return token_probability(inputs.sample_logits_BGV, inputs.x0_BG)


@dataclasses.dataclass(frozen=True)
class TopKMargin(_Scheduled):
  """Dream's topk_margin: top-1 minus top-2 probability of the sampling distribution."""

  def confidence(self, inputs: StepInputs, keys_B: jax.Array) -> jax.Array:
    top2 = jax.lax.top_k(jax.nn.softmax(inputs.sample_logits_BGV.astype(jnp.float32)), 2)[0]
    return top2[..., 0] - top2[..., 1]


@dataclasses.dataclass(frozen=True)
class Entropy(_Scheduled):
  """Dream's entropy rule: minus the entropy of the sampling distribution."""

  def confidence(self, inputs: StepInputs, keys_B: jax.Array) -> jax.Array:
    return -entropy(inputs.sample_logits_BGV)


@dataclasses.dataclass(frozen=True)
class WeDLMEntropy(_Scheduled):
  """WeDLM's position selection rule in the block loop (one token per step in the paper's quality
  tables): the lowest entropy of the untempered distribution plus `position_penalty` x (distance
  to the row's first still-masked position of the block), i.e. a bias toward left-to-right. The
  default 0.1 is the paper's setting for those tables (Tencent's engine defaults to 0.02 for
  threshold decoding). This is not WeDLM's decoder (which chooses among a sliding window of W
  slots after the committed prefix and stops at the first committed stop token): that is
  `streaming.StreamingSampler`, tested equal to Tencent's."""

  position_penalty: float = 0.1

  def __post_init__(self):
    super().__post_init__()
    if self.position_penalty < 0:
      raise ValueError(f"WeDLMEntropy.position_penalty must be >= 0, got {self.position_penalty}")

  def confidence(self, inputs: StepInputs, keys_B: jax.Array) -> jax.Array:
    index_G = jnp.arange(inputs.eligible_BG.shape[1])
    first_B1 = jnp.argmax(inputs.eligible_BG, axis=-1)[:, None]
    return -(entropy(inputs.logits_BGV) + self.position_penalty * (index_G - first_B1))


@dataclasses.dataclass(frozen=True)
class DreamOrigin:
  """Dream's origin: each masked position is revealed with probability 1 - t_{j+1} / t_j
  (all at the block's last step), so the count per step is random."""

  eps: float = 1e-3
  uses_schedule = True

  def confidence(self, inputs: StepInputs, keys_B: jax.Array) -> jax.Array:
    return inputs.draws(row_random.uniform, keys_B)

  def select(self, score_BG: jax.Array, inputs: StepInputs, keys_B: jax.Array) -> jax.Array:
    p = DreamSchedule(self.eps).transfer_probability(inputs.step_in_block, inputs.steps_per_block)
    return inputs.eligible_BG & (score_BG < p)


@dataclasses.dataclass(frozen=True)
class Threshold:
  """Fast-dLLM parallel decoding: commit every eligible position whose draw has untempered
  probability >= threshold, and always the most confident one. Blocks run until complete."""

  threshold: float = 0.9
  uses_schedule = False

  def __post_init__(self):
    if not 0 < self.threshold <= 1:
      raise ValueError(f"Threshold.threshold must be in (0, 1], got {self.threshold}")

  def confidence(self, inputs: StepInputs, keys_B: jax.Array) -> jax.Array:
    return token_probability(inputs.logits_BGV, inputs.x0_BG)

  def select(self, score_BG: jax.Array, inputs: StepInputs, keys_B: jax.Array) -> jax.Array:
    best_BG = select_top_k(score_BG, inputs.eligible_BG, jnp.ones_like(inputs.count_B))
    return best_BG | (inputs.eligible_BG & (score_BG >= self.threshold))


Remasking = (Random | LowConfidence | MaskGitPlus | TopKMargin | Entropy | WeDLMEntropy
             | DreamOrigin | Threshold)
