"""WeDLM streaming parallel decoding with an exact prefix key/value cache, in one compiled loop.

This is Tencent's streaming decoder (`wedlm/engine/wedlm_decoder.py` and `wedlm/engine/sampler.py`
of Tencent/WeDLM) with static shapes: at temperature 0 it decides the same tokens with the same
forwards (`tests/torch_ref/test_wedlm_streaming_reference.py` checks it against a line-by-line
port of that loop), and at temperature > 0 it draws from the same law.

WeDLM (DESIGN §11) attends causally in topological order, so the keys and values of a committed
prefix never change: a prefix cache is exact. Per row the decoder keeps a window of W slots
right after its committed prefix (masks and filled slots, in logical order; a slot is filled by
its flag, not its token, since the [MASK] id itself can be drawn as Tencent draws it). The
prompt is prefilled once; then every iteration (one forward) of one `lax.while_loop`
  1. forwards the window plus W more masks: 2W slots at their logical positions against the
     row's cached prefix, queries ordered filled-then-masked (the rank mask of
     `topological_mask`). Tencent forwards the window's leftmost filled run (c slots) plus W
     slots after it (`_refill_window_masks`): the same c + W tokens are the first of the 2W, and
     the last W - c masks are seen by none of them (a mask sees only the masks before it), so
     the logits Tencent reads are the same. The slots' keys and values go into the row's buffer
     at its own offset; the committed part of the buffer never changes;
  2. commits that run (its keys and values come from this forward, in which it was filled:
     they saw exactly the prefix and the filled tokens before them); the first stop token
     committed ends the row, and so does reaching `gen_length` tokens, as each committed token
     is checked in order (`_process_pruned_tokens`);
  3. moves the window past the run (slots [c, c + W) of the forward) and scores its masks, all
     of them (nothing caps them at `gen_length`: Tencent's decoder does not), by WeDLM's rule
     H~_i = entropy_i + lambda * (i - first mask) on this forward's raw logits (the [MASK] logit
     included, as `Sampler.compute_entropy` does); fills every mask with H~ < tau, else the
     lowest (the leftmost on ties); or only the lowest (`entropy_threshold=None`). Tokens are
     drawn as `Sampler.sample_tokens` draws them: argmax at temperature 0, else top-k, then
     top-p on the untempered logits, then softmax(logits / T).
A row that is done stays as it is while the others run (the batch's forward still holds its
slots, static shapes; they are neither used nor counted).

Numerics: logits are float32 whatever the weights' dtype (the LM head accumulates in float32),
and entropies, scores and draws are computed in float32. Tencent's engine computes them in the
checkpoint's dtype (bfloat16 logits for a bfloat16 checkpoint), so with bfloat16 weights the two
can part where two positions' H~ or a threshold test differ by less than bfloat16's rounding
(`tests/test_wedlm_streaming.py::test_bf16_checkpoint_scores_in_float32`).

`exclude_mask_token=True` sets the [MASK] logit to -inf before scoring and drawing (this
library's behaviour before it followed Tencent; a trained model almost never prefers [MASK]).

With `imh=IMH(...)`, step 3 draws K candidate values for the chosen masks from p^alpha; the next
iteration's forward evaluates the K candidate windows against the one cache, each candidate is
weighted by its suffix mass (`imh.suffix_log_mass` over the masks left in its window, up to
`gen_length`) and the independent MH chain picks one, whose logits steps 2-3 then use.

`prefix_cache=False` is the same algorithm recomputing every forward from scratch over
[prompt, committed prefix, window] with the whole model: the reference the cache is tested
against and the baseline of `experiments/bench_wedlm_streaming.py`.

Statistics: `nfe_B` counts window forwards per row (K per IMH iteration), the last one (in which
the row finished) included and the prompt's prefill not; Tencent's engine reports as
`decode_forwards` the forwards after which a row is still running, one fewer per row that ended
at a stop token or `max_tokens` (`llm_engine.py:_count_active_sequences`). The per-token
`commit_step_BG` is the iteration that filled the token (its value is final then; it enters the
cache one iteration later); `steps` counts the loop's iterations after the first forward.
Generated slots after a stop token hold `eos_token_id` (the mask id without one). `max_steps`
caps those iterations (benchmarks time a few).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from dllm_jax.models.transformer import topological_mask
from dllm_jax.sampling import imh as imh_lib
from dllm_jax.sampling import row_random, token_sampling
from dllm_jax.sampling.decode import DecodeOutput
from dllm_jax.sampling.imh import IMH
from dllm_jax.sampling.remasking import StepInputs, WeDLMEntropy


@dataclasses.dataclass(frozen=True)
class StreamingSampler:
  """How to stream-decode up to `gen_length` new tokens after each prompt (defaults: Tencent's
  engine and evaluation scripts; the paper's quality setting, as DESIGN §11 records it, is
  `entropy_threshold=None, position_penalty=0.1, window=6, temperature=0.1`)."""

  gen_length: int
  mask_token_id: int
  window: int = 16
  entropy_threshold: float | None = 0.4  # None: one token per step
  position_penalty: float = 0.02
  temperature: float = 0.0
  top_p: float | None = None
  top_k: int | None = None
  eos_token_id: int | None = None
  eot_token_id: int | None = None
  imh: IMH | None = None
  prefix_cache: bool = True
  exclude_mask_token: bool = False  # True: [MASK] logit -inf before scoring and drawing
  max_steps: int | None = None  # stop every row after this many iterations (None: when done)

  def __post_init__(self):
    if self.gen_length < 1:
      raise ValueError(f"gen_length must be >= 1, got {self.gen_length}")
    if self.window < 1:
      raise ValueError(f"window must be >= 1, got {self.window}")
    if self.entropy_threshold is not None and not self.entropy_threshold > 0:
      raise ValueError(f"entropy_threshold must be > 0 or None (one token per step), got "
                       f"{self.entropy_threshold}")
    if self.position_penalty < 0:
      raise ValueError(f"position_penalty must be >= 0, got {self.position_penalty}")
    if self.temperature < 0:
      raise ValueError(f"temperature must be >= 0, got {self.temperature}")
    if self.top_p is not None and not 0 < self.top_p <= 1:
      raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
    if self.top_k is not None and self.top_k < 1:
      raise ValueError(f"top_k must be >= 1, got {self.top_k}")
    if self.mask_token_id < 0:
      raise ValueError(f"mask_token_id must be >= 0, got {self.mask_token_id}")
    if self.max_steps is not None and self.max_steps < 1:
      raise ValueError(f"max_steps must be >= 1 or None, got {self.max_steps}")
    if self.imh is not None:
      if type(self.imh) is not IMH:  # RolloutIMH's rollouts are not implemented here
        raise ValueError(f"imh must be IMH(...) or None, got {self.imh!r}")
      if self.imh.positions != IMH().positions:
        raise ValueError("streaming IMH chooses positions by WeDLM's entropy rule; leave "
                         "IMH.positions at its default")
      if self.temperature or self.top_p is not None or self.top_k is not None:
        raise ValueError("streaming IMH draws candidates from p**alpha (temperature 1/alpha), "
                         "untruncated; leave temperature, top_p and top_k unset")

  @classmethod
  def for_model(cls, config: Any, **fields: Any) -> StreamingSampler:
    """A sampler with the model's mask, EOS and end-of-turn ids."""
    ids = dict(mask_token_id=config.mask_token_id, eos_token_id=config.eos_token_id,
               eot_token_id=getattr(config, "eot_token_id", None))
    return cls(**{**ids, **fields})

  def replace(self, **changes: Any) -> StreamingSampler:
    return dataclasses.replace(self, **changes)

  @property
  def token_temperature(self) -> float:
    return self.temperature if self.imh is None else self.imh.temperature

  @property
  def num_candidates(self) -> int:
    return 1 if self.imh is None else self.imh.num_candidates

  @property
  def stop_ids(self) -> tuple[int, ...]:
    return tuple(t for t in (self.eos_token_id, self.eot_token_id) if t is not None)

  @property
  def step_limit(self) -> int:
    # An iteration that does not end a row fills a slot below gen_length + W: a guard only.
    return self.max_steps or 2 * (self.gen_length + self.window) + 2


@struct.dataclass
class _State:
  windows_KBW: jax.Array        # candidate windows awaiting the next forward (K = 1 without IMH)
  filled_BW: jax.Array          # which window slots hold a token (the same for every candidate)
  win_logprob_KBW: jax.Array    # statistics of the filled window slots
  win_score_BW: jax.Array
  win_step_BW: jax.Array
  cache: Any                    # cached: every layer's (keys, values) [B, P + G + 2W, K, H]
  committed_B: jax.Array        # tokens committed per row
  done_B: jax.Array
  gen_BG: jax.Array
  logprob_BG: jax.Array
  confidence_BG: jax.Array
  commit_step_BG: jax.Array
  step: jax.Array               # iterations (forwards) run, the first included
  row_steps_B: jax.Array        # iterations each row was active in (its random stream)
  nfe_B: jax.Array
  imh_accepts_B: jax.Array


@struct.dataclass
class _Inputs:
  params: Any
  prompt_BP: jax.Array
  prompt_mask_BP: jax.Array
  keys_B: jax.Array


def _finish(sampler: StreamingSampler, logits: jax.Array) -> jax.Array:
  """Float32 logits; raw as Tencent reads them, or with [MASK] at -inf (`exclude_mask_token`)."""
  logits = logits.astype(jnp.float32)
  if not sampler.exclude_mask_token:
    return logits
  return jnp.where(jnp.arange(logits.shape[-1]) == sampler.mask_token_id, -jnp.inf, logits)


def _prompt_lengths(inputs: _Inputs) -> jax.Array:
  return jnp.sum(inputs.prompt_mask_BP, axis=-1, dtype=jnp.int32)


def _cached_forward(sampler, denoise_fn, inputs, cache, committed_B, slots_KBS, filled_BS):
  """Logits [K, B, S, V] of K slot sequences per row against the row's cached prefix, and their
  keys and values per layer [K, B, S, kv heads, H]. The K sequences are K groups of queries of
  one row (one cache read), each seeing the prefix and, by rank, its own group."""
  K, B, S = slots_KBS.shape
  P = inputs.prompt_BP.shape[1]
  C = cache[0][0].shape[1]
  key_valid_BC = jnp.concatenate([inputs.prompt_mask_BP, jnp.ones((B, C - P), bool)], axis=1)
  prefix_BC = key_valid_BC & (jnp.arange(C) < (P + committed_B)[:, None])
  # the rank mask depends on the flags only: the same for the K groups
  by_flag_BS = jnp.where(filled_BS, -1, sampler.mask_token_id)
  rank_BSS = topological_mask(by_flag_BS, jnp.ones((B, S), bool), sampler.mask_token_id)
  own_BKSKS = (rank_BSS[:, None, :, None, :]
               & jnp.eye(K, dtype=bool)[None, :, None, :, None])
  T = K * S
  visible_BTX = jnp.concatenate([jnp.broadcast_to(prefix_BC[:, None], (B, T, C)),
                                 own_BKSKS.reshape(B, T, T)], axis=-1)
  positions_BS = (_prompt_lengths(inputs) + committed_B)[:, None] + jnp.arange(S)
  logits_BTV, new = denoise_fn.extend(inputs.params, cache,
                                      jnp.swapaxes(slots_KBS, 0, 1).reshape(B, T),
                                      jnp.tile(positions_BS, (1, K)), visible_BTX)
  to_KBS = lambda x_BT: jnp.swapaxes(x_BT.reshape(B, K, S, *x_BT.shape[2:]), 0, 1)
  return to_KBS(logits_BTV), [(to_KBS(k), to_KBS(v)) for k, v in new]


def _uncached_forward(sampler, denoise_fn, inputs, gen_BG, committed_B, slots_KBS, filled_BS):
  """Logits [K, B, S, V] of the slots, each from one forward of the whole model over
  [prompt, committed prefix, slots] from scratch (ranks from the flags: a committed or filled
  token is observed whatever its id)."""
  K, B, S = slots_KBS.shape
  P, G = inputs.prompt_BP.shape[1], gen_BG.shape[1]
  T = P + G + S
  length_B = _prompt_lengths(inputs)
  valid_BT = jnp.concatenate([inputs.prompt_mask_BP, jnp.arange(G) < committed_B[:, None],
                              jnp.ones((B, S), bool)], axis=1)
  positions_BT = jnp.concatenate([
      jnp.maximum(jnp.cumsum(inputs.prompt_mask_BP, axis=1, dtype=jnp.int32) - 1, 0),
      length_B[:, None] + jnp.arange(G), (length_B + committed_B)[:, None] + jnp.arange(S)], 1)
  masked_BT = jnp.concatenate([jnp.zeros((B, P + G), bool), ~filled_BS], axis=1)
  rank_BT = positions_BT + jnp.where(masked_BT, T + 1, 0)  # observed first, then the masks
  visible_BTT = ((rank_BT[:, None, :] <= rank_BT[:, :, None]) & valid_BT[:, None, :]
                 | jnp.eye(T, dtype=bool))
  tokens_KBT = jnp.concatenate([jnp.broadcast_to(inputs.prompt_BP, (K, B, P)),
                                jnp.broadcast_to(gen_BG, (K, B, G)), slots_KBS], axis=-1)
  c = denoise_fn.config
  empty = [(jnp.zeros((K * B, 0, c.num_kv_heads, c.head_dim), c.compute_dtype),) * 2
           for _ in range(c.num_layers)]
  tile = lambda x: jnp.tile(x, (K,) + (1,) * (x.ndim - 1))
  logits, _ = denoise_fn.extend(inputs.params, empty, tokens_KBT.reshape(K * B, T),
                                tile(positions_BT), tile(visible_BTT), P + G, S)
  return logits.reshape(K, B, S, -1)


def _forward(sampler, denoise_fn, inputs, cache, gen_BG, committed_B, slots_KBS, filled_BS):
  if sampler.prefix_cache:
    logits_KBSV, kv = _cached_forward(sampler, denoise_fn, inputs, cache, committed_B,
                                      slots_KBS, filled_BS)
  else:
    logits_KBSV, kv = _uncached_forward(sampler, denoise_fn, inputs, gen_BG, committed_B,
                                        slots_KBS, filled_BS), None
  return _finish(sampler, logits_KBSV), kv


def _write_cache(cache, kv_BS, start_B):
  """Each row's slot keys and values written into its buffer at its own offset."""
  write = jax.vmap(lambda buf, x, s: jax.lax.dynamic_update_slice_in_dim(buf, x, s, 0))
  return [(write(k, nk.astype(k.dtype), start_B), write(v, nv.astype(v.dtype), start_B))
          for (k, v), (nk, nv) in zip(cache, kv_BS)]


def _slice(x_BS: jax.Array, start_B: jax.Array, width: int) -> jax.Array:
  """Per row, x[start : start + width] along axis 1 (start + width <= S)."""
  return jax.vmap(lambda x, s: jax.lax.dynamic_slice_in_dim(x, s, width, 0))(x_BS, start_B)


def select_fill(sampler: StreamingSampler, logits_BWV: jax.Array, eligible_BW: jax.Array
                ) -> tuple[jax.Array, jax.Array]:
  """The masks to fill [B, W] and their scores -H~ (WeDLM's rule, `WeDLMEntropy`; Tencent's
  `Sampler.select_positions_to_fill`): all with H~ < tau, else the lowest (the leftmost on ties);
  or only the lowest."""
  rule = WeDLMEntropy(position_penalty=sampler.position_penalty)
  inputs = StepInputs(logits_BWV, logits_BWV, jnp.zeros(eligible_BW.shape, jnp.int32),
                      eligible_BW, None, 0, 1)
  score_BW = rule.confidence(inputs, None)
  best_BW = (jnp.arange(eligible_BW.shape[1]) ==
             jnp.argmax(jnp.where(eligible_BW, score_BW, -jnp.inf), axis=-1)[:, None])
  fill_BW = best_BW & eligible_BW
  if sampler.entropy_threshold is not None:
    below_BW = eligible_BW & (-score_BW < sampler.entropy_threshold)
    fill_BW = jnp.where(jnp.any(below_BW, axis=-1, keepdims=True), below_BW, fill_BW)
  return fill_BW, score_BW


def draw_logits(sampler: StreamingSampler, logits_BWV: jax.Array) -> jax.Array:
  """The logits tokens are drawn from, as Tencent's `Sampler.sample_tokens`: top-k, then top-p,
  both on the untempered logits, then divided by the temperature (unchanged at 0: argmax)."""
  if sampler.temperature <= 0:
    return logits_BWV
  filtered = token_sampling.filter_top_p(token_sampling.filter_top_k(logits_BWV, sampler.top_k),
                                         sampler.top_p)
  return filtered.astype(token_sampling.noise_dtype()) / sampler.temperature


def _commit(sampler: StreamingSampler, window_BW, run_B, committed_B, done_B):
  """The count each row commits (its window's leftmost filled run, each token checked in turn:
  a stop token ends the row after it, so does the `gen_length`-th token) and the row's state."""
  W, G = sampler.window, sampler.gen_length
  reach_B = jnp.minimum(run_B, G - committed_B)
  stop_BW = ((jnp.arange(W) < reach_B[:, None])
             & jnp.isin(window_BW, jnp.array(sampler.stop_ids or (-1,))))
  has_stop_B = jnp.any(stop_BW, axis=-1)
  count_B = jnp.where(has_stop_B, jnp.argmax(stop_BW, axis=-1) + 1, reach_B)
  count_B = jnp.where(done_B, 0, count_B).astype(jnp.int32)
  committed_B = committed_B + count_B
  return count_B, committed_B, done_B | has_stop_B | (committed_B >= G)


def _into_region(x_BG, window_x_BW, start_B, count_B):
  """x with region slots [start, start + count) set from the window's first `count` slots."""
  W = window_x_BW.shape[-1]
  source_BG = jnp.arange(x_BG.shape[-1]) - start_B[:, None]
  take_BG = (source_BG >= 0) & (source_BG < count_B[:, None])
  return jnp.where(take_BG, jnp.take_along_axis(window_x_BW, jnp.clip(source_BG, 0, W - 1), -1),
                   x_BG)


def _log_prob(logits_BWV, tokens_BW):
  log_p = jax.nn.log_softmax(logits_BWV, axis=-1)
  return jnp.take_along_axis(log_p, tokens_BW[..., None], axis=-1)[..., 0]


def _iterate(sampler: StreamingSampler, denoise_fn, inputs: _Inputs, state: _State) -> _State:
  """One forward per row: forward, (IMH: choose a candidate,) commit, move, select and fill."""
  W, G, K = sampler.window, sampler.gen_length, state.windows_KBW.shape[0]
  B = state.filled_BW.shape[0]
  mask = sampler.mask_token_id
  key_token, key_chain = row_random.step_keys(inputs.keys_B, state.row_steps_B, 2)
  active_B = ~state.done_B
  # 1. the window and W more masks: 2W slots
  slots_KBS = jnp.concatenate([state.windows_KBW, jnp.full((K, B, W), mask, jnp.int32)], -1)
  filled_BS = jnp.concatenate([state.filled_BW, jnp.zeros((B, W), bool)], -1)
  logits_KBSV, kv = _forward(sampler, denoise_fn, inputs, state.cache, state.gen_BG,
                             state.committed_B, slots_KBS, filled_BS)
  run_B = jnp.sum(jnp.cumprod(state.filled_BW, axis=-1), axis=-1, dtype=jnp.int32)
  moved = lambda x_BS: _slice(x_BS, run_B, W)  # slots [run, run + W): the next window
  filled_BW = moved(filled_BS)
  # 2. IMH: the candidate the chain keeps, weighted by its window's suffix mass
  if K == 1:
    chosen_B, accepts_B = jnp.zeros((B,), jnp.int32), jnp.zeros((B,), jnp.int32)
  else:
    remaining_BW = ~filled_BW & ((state.committed_B + run_B)[:, None] + jnp.arange(W) < G)
    log_w_KB = imh_lib.suffix_log_mass(jax.vmap(moved)(logits_KBSV), remaining_BW,
                                       sampler.imh.alpha)
    chosen_B, accepts_B = imh_lib.run_chain(key_chain, log_w_KB)
  pick = lambda x_KB: jnp.take_along_axis(
      x_KB, chosen_B.reshape(1, B, *[1] * (x_KB.ndim - 2)), axis=0)[0]
  window_BW, logits_BSV = pick(state.windows_KBW), pick(logits_KBSV)
  win_logprob_BW = pick(state.win_logprob_KBW)
  # 3. commit the leftmost filled run
  count_B, committed_B, done_B = _commit(sampler, window_BW, run_B, state.committed_B,
                                         state.done_B)
  into = lambda x_BG, x_BW: _into_region(x_BG, x_BW, state.committed_B, count_B)
  changes = {}
  if sampler.prefix_cache:
    changes["cache"] = _write_cache(state.cache, [(pick(k), pick(v)) for k, v in kv],
                                    inputs.prompt_BP.shape[1] + state.committed_B)
  # 4. the next window: select among its masks, fill
  window_BW = moved(pick(slots_KBS))
  logits_BWV = moved(logits_BSV)
  eligible_BW = ~filled_BW & ~done_B[:, None]
  fill_BW, score_BW = select_fill(sampler, logits_BWV, eligible_BW)
  if sampler.imh is None:
    values_KBW = token_sampling.draw_tokens(key_token, draw_logits(sampler, logits_BWV),
                                            sampler.temperature)[None]
  else:
    values_KBW = imh_lib.draw_candidates(key_token, logits_BWV, sampler.imh.alpha,
                                         sampler.num_candidates)
  pad = lambda x_BW, fill: jnp.concatenate([x_BW, jnp.full((B, W), fill, x_BW.dtype)], -1)
  keep = lambda x_BW, fill: moved(pad(x_BW, fill))
  old_logprob_BW = keep(win_logprob_BW, 0.0)
  return state.replace(
      windows_KBW=jnp.where(fill_BW, values_KBW, window_BW),
      filled_BW=filled_BW | fill_BW,
      win_logprob_KBW=jnp.where(fill_BW, jax.vmap(lambda v: _log_prob(logits_BWV, v))(values_KBW),
                                old_logprob_BW),
      win_score_BW=jnp.where(fill_BW, score_BW, keep(state.win_score_BW, 0.0)),
      win_step_BW=jnp.where(fill_BW, state.step, keep(state.win_step_BW, -1)),
      committed_B=committed_B, done_B=done_B,
      gen_BG=into(state.gen_BG, pick(state.windows_KBW)),
      logprob_BG=into(state.logprob_BG, win_logprob_BW),
      confidence_BG=into(state.confidence_BG, state.win_score_BW),
      commit_step_BG=into(state.commit_step_BG, state.win_step_BW),
      step=state.step + 1, row_steps_B=state.row_steps_B + active_B,
      nfe_B=state.nfe_B + K * active_B,
      imh_accepts_B=state.imh_accepts_B + accepts_B * active_B, **changes)


def _initial_state(sampler: StreamingSampler, denoise_fn, inputs: _Inputs) -> _State:
  """Prefill the prompt (cached); the window all masks, waiting for its first forward."""
  B, P = inputs.prompt_BP.shape
  W, G = sampler.window, sampler.gen_length
  cache = None
  if sampler.prefix_cache:
    _, prompt_kv = denoise_fn.with_cache(inputs.params, inputs.prompt_BP, inputs.prompt_mask_BP,
                                         P - 1, 1)
    pad = lambda x: jnp.pad(x, ((0, 0), (0, G + 2 * W), (0, 0), (0, 0)))
    cache = [(pad(k), pad(v)) for k, v in prompt_kv]
  zeros = lambda dtype: jnp.zeros((B, G), dtype)
  return _State(
      windows_KBW=jnp.full((1, B, W), sampler.mask_token_id, jnp.int32),
      filled_BW=jnp.zeros((B, W), bool), win_logprob_KBW=jnp.zeros((1, B, W)),
      win_score_BW=jnp.zeros((B, W)), win_step_BW=jnp.full((B, W), -1, jnp.int32), cache=cache,
      committed_B=jnp.zeros((B,), jnp.int32), done_B=jnp.zeros((B,), bool),
      gen_BG=jnp.full((B, G), sampler.mask_token_id if sampler.eos_token_id is None
                      else sampler.eos_token_id, jnp.int32),
      logprob_BG=zeros(jnp.float32), confidence_BG=zeros(jnp.float32),
      commit_step_BG=jnp.full((B, G), -1, jnp.int32), step=jnp.zeros((), jnp.int32),
      row_steps_B=jnp.zeros((B,), jnp.int32), nfe_B=jnp.zeros((B,), jnp.int32),
      imh_accepts_B=jnp.zeros((B,), jnp.int32))


def check_denoiser(denoise_fn) -> None:
  config = getattr(denoise_fn, "config", None)
  if not getattr(config, "topological_causal", False):
    raise ValueError("streaming decoding needs a WeDLM model (topological_causal attention); "
                     "build the denoiser with models.make_denoise(wedlm config)")


def run(sampler: StreamingSampler, denoise_fn, params, prompt_BP: jax.Array,
        prompt_mask_BP: jax.Array, rng: jax.Array) -> _State:
  """The whole decode, returning the loop's final state (the cache included); traced."""
  B, P = prompt_BP.shape
  if prompt_mask_BP.shape != (B, P):
    raise ValueError(f"prompt_mask shape {prompt_mask_BP.shape} != prompt shape {(B, P)}")
  if P < 1:
    raise ValueError("streaming decoding needs a prompt of >= 1 token to prefill")
  check_denoiser(denoise_fn)
  max_length = getattr(denoise_fn, "max_length", None)
  G, W = sampler.gen_length, sampler.window
  if max_length is not None and P + G + 2 * W > max_length:
    raise ValueError(f"prompt length {P} + gen_length {G} + 2 x window {W} exceeds the model's "
                     f"context of {max_length} tokens (the last forward holds 2 x window slots "
                     "after the last generated token); shorten one of them")
  inputs = _Inputs(params=params, prompt_BP=prompt_BP.astype(jnp.int32),
                   prompt_mask_BP=prompt_mask_BP.astype(bool), keys_B=row_random.row_keys(rng, B))
  iterate = functools.partial(_iterate, sampler, denoise_fn, inputs)
  # the first forward has one window (K = 1); with IMH the loop carries K candidates
  state = iterate(_initial_state(sampler, denoise_fn, inputs))
  not_done = lambda s: jnp.any(~s.done_B) & (s.step - 1 < sampler.step_limit)
  return jax.lax.while_loop(not_done, iterate, state)


run_jit = jax.jit(run, static_argnames=("sampler", "denoise_fn"))


@functools.partial(jax.jit, static_argnames=("sampler", "denoise_fn"))
def stream_generate(sampler: StreamingSampler, denoise_fn, params, prompt_BP: jax.Array,
                    prompt_mask_BP: jax.Array, rng: jax.Array) -> DecodeOutput:
  """Stream-decodes up to `sampler.gen_length` tokens after each left-padded prompt in one
  compiled call (`denoise_fn`: `models.make_denoise` of a WeDLM config). `rng` is one key or
  one key per row; row b's draws come from its own key alone (`row_random`)."""
  state = run(sampler, denoise_fn, params, prompt_BP, prompt_mask_BP, rng)
  return DecodeOutput(
      tokens_BL=jnp.concatenate([prompt_BP.astype(jnp.int32), state.gen_BG], axis=1),
      nfe_B=state.nfe_B, steps=state.step - 1, logprob_BG=state.logprob_BG,
      confidence_BG=state.confidence_BG, commit_step_BG=state.commit_step_BG,
      imh_accepts_B=state.imh_accepts_B)
