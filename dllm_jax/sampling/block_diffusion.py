"""Block diffusion decoding (LLaDA2.x, SDAR) with an exact block cache, in one compiled loop.

The canvas is cut into blocks of B positions counted from each row's first prompt token, and
the model attends block-causally (`ModelConfig.attention_block` = B), so a finished block's keys
and values never change again. Decoding, as in inclusionAI's `LLaDA2MoeModelLM.generate`:

  - the prompt's whole blocks are run once (prefill) and their keys/values cached;
  - each block (the first one holds the prompt's tail) starts all-mask; every step recomputes
    only the block's B tokens against the cache, commits the masked positions whose top
    probability exceeds `threshold` if there are at least as many as the step's scheduled count
    (B / steps per step), else the scheduled count by confidence (temperature 0);
  - with `editing_threshold` (LLaDA2.1 token-to-token editing) each step also rewrites the
    block's already committed, non-prompt tokens whose top token differs and whose probability
    exceeds it; once the block has no masks, steps go on while edits happen, at most
    `max_post_steps`; the minimum per step is then `num_to_transfer` (default 1), unscheduled;
  - a block is finished when a step finds it final (no masks, and no edit to make): that step's
    keys and values are those of the final tokens and stay in the cache (one extra B-token pass
    per block over the official loop, which recomputes the whole canvas every step instead);
  - a row stops after the block in which it produced EOS; the loop ends when every row stopped.

Sampling (`temperature` > 0), as the official generate: the logits are divided by the
temperature, filtered by `top_k` then `top_p`, a value is drawn at every position of the block
from that distribution, and its confidence (for the threshold, the fallback and editing) is the
drawn value's probability under that same tempered, filtered distribution. At temperature 0 the
value is the argmax and its confidence the plain softmax probability (`top_p`/`top_k` ignored,
as in the official code).

Other unmasking rules (`remasking=`, the rule dataclasses of `dllm_jax.sampling`: Random,
LowConfidence, RankThenSample (TPP), EGI, the other scheduled rules, Threshold, LearnedPolicy)
run inside the block through the same `remasking.apply_rule` as the main decode loop: the
positions still masked in the block are eligible, scheduled rules commit `schedule()`'s count per
step, Threshold and LearnedPolicy run the block until it is complete. They see the logits with the
mask token at -inf (as in `Sampler`); the official default leaves it as the official code does.
LearnedPolicy's time input is the row's committing steps over max(gen_length, B). Every row has
its own key (`rng`: one key, split per row, or one key per row); a row's randomness at its n-th
committing step comes from `fold_in(key, n)` alone (not from the other rows or the cache mode).

Left padding: each row's padding is a whole number of blocks, chosen so that every row's first
decoded block sits at the same canvas index; padding is hidden from attention. Rows move from
block to block together (a row whose block is final waits, committing nothing).

IMH (`imh.py`) inside the block: each step's pass gives the logits, the rule's positions get K
candidates from p**alpha, each candidate block is one more window pass against the cache, and
the mean-field weight sums over the masks left *in the block* (the decoder never computes later
blocks); so a step costs 1 + K passes (K = 1: one, no chain), and with several blocks the law is
not the main loop's IMH (whose weight covers every mask left).

RolloutIMH (`rollout_imh.py`) inside the block: IMH's step, but each candidate's weight is the
mean of R rollout estimates (`rollout_log_mass`), each rollout completing the masks left *in the
block* (uniformly random order, `rollout_tokens_per_step` per pass, values from p**alpha, S_hat =
the product of the local normalisers Z_j) by window passes against the cache: a rollout pass
evaluates the K R B rollout windows as K R passes of B windows (`lax.map`, the cache shared, as
IMH's candidates); the pseudo-marginal independent MH chain as in the main loop. What it targets:
the block's conditionals given the cache are p(x_b | x_<b), the later blocks marginalised (the
model is block-causal), so S_hat is unbiased for S_b(v) = sum over completions y of the block's
masks of p(y | x_<b, x_O, v)**alpha (one token per rollout pass, conditionals of one joint), and
the chain's stationary law at each step is the marginal of the block's tempered conditional.
With K -> infinity (one token per step) a block is drawn from p(x_b | x_<b)**alpha / Z_b(x_<b):
the output law is the product over blocks of those, blockwise tempering, not the global
p**alpha (which weighs each block by the tempered mass of the blocks after it; the main loop's
RolloutIMH targets that). With one block covering the generation the two coincide: the block
loop's law is then the main loop's (`oracle_exact.rollout_imh_distribution`, tested on the
oracle, and with two blocks its `block_suffix=True` law). Cost: a step is 1 + K passes and
K R (ceil(m / c) - 1) rollout passes, m the block's masks left after the step's commit, c
`rollout_tokens_per_step`; a block of n masks at one token per step and per rollout pass costs
(1 + K)(n + 1) + K R (n - 1)(n - 2) / 2 (the closing step included), counted in `nfe_B` (the
batch's `forward_passes` adds the step's largest rollout count). K = 1 runs no rollouts.

SMC (`smc.py`) inside the blocks: each run's P particles are rows of the loop (run-major, the
prompt's prefill computed once per run), each with its own canvas and its own cache of finished
blocks; a step's window pass gives every particle's logits, the positions (scheduled count) are
chosen, each particle's weight is multiplied by their local normalisers Z, the runs whose ESS
fell below `ess_threshold` x P are resampled systematically, and a resampled particle takes its
ancestor's whole canvas *and cache* (a gather over the cache's rows), then the values are drawn
from p**alpha / Z. The weights carry across blocks and one particle per run is drawn by its final
weight after the last block. Why per-particle caches rather than particles confined to the
current block over one shared cache: confining them would need a selection of one particle at
each block's end (resetting the weights), which targets the blockwise tempered law above and
loses the particles' diversity at every block boundary; carried across blocks, the incremental
weights (which need no look-ahead) make the same estimator as the main loop's SMC, targeting the
global p**alpha with the main loop's blocks, at P times the rows of cache (LLaDA2.0-mini, from
`eval_shape`: 40 MiB a row at a 512-token canvas in float32, against 16B weights) and one
gather of the cache at each step where a run resamples.
On the oracle the drawn particle's law is the main loop's (`oracle_exact.smc_particle_law` with
`block_length`: tested with two blocks, measured once with one). Cost: one pass per particle
and step, the closing step included: a run's `nfe_B` is P (n + 1) per block of n masks at one
token per step; `forward_passes` counts P per step. A row (particle) stops after the block
where it wrote EOS, its weight then frozen: with EOS the target is over the decoded blocks, not
the whole canvas. Only the drawn particle is returned (its canvas, cache and tokens), not the
particle set or the evidence estimate.

Multiple Block Editing (`reopened_blocks` = m > 0, with editing; this project's definition,
as no public code defines LLaDA2.1's MBE): every step runs a window of the current block and the
m decoded blocks before it (fewer at the start), attending to each other as one block
(`merged_span`, so the re-opened blocks see the new one) and to the cache before the window;
commits are made in the current block, edits anywhere in the window (committed, non-prompt
tokens; in the re-opened blocks never to the mask token, which nothing would fill); the block is
final when it has no mask and the window no edit (or `max_post_steps`). At temperature > 0 the
window's values are drawn with fresh noise each step. The keys/values of the window are
recomputed by every pass; the block that leaves the window at an advance gets one block-causal
pass and the last window one at the end (W tokens), so the cache ends exact; those passes are
counted in `nfe_B` and `forward_passes` (not with `exact_cache=False`).

Not supported here: token editing combined with a rule other than the default, and the learned
policy's training trace (decoding only). LLaDA2.2's insert/delete editing is out of scope.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dllm_jax.sampling import imh as imh_lib
from dllm_jax.sampling import smc as smc_lib
from dllm_jax.sampling import row_random, token_sampling
from dllm_jax.sampling.imh import IMH
from dllm_jax.sampling.learned_policy import LearnedPolicy
from dllm_jax.sampling.position_first import EGI, RankThenSample
from dllm_jax.sampling.remasking import (DreamOrigin, Entropy, LowConfidence, MaskGitPlus, Random,
                                         StepInputs, Threshold, TopKMargin, WeDLMEntropy,
                                         apply_rule, token_probability)
from dllm_jax.sampling.rollout_imh import RolloutIMH, rollout_log_mass
from dllm_jax.sampling.smc import SMC

# The rules that run inside a block (the `Sampler` rules that score and select in one pass).
BLOCK_RULES = (Random, LowConfidence, MaskGitPlus, TopKMargin, Entropy, WeDLMEntropy,
               DreamOrigin, Threshold, RankThenSample, EGI, LearnedPolicy, IMH, RolloutIMH, SMC)


@dataclasses.dataclass(frozen=True)
class BlockDiffusion:
  """Decoding settings (a static jit argument). The defaults are LLaDA2.0's evaluation setting
  (block 32, 32 steps, threshold 0.95, temperature 0)."""

  gen_length: int
  block_length: int = 32
  steps: int = 32
  threshold: float = 0.95
  editing_threshold: float | None = None
  max_post_steps: int = 16
  num_to_transfer: int = 1
  reopened_blocks: int = 0  # Multiple Block Editing: finished blocks kept open to edits
  exact_cache: bool = True  # False: every step recomputes the whole canvas (for benchmarks)
  temperature: float = 0.0
  top_p: float | None = None
  top_k: int | None = None
  remasking: Any = None  # None: the official threshold rule; else one of BLOCK_RULES

  def __post_init__(self):
    if self.gen_length < 1 or self.block_length < 1 or self.steps < 1:
      raise ValueError("gen_length, block_length and steps must be >= 1")
    if not 0.0 <= self.threshold <= 1.0:
      raise ValueError(f"threshold must be in [0, 1], got {self.threshold}")
    if self.editing_threshold is not None and not 0.0 <= self.editing_threshold <= 1.0:
      raise ValueError(f"editing_threshold must be in [0, 1], got {self.editing_threshold}")
    if self.num_to_transfer < 1 or self.max_post_steps < 0:
      raise ValueError("num_to_transfer must be >= 1 and max_post_steps >= 0")
    if self.reopened_blocks < 0:
      raise ValueError(f"reopened_blocks must be >= 0, got {self.reopened_blocks}")
    if self.reopened_blocks and self.editing_threshold is None:
      raise ValueError("reopened_blocks (Multiple Block Editing) keeps finished blocks open to "
                       "token edits; set editing_threshold too")
    if not self.temperature >= 0:
      raise ValueError(f"temperature must be >= 0, got {self.temperature}")
    if self.top_p is not None and not 0 < self.top_p <= 1:
      raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
    if self.top_k is not None and self.top_k < 1:
      raise ValueError(f"top_k must be >= 1, got {self.top_k}")
    rule = self.remasking
    if rule is not None and not isinstance(rule, BLOCK_RULES):
      raise ValueError(f"remasking must be None (the official threshold rule) or one of "
                       f"{[r.__name__ for r in BLOCK_RULES]}, got {rule!r}")
    if isinstance(rule, (IMH, SMC)) and (self.temperature or self.top_p or self.top_k):
      raise ValueError(f"{type(rule).__name__} draws its values from p**alpha (temperature "
                       "1/alpha, no top_p/top_k); leave temperature, top_p and top_k unset")
    if rule is not None and self.editing_threshold is not None:
      raise ValueError("editing_threshold works with the default rule only; leave remasking "
                       "unset to edit")

  @property
  def samples(self) -> bool:
    """Whether decoding draws random numbers (then `generate_blocks` needs `rng`)."""
    rule = self.remasking
    return (self.temperature > 0
            or isinstance(rule, (Random, DreamOrigin, LearnedPolicy, IMH, SMC))
            or getattr(rule, "alg_temp", 0) > 0
            or (isinstance(rule, EGI) and rule.first_temperature > 0))

  @classmethod
  def llada21_quality(cls, gen_length: int, **changes) -> BlockDiffusion:
    """LLaDA2.1's Q (quality) mode: threshold 0.7, editing threshold 0.5. The values the
    diffusers LLaDA2 pipeline documents for LLaDA2.1 quality (docs/api/pipelines/llada2.md);
    third-party evaluation scripts quote the same pair from the LLaDA2.1-mini model card as "Q
    Mode". The tech report (arXiv 2602.08676) gives no numbers; the model card itself was not
    read here."""
    return cls(gen_length, **{"threshold": 0.7, "editing_threshold": 0.5, **changes})

  @classmethod
  def llada21_speed(cls, gen_length: int, **changes) -> BlockDiffusion:
    """LLaDA2.1's S (speed) mode: threshold 0.5, editing threshold 0.0 (every committed token
    whose top choice changed is rewritten). The defaults of SGLang's `JointThreshold` decoder
    for LLaDA2.1 (sgl-project/sglang, docs/supported_models/text_generation/
    diffusion_language_models.md: "threshold: 0.5", "edit_threshold: 0.0", "recommended for
    most cases"); third-party evaluation scripts quote the same pair from the LLaDA2.1-mini model
    card as "Speed Mode" (one of them reads editing there as off, not 0.0). Second-hand: the
    model card itself was not read here."""
    return cls(gen_length, **{"threshold": 0.5, "editing_threshold": 0.0, **changes})

  def schedule(self) -> np.ndarray:
    """Tokens to commit at least, per step of a block: B // steps, the first B % steps one more
    (LLaDA2.0); LLaDA2.1 (editing) commits at least `num_to_transfer` every step."""
    steps = min(self.steps, self.gen_length)
    base, extra = divmod(self.block_length, steps)
    return np.array([base + (i < extra) for i in range(steps)], np.int32)


@dataclasses.dataclass(frozen=True)
class BlockLayout:
  """Where each row's prompt and generation sit on the canvas (host-side, static shapes)."""

  canvas: np.ndarray  # [B, L] prompt, padding, masks
  valid: np.ndarray  # [B, L] real (prompt or generated) positions
  gen_start: np.ndarray  # [B] canvas index of each row's first generated token
  first_block: int  # the first decoded block (blocks before it are prefilled)
  num_blocks: int  # blocks on the canvas


def layout(prompt_BP: np.ndarray, prompt_mask_BP: np.ndarray, decoder: BlockDiffusion,
           mask_id: int, pad_id: int) -> BlockLayout:
  """Puts each row's prompt after whole blocks of padding so that all rows decode their first
  block (which holds their prompt's tail) at the same canvas block."""
  prompt_BP, prompt_mask_BP = np.asarray(prompt_BP), np.asarray(prompt_mask_BP, bool)
  B_len = decoder.block_length
  lengths = prompt_mask_BP.sum(1)
  if lengths.min() < 1:
    raise ValueError("every prompt needs at least one token")
  first = int((lengths // B_len).max())
  blocks = -(-(decoder.gen_length + int((lengths % B_len).max())) // B_len)
  L = (first + blocks) * B_len
  rows = prompt_BP.shape[0]
  canvas = np.full((rows, L), mask_id, np.int32)
  valid = np.ones((rows, L), bool)
  gen_start = np.zeros(rows, np.int32)
  for b in range(rows):
    pad = (first - lengths[b] // B_len) * B_len
    canvas[b, :pad], valid[b, :pad] = pad_id, False
    canvas[b, pad:pad + lengths[b]] = prompt_BP[b][prompt_mask_BP[b]]
    gen_start[b] = pad + lengths[b]
  return BlockLayout(canvas, valid, gen_start, first, first + blocks)


def _threshold_commit(decoder: BlockDiffusion, p_BW: jax.Array, masked_BW: jax.Array,
                      n: jax.Array) -> jax.Array:
  """The official rule: the masks whose confidence exceeds the threshold when there are at
  least `n` of them, else the `n` most confident masks."""
  confidence_BW = jnp.where(masked_BW, p_BW, -jnp.inf)
  high_BW = (confidence_BW > decoder.threshold) & masked_BW
  count_B = jnp.minimum(n, masked_BW.sum(-1))
  rank_BW = jnp.argsort(jnp.argsort(-confidence_BW, axis=-1, stable=True), axis=-1)
  top_BW = (rank_BW < count_B[:, None]) & masked_BW
  return jnp.where((high_BW.sum(-1) >= n)[:, None], high_BW, top_BW)


def _draw(decoder: BlockDiffusion, logits_BWV: jax.Array, key_B: jax.Array, start: jax.Array,
          region: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The sampling logits, the drawn values and their confidence (see the module docstring)."""
  T = decoder.temperature
  if T <= 0:
    probs_BWV = jax.nn.softmax(logits_BWV, axis=-1)
    return logits_BWV, jnp.argmax(probs_BWV, axis=-1).astype(jnp.int32), probs_BWV.max(-1)
  sample_BWV = token_sampling.sampling_logits(logits_BWV, T, decoder.top_p, decoder.top_k)
  x0_BW = token_sampling.draw_tokens(key_B, sample_BWV, T, start, region)
  return sample_BWV, x0_BW, token_probability(sample_BWV, x0_BW)


def _imh_commit(rule: IMH, window_logits, logits_BWV: jax.Array, inputs: StepInputs,
                tok_BW: jax.Array, keys: list[jax.Array], max_chosen: int, open_B: jax.Array):
  """One IMH step inside the block (`imh.py`): positions by `rule.positions`, K candidates
  from p**alpha there, each scored by the mass of the block's masks left after it
  (`window_logits(candidate_BW)`, one window pass per candidate): the mean-field product, or
  for RolloutIMH R rollouts completing the block (`rollout_imh.rollout_log_mass`, rows whose
  block is closed (`open_B` False) roll nothing out); then the independent MH chain.
  Returns the positions to commit, the block's tokens with the chosen candidate and each row's
  rollout passes."""
  key_cand, key_score, key_select, key_chain, *key_roll = keys
  no_rollouts_B = jnp.zeros(open_B.shape, jnp.int32)
  mode_BW = jnp.argmax(logits_BWV, axis=-1).astype(jnp.int32)
  inputs = inputs._replace(sample_logits_BGV=logits_BWV, x0_BG=mode_BW)
  score_BW = rule.positions.confidence(inputs, key_score)
  chosen_BW = rule.positions.select(score_BW, inputs, key_select) & inputs.eligible_BG
  index_BM, valid_BM = imh_lib.gather_positions(chosen_BW, max_chosen)
  logits_BMV = jnp.take_along_axis(logits_BWV, index_BM[..., None], axis=1)
  K = rule.num_candidates
  values_KBM = imh_lib.draw_candidates(key_cand, logits_BMV, rule.alpha, K)
  cand_KBW = imh_lib.place_candidates(tok_BW, index_BM, valid_BM, values_KBM)
  if K == 1:  # no chain: the one candidate is committed
    return chosen_BW, cand_KBW[0], no_rollouts_B
  # One candidate at a time (`lax.map`): the cache is shared, not copied K times.
  cand_logits_KBWV = jax.lax.map(window_logits, cand_KBW)
  remaining_BW = inputs.eligible_BG & ~chosen_BW
  if isinstance(rule, RolloutIMH):
    rows, W = tok_BW.shape
    runs = K * rule.num_rollouts

    def forward(block_XW):  # one candidate-rollout batch of rows at a time, as above
      logits = jax.lax.map(window_logits, block_XW.reshape(runs, rows, W))
      return logits.reshape(runs * rows, W, logits.shape[-1])

    log_w_KB, rollout_passes_B = rollout_log_mass(
        key_roll[0], forward, cand_KBW, cand_logits_KBWV, remaining_BW & open_B[:, None],
        jnp.zeros((W,), jnp.int32), rule)
  else:
    log_w_KB = imh_lib.suffix_log_mass(cand_logits_KBWV, remaining_BW, rule.alpha)
    rollout_passes_B = no_rollouts_B
  state_B, _ = imh_lib.run_chain(key_chain, log_w_KB)
  return (chosen_BW, jnp.take_along_axis(cand_KBW, state_B[None, :, None], axis=0)[0],
          rollout_passes_B)


def _smc_commit(rule: SMC, logits_XWV: jax.Array, inputs: StepInputs, keys: list[jax.Array],
                run_key_R: jax.Array, log_w_X: jax.Array, open_X: jax.Array):
  """One SMC step inside the block (`smc.py`), rows X = R runs x P particles (run-major):
  positions by `rule.positions`, each open particle's weight times the local normalisers Z of
  its positions, systematic resampling of the runs whose ESS fell below the threshold. Returns
  the positions, the values drawn from p**alpha / Z there (for the particle that holds the slot
  after resampling), the ancestors [R, P], whether any run resampled, the new log weights."""
  key_token, key_score, key_select = keys
  n = rule.num_particles
  mode_XW = jnp.argmax(logits_XWV, axis=-1).astype(jnp.int32)
  inputs = inputs._replace(sample_logits_BGV=logits_XWV, x0_BG=mode_XW)
  score_XW = rule.positions.confidence(inputs, key_score)
  chosen_XW = rule.positions.select(score_XW, inputs, key_select) & inputs.eligible_BG
  chosen_XW = chosen_XW & open_X[:, None]
  log_z_XW = smc_lib.log_normalizer(logits_XWV, rule.alpha)
  log_w_RP = (log_w_X + jnp.sum(jnp.where(chosen_XW, log_z_XW, 0.0), axis=-1)).reshape(-1, n)
  resample_R = smc_lib.effective_sample_size(log_w_RP) < rule.ess_threshold * n
  ancestors_RP = jnp.where(resample_R[:, None], smc_lib.systematic_ancestors(run_key_R, log_w_RP),
                           jnp.arange(n)[None])
  pick = lambda x_X: smc_lib.gather_particles(x_X, ancestors_RP)
  logits_XWV, chosen_XW = pick(logits_XWV), pick(chosen_XW)
  gumbel_XWV = row_random.gumbel(key_token, logits_XWV.shape[1:])
  tokens_XW = jnp.argmax(rule.alpha * jax.nn.log_softmax(logits_XWV, axis=-1) + gumbel_XWV,
                         axis=-1).astype(jnp.int32)
  new_log_w_X = jnp.where(resample_R[:, None], 0.0, log_w_RP).reshape(-1)
  return chosen_XW, tokens_XW, ancestors_RP, resample_R.any(), new_log_w_X


@functools.partial(jax.jit, static_argnums=(0, 1, 5, 6, 7))
def _decode(decoder: BlockDiffusion, denoise_fn, params, arrays, policy_params, first_block: int,
            num_blocks: int, ids: tuple[int, int]):
  canvas_BL, valid_BL, gen_start_B, keys_B = arrays
  mask_id, eos_id = ids
  Bk = decoder.block_length
  rows, L = canvas_BL.shape
  editing = decoder.editing_threshold is not None
  rule = decoder.remasking
  imh = isinstance(rule, IMH)
  rollouts = isinstance(rule, RolloutIMH) and rule.num_candidates > 1
  smc = isinstance(rule, SMC)
  num_particles = rule.num_particles if smc else 1
  schedule = jnp.asarray(decoder.schedule())
  # One pass per step, and IMH's candidate passes (none with one candidate).
  passes = 1 + (rule.num_candidates if imh and rule.num_candidates > 1 else 0)
  gen_BL = jnp.arange(L)[None] >= gen_start_B[:, None]
  # Random numbers are drawn over the decoded region (at least a block) and sliced to the window.
  region = max(decoder.gen_length, Bk)
  # Multiple Block Editing: each step's window E covers the current block and up to `reopen`
  # blocks before it (never before the first decoded block), W positions, attended as one block
  # (arrays `_BE`); the current block sits at offset `start - window` in it.
  reopen = min(decoder.reopened_blocks, num_blocks - first_block - 1)
  W = (reopen + 1) * Bk

  if first_block:
    _, prefix = denoise_fn.with_cache(params, canvas_BL[:, :first_block * Bk],
                                      valid_BL[:, :first_block * Bk], 0, 1)
    grow = lambda a: jnp.pad(a, ((0, 0), (0, L - a.shape[1]), (0, 0), (0, 0)))
    cache = [(grow(k), grow(v)) for k, v in prefix]
  else:
    _, cache = denoise_fn.with_cache(params, canvas_BL, valid_BL, 0, 1)
    cache = [(jnp.zeros_like(k), jnp.zeros_like(v)) for k, v in cache]
  runs = rows
  if smc:  # rows become particles, run-major, sharing the prefill; keys as in `decode.py`
    run_keys_R, final_keys_R, base_R = jax.vmap(lambda k: jax.random.split(k, 3), out_axes=1)(
        keys_B)
    keys_B = jax.vmap(lambda k: jax.vmap(lambda i: jax.random.fold_in(k, i))(
        jnp.arange(num_particles)))(base_R).reshape(runs * num_particles)
    canvas_BL, valid_BL, gen_start_B, gen_BL = (jnp.repeat(x, num_particles, axis=0) for x in (
        canvas_BL, valid_BL, gen_start_B, gen_BL))
    cache = jax.tree.map(lambda a: jnp.repeat(a, num_particles, axis=0), cache)
    rows = runs * num_particles

  def block_logits(cache, canvas, start, width=Bk, merged_span=None):
    """The logits [B, width, V] of positions [start, start + width) (the block) and the cache
    with their keys/values; `merged_span`: positions attending as one block."""
    merged = {} if merged_span is None else {"merged_span": merged_span}
    if decoder.exact_cache:
      logits_BWV, cache = denoise_fn.window_with_cache(params, cache, canvas, valid_BL, start,
                                                       width, **merged)
    else:
      logits_BWV = denoise_fn.with_cache(params, canvas, valid_BL, start, width, **merged)[0]
    logits_BWV = logits_BWV.astype(jnp.float32)
    if rule is not None:  # as the main loop's rules see them
      logits_BWV = logits_BWV.at[..., mask_id].set(-jnp.inf)
    return logits_BWV, cache

  def step(state):
    (canvas, cache, block, s, post_B, done_B, nfe, row_steps_B, blocks_B, rollout_B,
     log_w_X) = state
    start = block * Bk
    if reopen:
      window = jnp.maximum(start - reopen * Bk, first_block * Bk)
      logits_BEV, new_cache = block_logits(cache, canvas, window, W, (window, start + Bk))
    else:
      logits_BWV, new_cache = block_logits(cache, canvas, start)
    # RolloutIMH takes a fifth key; IMH keeps its four.
    keys = row_random.step_keys(keys_B, row_steps_B,
                                5 if isinstance(rule, RolloutIMH) else 4 if imh else 3)
    key_token, key_score, key_select = keys[:3]
    region_start = (block - first_block) * Bk
    if reopen:  # values over the window (fresh noise each step), the block's sliced from them
      drawn_BE = _draw(decoder, logits_BEV, key_token, 0, W)
      sample_BWV, x0_BW, p_BW = (jax.lax.dynamic_slice_in_dim(a, start - window, Bk, 1)
                                 for a in drawn_BE)
    else:
      sample_BWV, x0_BW, p_BW = _draw(decoder, logits_BWV, key_token, region_start, region)
    tok_BW = jax.lax.dynamic_slice_in_dim(canvas, start, Bk, 1)
    gen_BW = jax.lax.dynamic_slice_in_dim(gen_BL, start, Bk, 1)
    masked_BW = (tok_BW == mask_id) & gen_BW
    has_mask_B = masked_BW.any(-1)
    step_in_block = jnp.minimum(s, schedule.shape[0] - 1)
    edit_BW = jnp.zeros_like(masked_BW)
    if editing:
      post_B = post_B + (~has_mask_B).astype(jnp.int32)
      if reopen:  # edits anywhere in the window up to the current block's end
        _, x0_BE, p_BE = drawn_BE
        tok_BE = jax.lax.dynamic_slice_in_dim(canvas, window, W, 1)
        index_E = window + jnp.arange(W)
        open_BE = (jax.lax.dynamic_slice_in_dim(gen_BL, window, W, 1)
                   & (index_E < start + Bk)[None] & (tok_BE != mask_id))
        # A re-opened block is never edited back to the mask token (nothing would fill it).
        open_BE = open_BE & ((index_E >= start)[None] | (x0_BE != mask_id))
        edit_BE = open_BE & (p_BE > decoder.editing_threshold) & (x0_BE != tok_BE)
        edits_B = edit_BE.any(-1)
      else:
        edit_BW = (~masked_BW & gen_BW & (p_BW > decoder.editing_threshold) & (x0_BW != tok_BW))
        edits_B = edit_BW.any(-1)
      final_B = ~has_mask_B & ((post_B > decoder.max_post_steps) | ~edits_B)
    elif rule is None or rule.uses_schedule:
      final_B = ~has_mask_B | (s >= schedule.shape[0])
    else:  # Threshold, LearnedPolicy: the block runs until it is complete
      final_B = ~has_mask_B
    final_B = final_B | done_B
    rollout_passes_B = jnp.zeros((rows,), jnp.int32)
    if rule is None:
      n = decoder.num_to_transfer if editing else schedule[step_in_block]
      commit_BW = _threshold_commit(decoder, p_BW, masked_BW, n)
    else:
      count_B = jnp.full((rows,), schedule[step_in_block], jnp.int32)
      inputs = StepInputs(logits_BWV, sample_BWV, x0_BW, masked_BW, count_B, step_in_block,
                          schedule.shape[0], region_start, region, row_steps_B, policy_params)
      if imh:
        window_logits = lambda block_BW: block_logits(
            cache, jax.lax.dynamic_update_slice_in_dim(canvas, block_BW, start, 1), start)[0]
        commit_BW, x0_BW, rollout_passes_B = _imh_commit(
            rule, window_logits, logits_BWV, inputs, tok_BW, keys, int(decoder.schedule().max()),
            ~final_B)
      elif smc:
        (run_key_R,) = row_random.step_keys(run_keys_R, row_steps_B[::num_particles], 1)
        commit_BW, tokens_BW, ancestors_RP, resampled, log_w_X = _smc_commit(
            rule, logits_BWV, inputs, keys[:3], run_key_R, log_w_X, ~final_B)
        # The particles that hold the slots now, with their canvases and caches of finished
        # blocks (the current block's keys/values are recomputed at the next pass).
        pick = lambda x_X: smc_lib.gather_particles(x_X, ancestors_RP)
        canvas, new_cache, done_B, final_B = jax.lax.cond(  # no copy when no run resamples
            resampled, lambda x: jax.tree.map(pick, x), lambda x: x,
            (canvas, new_cache, done_B, final_B))
        tok_BW = jax.lax.dynamic_slice_in_dim(canvas, start, Bk, 1)
        x0_BW = jnp.where(commit_BW, tokens_BW, tok_BW)
      else:
        inputs, _, commit_BW = apply_rule(rule, inputs, key_token, key_score, key_select,
                                          decoder.top_p, decoder.top_k)
        x0_BW = inputs.x0_BG
    if reopen:
      commit_BE = jax.lax.dynamic_update_slice_in_dim(jnp.zeros_like(edit_BE), commit_BW,
                                                      start - window, 1)
      change_BE = (commit_BE | edit_BE) & ~final_B[:, None]
      canvas = jax.lax.dynamic_update_slice_in_dim(canvas, jnp.where(change_BE, x0_BE, tok_BE),
                                                   window, 1)
    else:
      change_BW = (commit_BW | edit_BW) & ~final_B[:, None]
      canvas = jax.lax.dynamic_update_slice_in_dim(canvas, jnp.where(change_BW, x0_BW, tok_BW),
                                                   start, 1)
    advance = final_B.all()
    recomputed = jnp.bool_(False)
    if reopen and decoder.exact_cache:
      # The block that leaves the window gets its keys/values recomputed block-causally (one
      # B-token pass), so that every block before the window is exact in the cache.
      leaving = block - reopen
      recomputed = advance & (leaving >= first_block)
      new_cache = jax.lax.cond(recomputed, lambda c: block_logits(c, canvas, leaving * Bk)[1],
                               lambda c: c, new_cache)
    end_BL = jnp.arange(L)[None] < start + Bk
    eos_B = ((canvas == eos_id) & gen_BL & end_BL).any(-1)
    done_before_B = done_B
    done_B = jnp.where(advance, done_B | eos_B, done_B)
    zeros = jnp.zeros_like(post_B)
    return (canvas, new_cache, block + advance.astype(block.dtype),
            jnp.where(advance, 0, s + 1), jnp.where(advance, zeros, post_B), done_B,
            nfe + passes + (jnp.max(rollout_passes_B) if rollouts else 0)
            + recomputed.astype(jnp.int32),
            row_steps_B + (~final_B).astype(jnp.int32),
            blocks_B + (advance & ~done_before_B).astype(jnp.int32), rollout_B + rollout_passes_B,
            log_w_X)

  def not_finished(state):
    _, _, block, _, _, done_B, _, _, _, _, _ = state
    return (block < num_blocks) & ~done_B.all()

  state = (canvas_BL, cache, jnp.int32(first_block), jnp.int32(0), jnp.zeros(rows, jnp.int32),
           jnp.zeros(rows, bool), jnp.int32(0), jnp.zeros(rows, jnp.int32),
           jnp.zeros(rows, jnp.int32), jnp.zeros(rows, jnp.int32),
           jnp.zeros(rows))  # SMC: each particle's log weight since its run last resampled
  canvas, cache, end_block, _, _, _, nfe, row_steps_B, blocks_B, rollout_B, log_w_X = (
      jax.lax.while_loop(not_finished, step, state))
  # A row's own forward count: its steps with the block still open, plus each block's closing
  # step (what decoding that row alone would take), plus its rollout passes (RolloutIMH).
  nfe_B = passes * (row_steps_B + blocks_B) + rollout_B
  if reopen and decoder.exact_cache:
    # The last window's keys/values recomputed block-causally (one W-token pass), so the
    # returned cache is exact; a row's count adds the blocks that left its window, and this.
    last = jnp.maximum(end_block - 1 - reopen, first_block) * Bk
    cache = block_logits(cache, canvas, last, W)[1]
    nfe = nfe + 1
    nfe_B = nfe_B + jnp.maximum(blocks_B - reopen, 0) + 1
  if not smc:
    return canvas, cache, nfe, nfe_B
  # SMC: one particle per run drawn by its final weight; a run's count is its particles' sum
  # and the batch's counts every particle's window (P per step).
  log_w_RP = log_w_X.reshape(runs, num_particles)
  drawn_R = jax.vmap(jax.random.categorical)(final_keys_R, log_w_RP)
  index_R = jnp.arange(runs) * num_particles + drawn_R
  return (canvas[index_R], jax.tree.map(lambda a: a[index_R], cache), nfe * num_particles,
          jnp.sum(nfe_B.reshape(runs, num_particles), axis=1))


@dataclasses.dataclass(frozen=True)
class BlockDecodeOutput:
  tokens: np.ndarray  # [B, gen_length]: each row's generated tokens (masks past a stopped row)
  forward_passes: int  # model calls over the batch, prefill excluded
  nfe_B: np.ndarray  # [B] each row's own forward passes (= forward_passes for the row alone)
  canvas: np.ndarray
  cache: list  # every layer's keys and values over the canvas (finished blocks exact)
  layout: BlockLayout


def generate_blocks(decoder: BlockDiffusion, denoise_fn, params, prompt_BP, prompt_mask_BP=None,
                    *, mask_id: int, eos_id: int, pad_id: int, rng: jax.Array | None = None,
                    policy_params=None) -> BlockDecodeOutput:
  """Decodes `gen_length` tokens after each prompt (left-padded rows allowed); see the module
  docstring. The model's `attention_block` must equal `decoder.block_length`. `rng` (one key,
  or one key per row) is needed when decoding samples (`decoder.samples`); `policy_params` are
  the network weights of a `LearnedPolicy` rule."""
  block = getattr(getattr(denoise_fn, "config", None), "attention_block", None)
  if block != decoder.block_length:
    raise ValueError(f"the model attends in blocks of {block}; decode with block_length={block} "
                     "(or set ModelConfig.attention_block to the block length)")
  prompt_BP = np.asarray(prompt_BP)
  if prompt_mask_BP is None:
    prompt_mask_BP = np.ones(prompt_BP.shape, bool)
  if rng is None and decoder.samples:
    raise ValueError("this decoder samples (temperature > 0 or a random rule); pass "
                     "rng=jax.random.key(seed)")
  if isinstance(decoder.remasking, LearnedPolicy) != (policy_params is not None):
    raise ValueError("policy_params go with remasking=LearnedPolicy(...) and only with it")
  lay = layout(prompt_BP, prompt_mask_BP, decoder, mask_id, pad_id)
  keys_B = row_random.row_keys(jax.random.key(0) if rng is None else rng, prompt_BP.shape[0])
  canvas, cache, nfe, nfe_B = _decode(decoder, denoise_fn, params,
                               (jnp.asarray(lay.canvas), jnp.asarray(lay.valid),
                                jnp.asarray(lay.gen_start), keys_B), policy_params,
                               lay.first_block, lay.num_blocks, (mask_id, eos_id))
  canvas = np.asarray(canvas)
  tokens = np.stack([canvas[b, s:s + decoder.gen_length] for b, s in enumerate(lay.gen_start)])
  return BlockDecodeOutput(tokens, int(nfe), np.asarray(nfe_B), canvas, cache, lay)
