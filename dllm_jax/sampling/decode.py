"""The compiled decoding loop: every sampler in one `lax.while_loop` under one `jax.jit`.

Canvas layout (per row): [left padding | prompt | gen_length masks]; P is the padded prompt
length and G = gen_length, so the canvas is [B, P + G] and positions P.. are generated; W is
the block length (the window of the generated region decoded at a step).

Each iteration runs one forward pass (IMH: K batched candidate passes; RolloutIMH: and their
rollouts; SMC: one per particle, the rows then being P particles per run), draws token values for
the current block's positions, scores the positions still masked inside the block, and
commits the ones the remasking rule selects. Committed tokens never change. Blocks advance in
lockstep for the whole batch: scheduled rules give block b the iterations
[b * steps_per_block, (b + 1) * steps_per_block); Threshold moves on once every row has
finished the block (rows done early wait without committing or counting evaluations).

Every row has its own key (`rng` may be one key per row; a single key is split into B). Row b's
randomness at its n-th active iteration comes from `fold_in(key_b, n)` alone, so a sample does
not depend on the batch, shard or process it is decoded in.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import struct

from dllm_jax.sampling import block_cache, row_random, token_sampling
from dllm_jax.sampling import imh as imh_lib
from dllm_jax.sampling import smc as smc_lib
from dllm_jax.sampling.imh import IMH
from dllm_jax.sampling.learned_policy import LearnedPolicy, PolicyTrace
from dllm_jax.sampling.remasking import StepInputs, apply_rule
from dllm_jax.sampling.rollout_imh import RolloutIMH, rollout_log_mass
from dllm_jax.sampling.sampler import Sampler
from dllm_jax.sampling.smc import SMC

DenoiseFn = Callable[..., jax.Array]


@struct.dataclass
class DecodeOutput:
  tokens_BL: jax.Array          # final canvas: padding, prompt, generated tokens
  nfe_B: jax.Array              # canvases evaluated by the denoiser (CFG x2, IMH x K)
  steps: jax.Array              # loop iterations run
  logprob_BG: jax.Array         # log p(token) under the model when committed (temperature 1)
  confidence_BG: jax.Array      # the rule's score of the position when committed
  commit_step_BG: jax.Array     # iteration at which each position was committed
  imh_accepts_B: jax.Array      # IMH: accepted moves of the chains (0 for other rules)
  policy_trace: Any = None      # LearnedPolicy: its inputs, actions and their log-probs per step
  particles_BNL: Any = None     # SMC: every particle's final canvas (tokens_BL is one of them)
  particle_log_weights_BN: Any = None  # SMC: their normalised log weights
  resamples_B: Any = None       # SMC: resampling events of each run
  log_evidence_B: Any = None    # SMC: log of the run's estimate of sum_x p(x)^alpha (unbiased)

  @property
  def generated_BG(self) -> jax.Array:
    return self.tokens_BL[..., self.tokens_BL.shape[-1] - self.logprob_BG.shape[-1]:]


@struct.dataclass
class _State:
  canvas_BL: jax.Array
  step: jax.Array               # loop iteration
  row_steps_B: jax.Array        # iterations in which each row had positions to commit
  nfe_B: jax.Array
  logprob_BG: jax.Array
  confidence_BG: jax.Array
  commit_step_BG: jax.Array
  imh_accepts_B: jax.Array
  logits_BGV: Any = None        # IMH: logits of the current canvas
  cache: Any = None             # block cache: every layer's keys and values
  cache_block: Any = None       # block cache: the block it was built in, and its age
  cache_age: Any = None
  policy_trace: Any = None      # LearnedPolicy: a PolicyTrace
  particle_log_w_B: Any = None  # SMC (rows are particles): log weight since the last resampling
  resamples_B: Any = None       # SMC: resampling events (per particle row, equal within a run)
  log_evidence_B: Any = None    # SMC: log mean weight summed over resamplings (per particle row)


@struct.dataclass
class _Inputs:
  """What stays fixed during decoding."""
  params: Any
  attn_mask_BL: jax.Array
  prompt_mask_BL: jax.Array
  keys_B: jax.Array
  policy_params: Any = None
  run_keys_B: Any = None        # SMC: one key per run (rows are its particles)


def _model_batch(sampler: Sampler, canvas_BL: jax.Array, inputs: _Inputs):
  """The canvases the model sees: with CFG, the conditional and the prompt-masked ones."""
  if sampler.cfg_scale <= 0:
    return canvas_BL, inputs.attn_mask_BL
  uncond_BL = jnp.where(inputs.prompt_mask_BL, sampler.mask_token_id, canvas_BL)
  return (jnp.concatenate([canvas_BL, uncond_BL]),
          jnp.concatenate([inputs.attn_mask_BL, inputs.attn_mask_BL]))


def _finish_logits(sampler: Sampler, logits_XTV: jax.Array) -> jax.Array:
  """CFG combination, then the mask token (and EOS if forbidden) set to -inf."""
  logits_XTV = logits_XTV.astype(jnp.float32)
  if sampler.cfg_scale > 0:
    cond, uncond = jnp.split(logits_XTV, 2)
    logits_XTV = uncond + (sampler.cfg_scale + 1.0) * (cond - uncond)
  forbidden = [sampler.mask_token_id] + ([sampler.eos_token_id] if sampler.forbid_eos else [])
  vocab = jnp.arange(logits_XTV.shape[-1])
  return jnp.where(jnp.isin(vocab, jnp.array(forbidden)), -jnp.inf, logits_XTV)


def _forward(sampler: Sampler, denoise_fn: DenoiseFn, canvas_BL: jax.Array,
             inputs: _Inputs) -> jax.Array:
  """Logits [B, G, V] of the generated region."""
  logits = denoise_fn(inputs.params, *_model_batch(sampler, canvas_BL, inputs))
  return _finish_logits(sampler, logits[:, canvas_BL.shape[1] - sampler.gen_length:])


def _window_forward(sampler: Sampler, denoise_fn: DenoiseFn, canvas_BL: jax.Array,
                    inputs: _Inputs, start: jax.Array) -> jax.Array:
  """Logits [B, W, V] of the generated region's window [start, start + W); through the
  denoiser's `logits_window` when it has one (no LM head outside the window)."""
  W = sampler.block_len
  if not hasattr(denoise_fn, "logits_window"):
    return jax.lax.dynamic_slice_in_dim(_forward(sampler, denoise_fn, canvas_BL, inputs), start,
                                        W, axis=1)
  P = canvas_BL.shape[1] - sampler.gen_length
  logits = denoise_fn.logits_window(inputs.params, *_model_batch(sampler, canvas_BL, inputs),
                                    P + start, W)
  return _finish_logits(sampler, logits)


def _cached_forward(sampler: Sampler, denoise_fn: DenoiseFn, state: _State, block: jax.Array,
                    inputs: _Inputs) -> tuple[jax.Array, dict[str, Any]]:
  """Logits [B, W, V] of the current block through the block cache: a full pass (refreshing
  the cache) at a new block or when the cache is due, else only the block's tokens (dual) or
  the block and every later position in the narrowest window that holds them (prefix).
  Returns them with the state fields to update."""
  W = sampler.block_len
  P = state.canvas_BL.shape[1] - sampler.gen_length
  start = P + block * W
  tokens, mask = _model_batch(sampler, state.canvas_BL, inputs)
  refresh = state.cache_block != block
  if sampler.cache.refresh_every is not None:
    refresh |= state.cache_age >= sampler.cache.refresh_every

  def full(_):
    return denoise_fn.with_cache(inputs.params, tokens, mask, start, W)

  if sampler.cache.mode == "dual":
    def window(_):
      return denoise_fn.window(inputs.params, state.cache, tokens, mask, start, W), state.cache

    logits, cache = jax.lax.cond(refresh, full, window, None)
  else:
    widths = sampler.cache.suffix_widths(sampler.num_blocks)

    def suffix(n):
      return lambda _: (denoise_fn.suffix_window(inputs.params, state.cache, tokens, mask, start,
                                                 W, n * W), state.cache)

    # Branch 0 is the full pass; branch i the i-th narrowest window holding the blocks left.
    blocks_left = sampler.num_blocks - block
    branch = jnp.where(refresh, 0, 1 + jnp.sum(jnp.array(widths) < blocks_left))
    logits, cache = jax.lax.switch(branch, [full] + [suffix(n) for n in widths], None)
  return _finish_logits(sampler, logits), dict(
      cache=cache, cache_block=block, cache_age=jnp.where(refresh, 1, state.cache_age + 1))


def _evaluations(sampler: Sampler) -> int:
  return 2 if sampler.cfg_scale > 0 else 1


def _current_block(sampler: Sampler, gen_BG: jax.Array, step: jax.Array) -> jax.Array:
  """The block being decoded (one for the whole batch)."""
  if sampler.remasking.uses_schedule:
    return step // sampler.steps_per_block
  masked_BG = gen_BG == sampler.mask_token_id
  block_G = jnp.arange(sampler.gen_length) // sampler.block_len
  return jnp.min(jnp.where(masked_BG, block_G, sampler.num_blocks))


def _eligible(sampler: Sampler, gen_BG: jax.Array, block: jax.Array) -> jax.Array:
  block_G = jnp.arange(sampler.gen_length) // sampler.block_len
  return (gen_BG == sampler.mask_token_id) & (block_G == block)[None]


def _log_prob(logits_BGV: jax.Array, tokens_BG: jax.Array) -> jax.Array:
  log_p = jax.nn.log_softmax(logits_BGV, axis=-1)
  return jnp.take_along_axis(log_p, tokens_BG[..., None], axis=-1)[..., 0]


def _commit(state: _State, sampler: Sampler, commit_BG: jax.Array, new_gen_BG: jax.Array,
            logprob_BG: jax.Array, score_BG: jax.Array, active_B: jax.Array, nfe: int,
            **changes) -> _State:
  P = state.canvas_BL.shape[1] - sampler.gen_length
  gen_BG = jnp.where(commit_BG, new_gen_BG, state.canvas_BL[:, P:])
  return state.replace(
      canvas_BL=jnp.concatenate([state.canvas_BL[:, :P], gen_BG], axis=1),
      step=state.step + 1, row_steps_B=state.row_steps_B + active_B,
      nfe_B=state.nfe_B + active_B * nfe,
      logprob_BG=jnp.where(commit_BG, logprob_BG, state.logprob_BG),
      confidence_BG=jnp.where(commit_BG, score_BG, state.confidence_BG),
      commit_step_BG=jnp.where(commit_BG, state.step, state.commit_step_BG), **changes)


def _schedule_inputs(sampler: Sampler, state: _State, eligible_BG: jax.Array):
  step_in_block = state.step % sampler.steps_per_block
  count_B = sampler.schedule.counts(step_in_block, sampler.steps_per_block, sampler.block_len,
                                    jnp.sum(eligible_BG, axis=-1, dtype=jnp.int32))
  return step_in_block, count_B


def _eos_last(sampler: Sampler, score_BG: jax.Array, x0_BG: jax.Array) -> jax.Array:
  if not sampler.eos_confidence_inf:
    return score_BG
  ends = [t for t in (sampler.eos_token_id, sampler.eot_token_id) if t is not None]
  return jnp.where(jnp.isin(x0_BG, jnp.array(ends)), -jnp.inf, score_BG)


def _baseline_step(sampler: Sampler, denoise_fn: DenoiseFn, inputs: _Inputs,
                   state: _State) -> _State:
  """One forward pass, one draw per position of the current block, commit what the rule
  selects. Tokens are drawn and scored in the block's window [start, start + W) only (nothing
  outside it can be committed), with the random numbers of the whole region (`window_draws`)."""
  key_token, key_score, key_select = row_random.step_keys(inputs.keys_B, state.row_steps_B, 3)
  G, W = sampler.gen_length, sampler.block_len
  P = state.canvas_BL.shape[1] - G
  gen_BG = state.canvas_BL[:, P:]
  block = _current_block(sampler, gen_BG, state.step)
  # Threshold reports block = num_blocks once every row is done: keep the slice in range.
  start = jnp.minimum(block, sampler.num_blocks - 1) * W
  in_window = lambda x_BG: jax.lax.dynamic_slice_in_dim(x_BG, start, W, axis=1)
  eligible_BG = _eligible(sampler, gen_BG, block)
  if sampler.cache is None:
    changes = {}
    logits_BWV = _window_forward(sampler, denoise_fn, state.canvas_BL, inputs, start)
  else:
    logits_BWV, changes = _cached_forward(sampler, denoise_fn, state, block, inputs)
  temperature = sampler.token_temperature
  sample_logits_BWV = token_sampling.sampling_logits(logits_BWV, temperature, sampler.top_p,
                                                     sampler.top_k)
  x0_BW = token_sampling.draw_tokens(key_token, sample_logits_BWV, temperature, start, G)
  eligible_BW = in_window(eligible_BG)
  step_in_block, count_B = _schedule_inputs(sampler, state, eligible_BG)
  step_inputs = StepInputs(logits_BWV, sample_logits_BWV, x0_BW, eligible_BW, count_B,
                           step_in_block, sampler.steps_per_block, start, G,
                           state.row_steps_B, inputs.policy_params)
  rule = sampler.remasking
  step_inputs, score_BW, commit_BW = apply_rule(
      rule, step_inputs, key_token, key_score, key_select, sampler.top_p, sampler.top_k,
      functools.partial(_eos_last, sampler))
  x0_BW = step_inputs.x0_BG
  if isinstance(rule, LearnedPolicy):
    changes["policy_trace"] = rule.record(state.policy_trace, state.step, score_BW, step_inputs,
                                          key_select)
  to_region = lambda x_BW, fill_BG: jax.lax.dynamic_update_slice_in_dim(fill_BG, x_BW, start,
                                                                        axis=1)
  return _commit(state, sampler, to_region(commit_BW, jnp.zeros_like(eligible_BG)),
                 to_region(x0_BW, gen_BG), to_region(_log_prob(logits_BWV, x0_BW),
                                                     state.logprob_BG),
                 to_region(score_BW, state.confidence_BG), jnp.any(eligible_BG, axis=-1),
                 _evaluations(sampler), **changes)


def _imh_step(sampler: Sampler, denoise_fn: DenoiseFn, inputs: _Inputs, state: _State) -> _State:
  """Choose positions, draw K candidates, score them in one batched pass (RolloutIMH: and
  their rollouts), run the MH chain."""
  rule: IMH = sampler.remasking
  K = rule.num_candidates
  # RolloutIMH takes a fifth key; IMH keeps its four (its samples stay as they were).
  key_cand, key_score, key_select, key_chain, *key_roll = row_random.step_keys(
      inputs.keys_B, state.row_steps_B, 5 if isinstance(rule, RolloutIMH) else 4)
  B, L = state.canvas_BL.shape
  P = L - sampler.gen_length
  gen_BG = state.canvas_BL[:, P:]
  logits_BGV = state.logits_BGV
  eligible_BG = _eligible(sampler, gen_BG, _current_block(sampler, gen_BG, state.step))
  step_in_block, count_B = _schedule_inputs(sampler, state, eligible_BG)
  mode_BG = jnp.argmax(logits_BGV, axis=-1).astype(jnp.int32)
  step_inputs = StepInputs(logits_BGV, logits_BGV, mode_BG, eligible_BG, count_B, step_in_block,
                           sampler.steps_per_block)
  score_BG = _eos_last(sampler, rule.positions.confidence(step_inputs, key_score), mode_BG)
  chosen_BG = rule.positions.select(score_BG, step_inputs, key_select) & eligible_BG

  index_BM, valid_BM = imh_lib.gather_positions(chosen_BG, sampler.max_commits_per_step)
  logits_BMV = jnp.take_along_axis(logits_BGV, index_BM[..., None], axis=1)
  values_KBM = imh_lib.draw_candidates(key_cand, logits_BMV, rule.alpha, K)
  cand_gen_KBG = imh_lib.place_candidates(gen_BG, index_BM, valid_BM, values_KBM)
  cand_canvas_KBL = jnp.concatenate(
      [jnp.broadcast_to(state.canvas_BL[:, :P], (K, B, P)), cand_gen_KBG], axis=-1)
  tiled = inputs.replace(attn_mask_BL=jnp.tile(inputs.attn_mask_BL, (K, 1)),
                         prompt_mask_BL=jnp.tile(inputs.prompt_mask_BL, (K, 1)))
  cand_logits = _forward(sampler, denoise_fn, cand_canvas_KBL.reshape(K * B, L), tiled)
  cand_logits_KBGV = cand_logits.reshape(K, B, *cand_logits.shape[1:])
  remaining_BG = (gen_BG == sampler.mask_token_id) & ~chosen_BG
  nfe_B = jnp.full((B,), K * _evaluations(sampler), jnp.int32)
  if isinstance(rule, RolloutIMH) and K > 1:  # one candidate: no chain, no weight needed
    X = K * rule.num_rollouts * B
    tiled_X = inputs.replace(attn_mask_BL=jnp.tile(inputs.attn_mask_BL, (X // B, 1)),
                             prompt_mask_BL=jnp.tile(inputs.prompt_mask_BL, (X // B, 1)))
    prompt_XP = jnp.tile(state.canvas_BL[:, :P], (X // B, 1))
    forward = lambda gen_XG: _forward(sampler, denoise_fn,
                                      jnp.concatenate([prompt_XP, gen_XG], axis=-1), tiled_X)
    block_G = jnp.arange(sampler.gen_length) // sampler.block_len
    log_w_KB, passes_B = rollout_log_mass(key_roll[0], forward, cand_gen_KBG, cand_logits_KBGV,
                                          remaining_BG, block_G, rule)
    nfe_B = nfe_B + passes_B * _evaluations(sampler)
  else:
    log_w_KB = imh_lib.suffix_log_mass(cand_logits_KBGV, remaining_BG, rule.alpha)
  chosen_B, accepts_B = imh_lib.run_chain(key_chain, log_w_KB)

  pick = lambda x_KB: jnp.take_along_axis(x_KB, chosen_B.reshape(1, B, *[1] * (x_KB.ndim - 2)),
                                          axis=0)[0]
  new_gen_BG = pick(cand_gen_KBG)
  active_B = jnp.any(eligible_BG, axis=-1)
  return _commit(state, sampler, chosen_BG, new_gen_BG, _log_prob(logits_BGV, new_gen_BG),
                 score_BG, active_B, nfe_B, logits_BGV=pick(cand_logits_KBGV),
                 imh_accepts_B=state.imh_accepts_B + accepts_B * active_B)


def _smc_step(sampler: Sampler, denoise_fn: DenoiseFn, inputs: _Inputs, state: _State) -> _State:
  """Weight each particle by the local normaliser Z of its chosen position(s), resample the
  runs whose ESS fell below the threshold, draw the values from p^alpha / Z, one forward pass
  per particle for the next step (none after the last)."""
  rule: SMC = sampler.remasking
  n, G = rule.num_particles, sampler.gen_length
  key_score, key_select, key_token = row_random.step_keys(inputs.keys_B, state.row_steps_B, 3)
  X, L = state.canvas_BL.shape
  B, P = X // n, L - G
  gen_XG = state.canvas_BL[:, P:]
  logits_XGV = state.logits_BGV
  eligible_XG = _eligible(sampler, gen_XG, _current_block(sampler, gen_XG, state.step))
  step_in_block, count_X = _schedule_inputs(sampler, state, eligible_XG)
  mode_XG = jnp.argmax(logits_XGV, axis=-1).astype(jnp.int32)
  step_inputs = StepInputs(logits_XGV, logits_XGV, mode_XG, eligible_XG, count_X, step_in_block,
                           sampler.steps_per_block)
  score_XG = _eos_last(sampler, rule.positions.confidence(step_inputs, key_score), mode_XG)
  chosen_XG = rule.positions.select(score_XG, step_inputs, key_select) & eligible_XG
  log_z_XG = smc_lib.log_normalizer(logits_XGV, rule.alpha)
  log_w_BN = (state.particle_log_w_B
              + jnp.sum(jnp.where(chosen_XG, log_z_XG, 0.0), axis=-1)).reshape(B, n)

  (run_key_B,) = row_random.step_keys(inputs.run_keys_B, state.row_steps_B[::n], 1)
  resample_B = smc_lib.effective_sample_size(log_w_BN) < rule.ess_threshold * n
  ancestors_BN = jnp.where(resample_B[:, None], smc_lib.systematic_ancestors(run_key_B, log_w_BN),
                           jnp.arange(n)[None])
  pick = lambda x_X: smc_lib.gather_particles(x_X, ancestors_BN)
  state = state.replace(canvas_BL=pick(state.canvas_BL), logprob_BG=pick(state.logprob_BG),
                        confidence_BG=pick(state.confidence_BG),
                        commit_step_BG=pick(state.commit_step_BG),
                        resamples_B=state.resamples_B + jnp.repeat(resample_B, n),
                        log_evidence_B=state.log_evidence_B + jnp.repeat(
                            jnp.where(resample_B, _log_mean(log_w_BN), 0.0), n))
  gen_XG, logits_XGV = pick(gen_XG), pick(logits_XGV)
  chosen_XG, score_XG, eligible_XG = pick(chosen_XG), pick(score_XG), pick(eligible_XG)
  log_w_X = jnp.where(resample_B[:, None], 0.0, log_w_BN).reshape(X)

  gumbel_XGV = row_random.gumbel(key_token, logits_XGV.shape[1:])
  tokens_XG = jnp.argmax(rule.alpha * jax.nn.log_softmax(logits_XGV, axis=-1) + gumbel_XGV,
                         axis=-1).astype(jnp.int32)
  new_gen_XG = jnp.where(chosen_XG, tokens_XG, gen_XG)
  more_X = jnp.any(new_gen_XG == sampler.mask_token_id, axis=-1)
  canvas_XL = jnp.concatenate([state.canvas_BL[:, :P], new_gen_XG], axis=1)
  next_logits_XGV = jax.lax.cond(jnp.any(more_X),
                                 lambda: _forward(sampler, denoise_fn, canvas_XL, inputs),
                                 lambda: logits_XGV)
  return _commit(state, sampler, chosen_XG, new_gen_XG, _log_prob(logits_XGV, new_gen_XG),
                 score_XG, jnp.any(eligible_XG, axis=-1), more_X * _evaluations(sampler),
                 logits_BGV=next_logits_XGV, particle_log_w_B=log_w_X)


def _log_mean(log_w_BN: jax.Array) -> jax.Array:
  return jax.nn.logsumexp(log_w_BN, axis=-1) - jnp.log(log_w_BN.shape[-1])


def _smc_output(sampler: Sampler, state: _State, inputs: _Inputs) -> DecodeOutput:
  """Each run's particles with their normalised weights, and one particle drawn by weight."""
  n = sampler.remasking.num_particles
  X, L = state.canvas_BL.shape
  B = X // n
  log_w_BN = state.particle_log_w_B.reshape(B, n)
  log_evidence_B = state.log_evidence_B[::n] + _log_mean(log_w_BN)
  log_w_BN = jax.nn.log_softmax(log_w_BN, axis=-1)
  final_keys = jax.vmap(lambda k: jax.random.fold_in(k, sampler.total_steps))(inputs.run_keys_B)
  drawn_B = jax.vmap(jax.random.categorical)(final_keys, log_w_BN)
  draw = lambda x_X: jnp.take_along_axis(
      x_X.reshape(B, n, *x_X.shape[1:]), drawn_B.reshape(B, 1, *[1] * (x_X.ndim - 1)),
      axis=1)[:, 0]
  return DecodeOutput(tokens_BL=draw(state.canvas_BL),
                      nfe_B=jnp.sum(state.nfe_B.reshape(B, n), axis=1), steps=state.step,
                      logprob_BG=draw(state.logprob_BG), confidence_BG=draw(state.confidence_BG),
                      commit_step_BG=draw(state.commit_step_BG),
                      imh_accepts_B=jnp.zeros((B,), jnp.int32),
                      particles_BNL=state.canvas_BL.reshape(B, n, L),
                      particle_log_weights_BN=log_w_BN, resamples_B=state.resamples_B[::n],
                      log_evidence_B=log_evidence_B)


def check_lengths(sampler: Sampler, prompt_length: int, max_length: int | None) -> None:
  if max_length is not None and prompt_length + sampler.gen_length > max_length:
    raise ValueError(f"prompt length {prompt_length} + gen_length {sampler.gen_length} = "
                     f"{prompt_length + sampler.gen_length} exceeds the model's context of "
                     f"{max_length} tokens")


def _initial_state(sampler: Sampler, denoise_fn: DenoiseFn, canvas_BL: jax.Array,
                   inputs: _Inputs) -> _State:
  B, L = canvas_BL.shape
  G = sampler.gen_length
  state = _State(canvas_BL=canvas_BL, step=jnp.zeros((), jnp.int32),
                 row_steps_B=jnp.zeros((B,), jnp.int32), nfe_B=jnp.zeros((B,), jnp.int32),
                 logprob_BG=jnp.zeros((B, G), jnp.float32),
                 confidence_BG=jnp.zeros((B, G), jnp.float32),
                 commit_step_BG=jnp.full((B, G), -1, jnp.int32),
                 imh_accepts_B=jnp.zeros((B,), jnp.int32))
  if isinstance(sampler.remasking, LearnedPolicy):
    state = state.replace(policy_trace=PolicyTrace.empty(B, sampler.total_steps,
                                                         sampler.block_len))
  if isinstance(sampler.remasking, SMC):  # every particle starts from one shared pass
    n = sampler.remasking.num_particles
    logits = _forward(sampler, denoise_fn, canvas_BL[::n],
                      inputs.replace(attn_mask_BL=inputs.attn_mask_BL[::n],
                                     prompt_mask_BL=inputs.prompt_mask_BL[::n]))
    first_B = (jnp.arange(B) % n == 0).astype(jnp.int32)
    return state.replace(logits_BGV=jnp.repeat(logits, n, axis=0),
                         nfe_B=first_B * _evaluations(sampler),
                         particle_log_w_B=jnp.zeros((B,), jnp.float32),
                         resamples_B=jnp.zeros((B,), jnp.int32),
                         log_evidence_B=jnp.zeros((B,), jnp.float32))
  if isinstance(sampler.remasking, IMH):  # the first candidates need the canvas's logits
    return state.replace(logits_BGV=_forward(sampler, denoise_fn, canvas_BL, inputs),
                         nfe_B=state.nfe_B + _evaluations(sampler))
  if sampler.cache is not None:  # shapes for the loop carry; the first step refreshes
    _, cache = jax.eval_shape(denoise_fn.with_cache, inputs.params,
                              *_model_batch(sampler, canvas_BL, inputs))
    zeros = lambda s: jnp.zeros(s.shape, s.dtype)
    return state.replace(cache=jax.tree.map(zeros, cache), cache_block=jnp.array(-1),
                         cache_age=jnp.array(0))
  return state


@functools.partial(jax.jit, static_argnames=("sampler", "denoise_fn"))
def generate(sampler: Sampler, denoise_fn: DenoiseFn, params, prompt_BP: jax.Array,
             prompt_mask_BP: jax.Array, rng: jax.Array, policy_params=None) -> DecodeOutput:
  """Decodes `sampler.gen_length` tokens after each left-padded prompt, in one compiled call.

  `denoise_fn(params, tokens_BL, attention_mask_BL) -> logits_BLV` is any pure, hashable
  function; if it has a `max_length` attribute, longer canvases are rejected. A denoiser may
  also provide `logits_window(params, tokens_BL, mask_BL, start, width) -> logits [B, width, V]`
  (positions [start, start + width) only): the loop then asks only for the current block's
  logits, as `dllm_jax.models.make_denoise` does to skip most of the LM head. `prompt_mask_BP`
  marks real prompt tokens (False = left padding). `rng` is one key, or one key per row ([B]).
  Recompiles only when a shape or the sampler changes. `policy_params` are the weights of a
  `LearnedPolicy` rule's network (jit arguments too: new weights never recompile).
  """
  B, P = prompt_BP.shape
  if prompt_mask_BP.shape != (B, P):
    raise ValueError(f"prompt_mask shape {prompt_mask_BP.shape} != prompt shape {(B, P)}")
  check_lengths(sampler, P, getattr(denoise_fn, "max_length", None))
  if isinstance(sampler.remasking, LearnedPolicy) != (policy_params is not None):
    raise ValueError("policy_params go with remasking=LearnedPolicy(...) and only with it; got "
                     f"{'none' if policy_params is None else 'policy_params'} for "
                     f"{type(sampler.remasking).__name__}")
  if sampler.cache is not None:
    block_cache.check_denoiser(denoise_fn, sampler.cache)
    if P == 0 and getattr(getattr(denoise_fn, "config", None), "shift_logits", False):
      raise ValueError("a block cache with shifted logits (Dream) needs a prompt of >= 1 token")
  G = sampler.gen_length
  keys_B, run_keys_B = row_random.row_keys(rng, B), None
  smc = isinstance(sampler.remasking, SMC)
  if smc:  # rows become particles, run-major; each run's particles get keys of their own
    n = sampler.remasking.num_particles
    run_keys_B, base_B = jax.vmap(lambda k: jax.random.split(k, 2), out_axes=1)(keys_B)
    keys_B = jax.vmap(lambda k: jax.vmap(lambda i: jax.random.fold_in(k, i))(jnp.arange(n)))(
        base_B).reshape(B * n)
    prompt_BP, prompt_mask_BP = (jnp.repeat(x, n, axis=0) for x in (prompt_BP, prompt_mask_BP))
    B = B * n
  canvas_BL = jnp.concatenate(
      [prompt_BP.astype(jnp.int32), jnp.full((B, G), sampler.mask_token_id, jnp.int32)], axis=1)
  inputs = _Inputs(
      params=params,
      attn_mask_BL=jnp.concatenate([prompt_mask_BP.astype(bool), jnp.ones((B, G), bool)], 1),
      prompt_mask_BL=jnp.concatenate([prompt_mask_BP.astype(bool), jnp.zeros((B, G), bool)], 1),
      keys_B=keys_B, policy_params=policy_params, run_keys_B=run_keys_B)
  state = _initial_state(sampler, denoise_fn, canvas_BL, inputs)
  step = (_smc_step if smc else _imh_step if isinstance(sampler.remasking, IMH)
          else _baseline_step)

  def not_done(state: _State) -> jax.Array:
    masks_left = jnp.any(state.canvas_BL[:, P:] == sampler.mask_token_id)
    return (state.step < sampler.total_steps) & masks_left

  state = jax.lax.while_loop(not_done, functools.partial(step, sampler, denoise_fn, inputs),
                             state)
  if smc:
    return _smc_output(sampler, state, inputs)
  return DecodeOutput(tokens_BL=state.canvas_BL, nfe_B=state.nfe_B, steps=state.step,
                      logprob_BG=state.logprob_BG, confidence_BG=state.confidence_BG,
                      commit_step_BG=state.commit_step_BG, imh_accepts_B=state.imh_accepts_B,
                      policy_trace=state.policy_trace)
