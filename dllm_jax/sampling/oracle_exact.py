"""Exact output distributions of random-order samplers on an explicit joint P, by enumeration.

A plain numpy reference, independent of the compiled loop: it walks every reachable partial
canvas with its probability. Covered samplers commit one token per step, positions uniformly at
random inside the current block, values by IMH (DESIGN.md §6) with K candidates drawn from
q ∝ p(x_i | x_O)^alpha and mean-field suffix weights. K = 1 is locally tempered decoding at
temperature 1 / alpha; alpha = 1, K = 1 is random-order remasking, whose output is P itself.

Given q and the weights w, the K - 1 MH moves form a Markov chain with kernel
T(a -> c) = q(c) min(1, w(c) / w(a)) for c != a, so the committed value has law q T^(K-1).
Position-first rules (rank-then-sample, EGI) choose their positions deterministically from the
marginals: `position_first_distribution`.
"""

from __future__ import annotations

import itertools

import numpy as np

from dllm_jax.sampling.oracle import all_sequences


def _marginals(p_N: np.ndarray, sequences_NL: np.ndarray, vocab: int,
               state: tuple[int | None, ...]) -> np.ndarray:
  """Conditional marginals [L, V] of every position given the revealed ones."""
  agree = np.ones(len(p_N), bool)
  for position, token in enumerate(state):
    if token is not None:
      agree &= sequences_NL[:, position] == token
  weights = p_N * agree
  weights = weights / weights.sum()
  return np.stack([np.bincount(sequences_NL[:, l], weights=weights, minlength=vocab)
                   for l in range(len(state))])


def _with(state: tuple, position: int, token: int) -> tuple:
  return state[:position] + (token,) + state[position + 1:]


def exact_distributions(p_N: np.ndarray, vocab: int, length: int, alpha: float,
                        candidates: list[int], block_length: int | None = None,
                        block_suffix: bool = False) -> dict[int, np.ndarray]:
  """{K: exact output distribution over V^L (in `all_sequences` order)} for each K.
  `block_suffix`: the weights sum over the current block's masks only (IMH inside the block
  decoder, `block_diffusion.py`), not over every mask left."""
  sequences_NL = all_sequences(vocab, length)
  block = block_length or length
  cache: dict[tuple, np.ndarray] = {}

  def marginals(state):
    if state not in cache:
      cache[state] = _marginals(p_N, sequences_NL, vocab, state)
    return cache[state]

  results = {}
  for K in candidates:
    dist = {(None,) * length: 1.0}
    for step in range(length):
      current_block = step // block  # one token per step: block b owns steps b*block ...
      new: dict[tuple, float] = {}
      for state, mass in dist.items():
        eligible = [i for i in range(length)
                    if state[i] is None and i // block == current_block]
        m = marginals(state)
        for i in eligible:
          q = m[i] ** alpha
          q = q / q.sum()
          log_w = np.zeros(vocab)
          for v in np.flatnonzero(q):
            after = _with(state, i, int(v))
            m_after = marginals(after)
            log_w[v] = sum(np.log((m_after[j] ** alpha).sum())
                           for j in range(length) if after[j] is None
                           and (not block_suffix or j // block == current_block))
          kernel = np.zeros((vocab, vocab))
          for a in range(vocab):
            for c in np.flatnonzero(q):
              if c != a:
                kernel[a, c] = q[c] * min(1.0, np.exp(log_w[c] - log_w[a]))
            kernel[a, a] = 1.0 - kernel[a].sum()
          law = q @ np.linalg.matrix_power(kernel, K - 1)
          for v in np.flatnonzero(law > 0):
            after = _with(state, i, int(v))
            new[after] = new.get(after, 0.0) + mass * law[v] / len(eligible)
      dist = new
    out = np.zeros(vocab ** length)
    for state, mass in dist.items():
      out[int(sum(t * vocab ** (length - 1 - k) for k, t in enumerate(state)))] += mass
    results[K] = out
  return results


def total_variation(p: np.ndarray, q: np.ndarray) -> float:
  return 0.5 * float(np.abs(np.asarray(p, np.float64) - np.asarray(q, np.float64)).sum())


def tv_sampling_bound(p: np.ndarray, n: int, delta: float = 1e-6) -> float:
  """A bound that TV(empirical of n iid draws from p, p) exceeds with probability < delta:
  E[TV] <= 1/2 sum_x sqrt(p_x / n), plus McDiarmid's deviation sqrt(log(1/delta) / (2 n))."""
  return 0.5 * float(np.sqrt(np.asarray(p) / n).sum()) + float(np.sqrt(np.log(1 / delta) / (2 * n)))


def _entropy_rows(m_LV: np.ndarray) -> np.ndarray:
  logs = np.log(np.where(m_LV > 0, m_LV, 1.0))
  return -(m_LV * logs).sum(-1)


def position_first_distribution(p_N: np.ndarray, vocab: int, length: int, temperature: float,
                                block_length: int | None = None,
                                first_temperature: float | None = None
                                ) -> tuple[np.ndarray, float]:
  """Exact output law of rank-then-sample with one token per step (`first_temperature` set:
  EGI, whose first step takes the highest-entropy position at that temperature), and the
  smallest margin between the chosen position's score and the runner-up's over all visited
  canvases (a small margin means float rounding could flip the compiled loop's choice).

  The position is the eligible argmax of c_i = max_v p_i(v) (ties: lowest index), the value
  is drawn from p_i^(1 / T) (argmax at T = 0)."""
  sequences_NL = all_sequences(vocab, length)
  block = block_length or length
  dist = {(None,) * length: 1.0}
  margin = np.inf
  for step in range(length):
    new: dict[tuple, float] = {}
    for state, mass in dist.items():
      eligible = [i for i in range(length) if state[i] is None and i // block == step // block]
      m = _marginals(p_N, sequences_NL, vocab, state)
      first = step == 0 and first_temperature is not None
      score = _entropy_rows(m) if first else m.max(-1)
      ranked = sorted(eligible, key=lambda i: (-score[i], i))
      if len(ranked) > 1:
        margin = min(margin, score[ranked[0]] - score[ranked[1]])
      i, t = ranked[0], first_temperature if first else temperature
      if t > 0:
        law = m[i] ** (1.0 / t)
      else:
        law = np.eye(vocab)[np.argmax(m[i])]
      law = law / law.sum()
      for v in np.flatnonzero(law > 0):
        after = _with(state, i, int(v))
        new[after] = new.get(after, 0.0) + mass * law[v]
    dist = new
  out = np.zeros(vocab ** length)
  for state, mass in dist.items():
    out[int(sum(t * vocab ** (length - 1 - k) for k, t in enumerate(state)))] += mass
  return out, float(margin)


def _block_orders(positions: list[int], block: int) -> list[tuple[int, ...]]:
  """Every order of `positions` with earlier blocks first (equally likely under the rollout's
  random priorities)."""
  return [order for order in itertools.permutations(positions)
          if all(a // block <= b // block for a, b in zip(order, order[1:]))]


def _rollout_estimates(marginals, state: tuple, alpha: float, chunk: int, greedy: bool,
                       block: int, only_block: int | None = None
                       ) -> tuple[np.ndarray, np.ndarray]:
  """The law of one rollout's estimate S_hat from `state` (`rollout_imh.py`): its values and
  their probabilities, equal values merged. `only_block`: complete that block's masks only."""
  remaining = [j for j, t in enumerate(state)
               if t is None and (only_block is None or j // block == only_block)]
  if not remaining:
    return np.ones(1), np.ones(1)
  orders = _block_orders(remaining, block)
  outcomes: dict[float, float] = {}

  def walk(canvas, chunks, value, prob):
    if not chunks:
      key = round(value, 14)
      outcomes[key] = outcomes.get(key, 0.0) + prob
      return
    m = marginals(canvas)
    laws = []
    for j in chunks[0]:
      q = m[j] ** alpha
      if greedy:
        laws.append([(int(np.argmax(m[j])), 1.0)])
        value *= q[np.argmax(m[j])]
      else:
        laws.append([(int(u), q[u] / q.sum()) for u in np.flatnonzero(q)])
        value *= q.sum()
    for combo in itertools.product(*laws):
      after = canvas
      for j, (u, _) in zip(chunks[0], combo):
        after = _with(after, j, u)
      walk(after, chunks[1:], value, prob * float(np.prod([pr for _, pr in combo])))

  for order in orders:
    walk(state, [order[k:k + chunk] for k in range(0, len(order), chunk)], 1.0, 1 / len(orders))
  values = np.array(list(outcomes))
  return values, np.array([outcomes[v] for v in values])


def _mean_of_draws(values: np.ndarray, probs: np.ndarray, draws: int
                   ) -> tuple[np.ndarray, np.ndarray]:
  """The law of the mean of `draws` independent copies (equal values merged)."""
  total_v, total_p = values, probs
  for _ in range(draws - 1):
    sums = (total_v[:, None] + values[None]).ravel()
    weights = (total_p[:, None] * probs[None]).ravel()
    keys, inverse = np.unique(np.round(sums, 13), return_inverse=True)
    total_v, total_p = keys, np.bincount(inverse.ravel(), weights=weights)
  return total_v / draws, total_p


def imh_chain_law(proposal_N: np.ndarray, weight_N: np.ndarray, moves: int) -> np.ndarray:
  """Law of an independent MH chain after `moves` steps from its proposal: states n with
  proposal mass proposal_N, weights weight_N > 0, T(a -> c) = proposal_c min(1, w_c / w_a).
  O(N log N) per move: mu'_k = proposal_k A_k + mu_k (1 - B_k) with
  A_k = sum_j mu_j min(1, w_k / w_j), B_k = sum_j proposal_j min(1, w_j / w_k)."""
  order = np.argsort(weight_N, kind="stable")
  w, pi0 = weight_N[order], proposal_N[order]
  le = np.searchsorted(w, w, side="right")   # count of w_j <= w_k
  lt = np.searchsorted(w, w, side="left")    # count of w_j < w_k
  cum = lambda x: np.concatenate([[0.0], np.cumsum(x)])
  c_pi, c_piw = cum(pi0), cum(pi0 * w)
  b = (c_pi[-1] - c_pi[lt]) + c_piw[lt] / w
  mu = pi0.copy()
  for _ in range(moves):
    c_mu, c_muw = cum(mu), cum(mu / w)
    a = c_mu[le] + w * (c_muw[-1] - c_muw[le])
    mu = pi0 * a + mu * (1.0 - b)
  out = np.empty_like(mu)
  out[order] = mu
  return out


def rollout_imh_distribution(p_N: np.ndarray, vocab: int, length: int, alpha: float,
                             candidates: list[int], num_rollouts: int,
                             rollout_tokens_per_step: int = 1, greedy: bool = False,
                             block_length: int | None = None, block_suffix: bool = False
                             ) -> dict[int, np.ndarray]:
  """{K: exact output law} of `RolloutIMH` (one token per step, random positions): the
  pseudo-marginal chain over (candidate, its estimate) pairs, whose proposal is
  q(v) x (law of the mean of R rollout estimates from the candidate canvas), after K - 1 moves.
  `block_suffix`: the rollouts complete the current block's masks only (RolloutIMH inside the
  block decoder, `block_diffusion.py`), not every mask left.
  Equal estimates are merged after rounding to 1e-13 (the laws are exact to that)."""
  sequences_NL = all_sequences(vocab, length)
  block = block_length or length
  cache: dict[tuple, np.ndarray] = {}

  def marginals(state):
    if state not in cache:
      cache[state] = _marginals(p_N, sequences_NL, vocab, state)
    return cache[state]

  estimates: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
  results = {}
  for K in candidates:
    dist = {(None,) * length: 1.0}
    for step in range(length):
      new: dict[tuple, float] = {}
      for state, mass in dist.items():
        eligible = [i for i in range(length) if state[i] is None and i // block == step // block]
        m = marginals(state)
        for i in eligible:
          q = m[i] ** alpha
          q = q / q.sum()
          values, owners, proposal = [], [], []
          for v in np.flatnonzero(q):
            after = _with(state, i, int(v))
            only = step // block if block_suffix else None
            if (after, only) not in estimates:
              estimates[after, only] = _mean_of_draws(
                  *_rollout_estimates(marginals, after, alpha, rollout_tokens_per_step, greedy,
                                      block, only), num_rollouts)
            w, pw = estimates[after, only]
            values.append(w)
            owners.append(np.full(len(w), v))
            proposal.append(q[v] * pw)
          mu = imh_chain_law(np.concatenate(proposal), np.concatenate(values), K - 1)
          law = np.bincount(np.concatenate(owners), weights=mu, minlength=vocab)
          for v in np.flatnonzero(law > 0):
            after = _with(state, i, int(v))
            new[after] = new.get(after, 0.0) + mass * law[v] / len(eligible)
      dist = new
    out = np.zeros(vocab ** length)
    for state, mass in dist.items():
      out[int(sum(t * vocab ** (length - 1 - k) for k, t in enumerate(state)))] += mass
    results[K] = out
  return results


def smc_particle_law(p_N: np.ndarray, vocab: int, length: int, alpha: float, particles: int,
                     runs: int, ess_threshold: float = 0.5, seed: int = 0,
                     block_length: int | None = None) -> np.ndarray:
  """A Monte Carlo estimate (not exact) of the law of one draw from `SMC` (one token per
  step, random positions; `smc.py`): `runs` independent runs of a plain numpy re-implementation,
  each contributing its particles with their normalised weights (the expected law of a draw,
  with less noise than one draw per run). `block_length`: positions drawn in the current block
  (each particle's first block with a mask) only."""
  rng = np.random.default_rng(seed)
  sequences_NL = all_sequences(vocab, length)
  # Conditional marginals of every partial canvas (token `vocab` = masked), by its index.
  canvases = all_sequences(vocab + 1, length)
  table = np.full((len(canvases), length, vocab), np.nan)
  for index, canvas in enumerate(canvases):
    agree = np.all((sequences_NL == canvas) | (canvas == vocab), axis=1)
    if p_N[agree].sum() > 0:
      table[index] = _marginals(p_N, sequences_NL, vocab,
                                tuple(None if t == vocab else int(t) for t in canvas))
  place = (vocab + 1) ** np.arange(length - 1, -1, -1)
  canvas = np.full((runs, particles, length), vocab)
  log_w = np.zeros((runs, particles))
  rows = np.arange(runs)[:, None]
  for _ in range(length):
    m = table[(canvas * place).sum(-1)]                                  # [N, P, L, V]
    masked = canvas == vocab
    if block_length is not None:
      block = np.arange(length) // block_length
      current = block[np.argmax(masked, axis=-1)]
      masked = masked & (block == current[..., None])
    u = np.where(masked, rng.random(canvas.shape), np.inf)
    position = np.argmin(u, axis=-1)                                     # uniform among masks
    q = np.take_along_axis(m, position[..., None, None], axis=2)[:, :, 0] ** alpha
    log_w = log_w + np.log(q.sum(-1))
    w = np.exp(log_w - log_w.max(1, keepdims=True))
    ess = w.sum(1) ** 2 / (w ** 2).sum(1)
    cdf = np.cumsum(w / w.sum(1, keepdims=True), axis=1)
    points = (np.arange(particles)[None] + rng.random((runs, 1))) / particles
    ancestors = np.minimum((cdf[:, None, :] <= points[:, :, None]).sum(-1), particles - 1)
    ancestors = np.where((ess < ess_threshold * particles)[:, None], ancestors,
                         np.arange(particles)[None])
    canvas, position, q = canvas[rows, ancestors], position[rows, ancestors], q[rows, ancestors]
    log_w = np.where((ess < ess_threshold * particles)[:, None], 0.0, log_w)
    cdf_v = np.cumsum(q / q.sum(-1, keepdims=True), axis=-1)
    token = np.minimum((cdf_v < rng.random((runs, particles, 1))).sum(-1), vocab - 1)
    np.put_along_axis(canvas, position[..., None], token[..., None], axis=2)
  weights = np.exp(log_w - log_w.max(1, keepdims=True))
  weights = weights / weights.sum(1, keepdims=True)
  index = (canvas * vocab ** np.arange(length - 1, -1, -1)).sum(-1)
  return np.bincount(index.ravel(), weights=weights.ravel(), minlength=vocab ** length) / runs
