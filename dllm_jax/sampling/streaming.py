"""WeDLM streaming parallel decoding with an exact prefix key/value cache, in one compiled loop.

WeDLM (DESIGN §11) attends causally in topological order, so the keys and values of a committed
prefix never change: a prefix cache is exact. Per row the decoder keeps a window of W slots right
after its committed prefix (masks and filled slots, in logical order). The prompt is prefilled
once; then every iteration of one `lax.while_loop`
  1. commits the window's leftmost run of filled slots (their keys and values come from the last
     forward, where they were already filled, so they saw exactly the prefix and the filled
     tokens before them); the first EOS / end-of-turn token committed ends the row, and so does
     reaching `gen_length` tokens;
  2. scores the window's masks by WeDLM's rule H~_i = entropy_i + lambda * (i - first mask) on
     the last forward's logits (untempered) and fills every mask with H~ < tau, always the lowest;
     or only the lowest (`entropy_threshold=None`, the paper's one-token-per-step setting).
     Tokens are drawn at `temperature` (argmax at 0) after top-k / top-p filtering;
  3. shifts the window past the committed run, refills it with masks, and runs one forward over
     it: queries in logical order with the rank mask of `topological_mask` restricted to the
     window (filled slots before masks), each at its logical position, attending to the row's
     cached prefix. Its keys and values are written into the row's [max length] buffer at the
     row's own offset; the committed part of the buffer never changes.
Rows advance independently (own prompt lengths, commit counts and keys); a finished row stays
as it is while the others run.

With `imh=IMH(...)`, step 2 draws K candidate values for the chosen masks from p^alpha; the
committed prefix is common to all candidates, so step 3 evaluates K windows per row against the
one cache, each candidate is weighted by its window's suffix mass (`imh.suffix_log_mass` over the
masks left in the window) and the independent MH chain picks one (see `imh`).

`prefix_cache=False` is the same algorithm recomputing every forward from scratch over
[prompt, committed prefix, window] with the whole model: the reference the cache is tested
against and the baseline of `experiments/bench_wedlm_streaming.py`.

Window semantics: Tencent's engine forwards the run it is about to commit plus W slots after it
(W + c tokens, `wedlm/engine/wedlm_decoder.py`); here the forward has a fixed W slots (static
shapes), which contain that run, so a step has up to c fewer masks to choose from than Tencent's
at the same W. Its top-p filters the untempered logits; here, as elsewhere in this library, the
tempered ones (`token_sampling`).

Statistics: `nfe_B` counts window forwards (K per IMH step), not the prompt's prefill; the
per-token `commit_step_BG` is the iteration that filled the token (its value is final then; it
enters the cache one iteration later). Generated slots after a stop token hold `eos_token_id`
(the mask id without one). `max_steps` caps the loop's iterations (benchmarks time a few).
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
  engine; the paper's quality setting is `entropy_threshold=None, position_penalty=0.1,
  window=6, temperature=0.1`)."""

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
    # Each active iteration fills or commits a token, so 2G + 2 only guards the loop.
    return self.max_steps or 2 * self.gen_length + 2


@struct.dataclass
class _State:
  window_BW: jax.Array          # the window's tokens (mask id where not filled yet)
  win_logprob_BW: jax.Array     # statistics of the filled window slots
  win_score_BW: jax.Array
  win_step_BW: jax.Array
  logits_BWV: jax.Array         # the last forward's logits of the window
  cache: Any                    # cached: every layer's (keys, values) [B, P + G + W, K, H]
  committed_B: jax.Array        # tokens committed per row
  done_B: jax.Array
  gen_BG: jax.Array
  logprob_BG: jax.Array
  confidence_BG: jax.Array
  commit_step_BG: jax.Array
  step: jax.Array
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
  """Float32 logits with the mask token set to -inf (it is never drawn)."""
  vocab = jnp.arange(logits.shape[-1])
  return jnp.where(vocab == sampler.mask_token_id, -jnp.inf, logits.astype(jnp.float32))


def _window_positions(inputs: _Inputs, committed_B: jax.Array, W: int) -> jax.Array:
  """Logical positions [B, W]: real prompt tokens count 0, 1, ..., then the generated ones."""
  length_B = jnp.sum(inputs.prompt_mask_BP, axis=-1, dtype=jnp.int32)
  return (length_B + committed_B)[:, None] + jnp.arange(W)


def _cached_forward(sampler, denoise_fn, inputs, cache, committed_B, windows_KBW):
  """Logits [K, B, W, V] of K windows per row against the row's cached prefix, and their keys
  and values per layer [K, B, W, kv heads, H]. The K windows are K groups of queries of one row
  (one cache read), each seeing the prefix and, by rank, its own group."""
  K, B, W = windows_KBW.shape
  P = inputs.prompt_BP.shape[1]
  S = cache[0][0].shape[1]
  key_valid_BS = jnp.concatenate([inputs.prompt_mask_BP.astype(bool),
                                  jnp.ones((B, S - P), bool)], axis=1)
  prefix_BS = key_valid_BS & (jnp.arange(S) < (P + committed_B)[:, None])
  tokens_BKW = jnp.swapaxes(windows_KBW, 0, 1)
  rank_BKWW = topological_mask(tokens_BKW.reshape(B * K, W), jnp.ones((B * K, W), bool),
                               sampler.mask_token_id).reshape(B, K, W, W)
  own_BKWKW = rank_BKWW[:, :, :, None, :] & jnp.eye(K, dtype=bool)[None, :, None, :, None]
  T = K * W
  visible_BTX = jnp.concatenate([jnp.broadcast_to(prefix_BS[:, None], (B, T, S)),
                                 own_BKWKW.reshape(B, T, T)], axis=-1)
  positions_BT = jnp.tile(_window_positions(inputs, committed_B, W), (1, K))
  logits_BTV, new = denoise_fn.extend(inputs.params, cache, tokens_BKW.reshape(B, T),
                                      positions_BT, visible_BTX)
  to_KBW = lambda x_BT: jnp.swapaxes(x_BT.reshape(B, K, W, *x_BT.shape[2:]), 0, 1)
  return to_KBW(logits_BTV), [(to_KBW(k), to_KBW(v)) for k, v in new]


def _uncached_forward(sampler, denoise_fn, inputs, gen_BG, committed_B, windows_KBW):
  """Logits [K, B, W, V] of the K windows, each from a full forward over its right-aligned
  canvas [prompt, committed prefix, window] (the topological mask orders the window)."""
  K, B, W = windows_KBW.shape
  G = sampler.gen_length
  valid_BL = jnp.concatenate([inputs.prompt_mask_BP.astype(bool),
                              jnp.arange(G) < committed_B[:, None], jnp.ones((B, W), bool)], 1)
  order_BL = jnp.argsort(valid_BL, axis=-1, stable=True)  # invalid slots first, else in order
  canvas_KBL = jnp.concatenate([jnp.broadcast_to(inputs.prompt_BP, (K, *inputs.prompt_BP.shape)),
                                jnp.broadcast_to(gen_BG, (K, B, G)), windows_KBW], axis=-1)
  canvas_KBL = jnp.take_along_axis(canvas_KBL, order_BL[None], axis=-1)
  L = canvas_KBL.shape[-1]
  mask_XL = jnp.tile(jnp.take_along_axis(valid_BL, order_BL, axis=-1), (K, 1))
  logits = denoise_fn.logits_window(inputs.params, canvas_KBL.reshape(K * B, L), mask_XL,
                                    L - W, W)
  return logits.reshape(K, B, W, -1)


def _forward(sampler, denoise_fn, inputs, state_cache, gen_BG, committed_B, windows_KBW):
  if sampler.prefix_cache:
    logits_KBWV, kv = _cached_forward(sampler, denoise_fn, inputs, state_cache, committed_B,
                                      windows_KBW)
  else:
    logits_KBWV, kv = _uncached_forward(sampler, denoise_fn, inputs, gen_BG, committed_B,
                                        windows_KBW), None
  return _finish(sampler, logits_KBWV), kv


def _write_cache(cache, kv_BW, start_B):
  """Each row's window keys and values written into its buffer at its own offset."""
  write = jax.vmap(lambda buf, x, s: jax.lax.dynamic_update_slice_in_dim(buf, x, s, 0))
  return [(write(k, nk.astype(k.dtype), start_B), write(v, nv.astype(v.dtype), start_B))
          for (k, v), (nk, nv) in zip(cache, kv_BW)]


def _shift(x_BW: jax.Array, count_B: jax.Array, fill) -> jax.Array:
  """x shifted left by `count_B` per row, refilled with `fill` on the right."""
  W = x_BW.shape[-1]
  source_BW = jnp.arange(W) + count_B[:, None]
  shifted = jnp.take_along_axis(x_BW, jnp.minimum(source_BW, W - 1), axis=-1)
  return jnp.where(source_BW < W, shifted, fill)


def select_fill(sampler: StreamingSampler, logits_BWV: jax.Array, eligible_BW: jax.Array
                ) -> tuple[jax.Array, jax.Array]:
  """The masks to fill [B, W] and their scores -H~ (WeDLM's rule, `WeDLMEntropy`): all with
  H~ < tau and always the lowest (the leftmost on ties), or only the lowest."""
  rule = WeDLMEntropy(position_penalty=sampler.position_penalty)
  inputs = StepInputs(logits_BWV, logits_BWV, jnp.zeros(eligible_BW.shape, jnp.int32),
                      eligible_BW, None, 0, 1)
  score_BW = rule.confidence(inputs, None)
  best_BW = (jnp.arange(eligible_BW.shape[1]) ==
             jnp.argmax(jnp.where(eligible_BW, score_BW, -jnp.inf), axis=-1)[:, None])
  fill_BW = best_BW & eligible_BW
  if sampler.entropy_threshold is not None:
    fill_BW |= eligible_BW & (-score_BW < sampler.entropy_threshold)
  return fill_BW, score_BW


def _commit(sampler: StreamingSampler, state: _State):
  """The count each row commits (its window's leftmost filled run, up to and including the
  first stop token) and whether the row is done after it."""
  W, G = sampler.window, sampler.gen_length
  filled_BW = state.window_BW != sampler.mask_token_id
  run_B = jnp.sum(jnp.cumprod(filled_BW, axis=-1), axis=-1, dtype=jnp.int32)
  in_run_BW = jnp.arange(W) < run_B[:, None]
  stop_BW = in_run_BW & jnp.isin(state.window_BW, jnp.array(sampler.stop_ids or (-1,)))
  has_stop_B = jnp.any(stop_BW, axis=-1)
  count_B = jnp.where(has_stop_B, jnp.argmax(stop_BW, axis=-1) + 1, run_B)
  count_B = jnp.where(state.done_B, 0, count_B).astype(jnp.int32)
  committed_B = state.committed_B + count_B
  return count_B, committed_B, state.done_B | has_stop_B | (committed_B >= G)


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


def _step(sampler: StreamingSampler, denoise_fn, inputs: _Inputs, state: _State) -> _State:
  W, G, K = sampler.window, sampler.gen_length, sampler.num_candidates
  B = state.window_BW.shape[0]
  mask = sampler.mask_token_id
  key_token, key_chain = row_random.step_keys(inputs.keys_B, state.row_steps_B, 2)
  active_B = ~state.done_B
  # 1. commit the leftmost filled run
  count_B, committed_B, done_B = _commit(sampler, state)
  into = lambda x_BG, x_BW: _into_region(x_BG, x_BW, state.committed_B, count_B)
  # 2. fill masks of the (unshifted) window, scored on the last forward's logits
  eligible_BW = ((state.window_BW == mask) & ~done_B[:, None]
                 & (state.committed_B[:, None] + jnp.arange(W) < G))
  fill_BW, score_BW = select_fill(sampler, state.logits_BWV, eligible_BW)
  if sampler.imh is None:
    temperature = sampler.temperature
    sample_logits = token_sampling.sampling_logits(state.logits_BWV, temperature, sampler.top_p,
                                                   sampler.top_k)
    values_KBW = token_sampling.draw_tokens(key_token, sample_logits, temperature)[None]
  else:
    values_KBW = imh_lib.draw_candidates(key_token, state.logits_BWV, sampler.imh.alpha, K)
  cand_KBW = jnp.where(fill_BW, values_KBW, state.window_BW)
  # 3. shift, refill with masks, one forward (K windows per row with IMH)
  shift = jax.vmap(lambda x_BW: _shift(x_BW, count_B, mask))
  shifted_KBW = shift(cand_KBW)
  logits_KBWV, kv = _forward(sampler, denoise_fn, inputs, state.cache, state.gen_BG if
                             sampler.prefix_cache else into(state.gen_BG, state.window_BW),
                             committed_B, shifted_KBW)
  if sampler.imh is None:
    chosen_B, accepts_B = jnp.zeros((B,), jnp.int32), jnp.zeros((B,), jnp.int32)
  else:
    remaining_BW = (shifted_KBW[0] == mask) & (committed_B[:, None] + jnp.arange(W) < G)
    log_w_KB = imh_lib.suffix_log_mass(logits_KBWV, remaining_BW, sampler.imh.alpha)
    chosen_B, accepts_B = imh_lib.run_chain(key_chain, log_w_KB)
  pick = lambda x_KB: jnp.take_along_axis(
      x_KB, chosen_B.reshape(1, B, *[1] * (x_KB.ndim - 2)), axis=0)[0]
  values_BW = pick(values_KBW)
  changes = {}
  if sampler.prefix_cache:
    changes["cache"] = _write_cache(state.cache, [(pick(k), pick(v)) for k, v in kv],
                                    inputs.prompt_BP.shape[1] + committed_B)
  win_shift = lambda x_BW, fill: _shift(x_BW, count_B, fill)
  forwarded_B = ~done_B
  return state.replace(
      window_BW=pick(shifted_KBW),
      win_logprob_BW=win_shift(jnp.where(fill_BW, _log_prob(state.logits_BWV, values_BW),
                                         state.win_logprob_BW), 0.0),
      win_score_BW=win_shift(jnp.where(fill_BW, score_BW, state.win_score_BW), 0.0),
      win_step_BW=win_shift(jnp.where(fill_BW, state.step, state.win_step_BW), -1),
      logits_BWV=pick(logits_KBWV), committed_B=committed_B, done_B=done_B,
      gen_BG=into(state.gen_BG, state.window_BW),
      logprob_BG=into(state.logprob_BG, state.win_logprob_BW),
      confidence_BG=into(state.confidence_BG, state.win_score_BW),
      commit_step_BG=into(state.commit_step_BG, state.win_step_BW),
      step=state.step + 1, row_steps_B=state.row_steps_B + active_B,
      nfe_B=state.nfe_B + K * forwarded_B,
      imh_accepts_B=state.imh_accepts_B + accepts_B * forwarded_B, **changes)


def _initial_state(sampler: StreamingSampler, denoise_fn, inputs: _Inputs) -> _State:
  """Prefill the prompt (cached), then the first forward over a window of masks."""
  B, P = inputs.prompt_BP.shape
  W, G = sampler.window, sampler.gen_length
  committed_B = jnp.zeros((B,), jnp.int32)
  window_KBW = jnp.full((1, B, W), sampler.mask_token_id, jnp.int32)
  gen_BG = jnp.full((B, G), sampler.mask_token_id if sampler.eos_token_id is None
                    else sampler.eos_token_id, jnp.int32)
  cache = None
  if sampler.prefix_cache:
    _, prompt_kv = denoise_fn.with_cache(inputs.params, inputs.prompt_BP, inputs.prompt_mask_BP,
                                         P - 1, 1)
    pad = lambda x: jnp.pad(x, ((0, 0), (0, G + W), (0, 0), (0, 0)))
    cache = [(pad(k), pad(v)) for k, v in prompt_kv]
  logits_KBWV, kv = _forward(sampler, denoise_fn, inputs, cache, gen_BG, committed_B, window_KBW)
  if sampler.prefix_cache:
    cache = _write_cache(cache, [(k[0], v[0]) for k, v in kv], jnp.full((B,), P))
  zeros = lambda dtype: jnp.zeros((B, G), dtype)
  return _State(
      window_BW=window_KBW[0], win_logprob_BW=jnp.zeros((B, W)), win_score_BW=jnp.zeros((B, W)),
      win_step_BW=jnp.full((B, W), -1, jnp.int32), logits_BWV=logits_KBWV[0], cache=cache,
      committed_B=committed_B, done_B=jnp.zeros((B,), bool), gen_BG=gen_BG,
      logprob_BG=zeros(jnp.float32), confidence_BG=zeros(jnp.float32),
      commit_step_BG=jnp.full((B, G), -1, jnp.int32), step=jnp.zeros((), jnp.int32),
      row_steps_B=jnp.zeros((B,), jnp.int32), nfe_B=jnp.ones((B,), jnp.int32),
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
  if max_length is not None and P + G + W > max_length:
    raise ValueError(f"prompt length {P} + gen_length {G} + window {W} exceeds the model's "
                     f"context of {max_length} tokens (the last window reaches past the last "
                     "generated token); shorten one of them")
  inputs = _Inputs(params=params, prompt_BP=prompt_BP.astype(jnp.int32),
                   prompt_mask_BP=prompt_mask_BP.astype(bool), keys_B=row_random.row_keys(rng, B))
  state = _initial_state(sampler, denoise_fn, inputs)
  not_done = lambda s: jnp.any(~s.done_B) & (s.step < sampler.step_limit)
  return jax.lax.while_loop(not_done, functools.partial(_step, sampler, denoise_fn, inputs),
                            state)


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
      nfe_B=state.nfe_B, steps=state.step, logprob_BG=state.logprob_BG,
      confidence_BG=state.confidence_BG, commit_step_BG=state.commit_step_BG,
      imh_accepts_B=state.imh_accepts_B)
