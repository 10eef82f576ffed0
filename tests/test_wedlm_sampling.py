"""Every sampler decodes a tiny WeDLM model; WeDLM's own rule against hand computations and a plain
Python loop; the block cache's window on WeDLM; sharded == unsharded on the fake-device meshes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dllm_jax import models
from dllm_jax import sampling as S
from dllm_jax import sharding
from dllm_jax.sampling.remasking import StepInputs

CONFIG = models.wedlm_tiny()  # 4 query heads, 2 kv heads, q/k norm, head_dim 16 != 48 / 4
# 8x the LM head: peaked, varied distributions, so that rules rank positions by clear margins.
PARAMS = models.init_params(CONFIG, seed=5)
PARAMS["lm_head"]["kernel"] = PARAMS["lm_head"]["kernel"] * 8.0
DENOISE = models.make_denoise(CONFIG)
MASK, PAD = CONFIG.mask_token_id, CONFIG.pad_token_id


def _prompts(lengths, seed=0):
  """Left-padded prompts (tokens 0..199, never special)."""
  rng = np.random.default_rng(seed)
  P = max(lengths)
  tokens = np.full((len(lengths), P), PAD, np.int32)
  for row, n in enumerate(lengths):
    tokens[row, P - n:] = rng.integers(0, 200, n)
  return tokens, tokens != PAD


RULES = {
    "random": (S.Random(), 1.0, None),
    "low_confidence": (S.LowConfidence(), 0.7, None),
    "maskgit_plus": (S.MaskGitPlus(alg_temp=0.3), 0.8, None),
    "topk_margin": (S.TopKMargin(), 0.8, None),
    "entropy": (S.Entropy(), 0.8, None),
    "wedlm_entropy": (S.WeDLMEntropy(position_penalty=0.1), 0.8, None),
    "origin": (S.DreamOrigin(), 0.8, None),
    "threshold": (S.Threshold(0.3), 0.5, None),
    "threshold_cache": (S.Threshold(0.3), 0.5, S.BlockCache()),
    "imh": (S.IMH(alpha=2.0, num_candidates=3), None, None),
}


def _sampler(name, gen_length=12, block_length=4):
  rule, temperature, cache = RULES[name]
  steps = None if isinstance(rule, S.Threshold) else gen_length
  kw = {} if temperature is None else {"temperature": temperature}
  return S.Sampler.for_model(CONFIG, gen_length=gen_length, block_length=block_length,
                             steps=steps, remasking=rule, cache=cache, **kw)


class _Recording(type(DENOISE)):
  """The model, plus a host callback recording the canvases it evaluates (full forwards)."""
  seen = []

  def _record(self, tokens_BL):
    jax.debug.callback(lambda t: self.seen.append(np.asarray(t)), tokens_BL, ordered=True)

  def __call__(self, params, tokens_BL, mask_BL):
    self._record(tokens_BL)
    return super().__call__(params, tokens_BL, mask_BL)

  def with_cache(self, params, tokens_BL, mask_BL, start=0, width=None):
    self._record(tokens_BL)
    return super().with_cache(params, tokens_BL, mask_BL, start, width)


@pytest.mark.parametrize("name", list(RULES))
def test_every_rule_decodes_wedlm(name):
  """Left-padded batch: everything gets generated, committed tokens never change, blocks go left
  to right, and the most padded row is the sample it gets alone (one key per row, T > 0)."""
  sampler = _sampler(name)
  prompt, mask = _prompts([5, 2, 7])
  keys = jax.random.split(jax.random.key(4), 3)
  _Recording.seen = []
  out = S.generate(sampler, _Recording(CONFIG), PARAMS, prompt, mask, keys)
  jax.block_until_ready(out)
  P = prompt.shape[1]
  final = np.asarray(out.tokens_BL)
  np.testing.assert_array_equal(final[:, :P], prompt)
  assert not (final[:, P:] == MASK).any()
  # Every token any evaluated canvas held is the final one (IMH: except the one position per
  # row its candidates propose at that step).
  assert len(_Recording.seen) >= 3
  for canvas in _Recording.seen:
    for rows in range(0, canvas.shape[0], 3):  # IMH evaluates K candidate canvases per row
      gen = canvas[rows:rows + 3, P:]
      differs = (gen != MASK) & (gen != final[:, P:])
      assert differs.sum(1).max() <= (1 if name == "imh" else 0)
  steps = np.asarray(out.commit_step_BG)
  assert steps.min() >= 0 and steps.max() < int(out.steps)
  assert (steps[:, :4].max(1) < steps[:, 4:8].min(1)).all()  # blocks of 4, left to right
  if name == "imh":
    assert int(np.asarray(out.imh_accepts_B).sum()) > 0
  else:
    assert len(_Recording.seen) == (3 if sampler.cache else int(out.steps))
  n = int(mask[1].sum())
  alone = S.generate(sampler, DENOISE, PARAMS, prompt[1:2, P - n:], mask[1:2, P - n:], keys[1:2])
  np.testing.assert_array_equal(alone.generated_BG[0], out.generated_BG[1])


def test_block_cache_refreshed_every_step_is_uncached_decoding():
  uncached = _sampler("threshold")
  prompt, mask = _prompts([5, 2, 7], seed=1)
  keys = jax.random.split(jax.random.key(1), 3)
  want = S.generate(uncached, DENOISE, PARAMS, prompt, mask, keys)
  got = S.generate(uncached.replace(cache=S.BlockCache(refresh_every=1)), DENOISE, PARAMS,
                   prompt, mask, keys)
  np.testing.assert_array_equal(got.tokens_BL, want.tokens_BL)


def test_window_over_a_fresh_cache_equals_the_full_forward():
  """The window's rows of the topological mask, against cached keys and values."""
  prompt, mask = _prompts([9, 6], seed=2)
  rng = np.random.default_rng(0)
  tokens = np.concatenate([prompt, rng.integers(0, 200, (2, 12))], axis=1).astype(np.int32)
  tokens[:, 9:][rng.random((2, 12)) < 0.6] = MASK
  mask = np.concatenate([mask, np.ones((2, 12), bool)], axis=1)
  full, cache = DENOISE.with_cache(PARAMS, tokens, mask)
  for start, width in ((9, 4), (13, 8), (3, 6)):
    window = DENOISE.window(PARAMS, cache, tokens, mask, start, width)
    np.testing.assert_allclose(window, full[:, start:start + width], atol=1e-4)
    sliced = DENOISE.logits_window(PARAMS, tokens, mask, start, width)
    np.testing.assert_allclose(sliced, full[:, start:start + width], atol=1e-4)


# ---------------------------------------------------------------------------------------------
# WeDLMEntropy


def _entropy(logits):
  logits = np.asarray(logits, np.float64)
  logp = logits - logits.max(-1, keepdims=True)
  logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
  p = np.exp(logp)
  return -(p * np.where(p > 0, logp, 0.0)).sum(-1)


def test_wedlm_entropy_selection_by_hand():
  """argmin of H(softmax(logits)) + lambda * (i - first eligible i), per row, untempered."""
  rng = np.random.default_rng(0)
  logits = rng.standard_normal((2, 6, 10)).astype(np.float32) * rng.uniform(0.3, 4, (2, 6, 1))
  logits[0, 3, 4] = -np.inf  # a forbidden token counts 0
  eligible = np.array([[False, False, True, True, True, True],
                       [True, False, True, True, False, True]])
  lam = 0.3
  inputs = StepInputs(logits_BGV=jnp.asarray(logits), sample_logits_BGV=jnp.asarray(logits * 7),
                      x0_BG=jnp.zeros((2, 6), jnp.int32), eligible_BG=jnp.asarray(eligible),
                      count_B=jnp.array([1, 2]), step_in_block=jnp.array(0), steps_per_block=3)
  rule = S.WeDLMEntropy(position_penalty=lam)
  keys = jax.random.split(jax.random.key(0), 2)
  score = np.asarray(rule.confidence(inputs, keys))
  picked = np.asarray(rule.select(jnp.asarray(score), inputs, keys))
  first = np.array([2, 0])
  adjusted = _entropy(logits) + lam * (np.arange(6)[None] - first[:, None])
  np.testing.assert_allclose(score[eligible], -adjusted[eligible], rtol=1e-5, atol=1e-5)
  want = np.zeros((2, 6), bool)
  want[0, np.argmin(np.where(eligible[0], adjusted[0], np.inf))] = True
  want[1, np.argsort(np.where(eligible[1], adjusted[1], np.inf))[:2]] = True
  np.testing.assert_array_equal(picked, want)
  # The tempered distribution (sample_logits) plays no part.
  other = inputs._replace(sample_logits_BGV=jnp.asarray(logits))
  np.testing.assert_array_equal(np.asarray(rule.confidence(other, keys)), score)


def _python_wedlm_loop(prompt, mask, gen_length, block_length, lam):
  """One token per step: recompute the model, pick argmin of entropy + lam * distance to the
  block's first mask among the block's masks, commit its argmax (the mask token forbidden)."""
  B, P = prompt.shape
  x = np.concatenate([prompt, np.full((B, gen_length), MASK)], axis=1).astype(np.int32)
  valid = np.concatenate([mask, np.ones((B, gen_length), bool)], axis=1)
  order = np.zeros((B, gen_length), int)
  for step in range(gen_length):
    block = step // block_length
    logits = np.array(DENOISE(PARAMS, x, valid))[:, P:].astype(np.float64)
    logits[..., MASK] = -np.inf
    for b in range(B):
      gen = x[b, P:]
      lo, hi = block * block_length, (block + 1) * block_length
      masked = np.flatnonzero(gen[lo:hi] == MASK) + lo
      score = _entropy(logits[b, masked]) + lam * (masked - masked[0])
      i = masked[np.argmin(score)]
      x[b, P + i] = np.argmax(logits[b, i])
      order[b, i] = step
  return x, order


@pytest.mark.parametrize("lam,block_length", [(0.0, None), (0.1, None), (0.02, 4), (100.0, None)])
def test_greedy_wedlm_entropy_equals_a_python_loop(lam, block_length):
  prompt, mask = _prompts([6, 3], seed=3)
  sampler = S.Sampler.for_model(CONFIG, gen_length=8, block_length=block_length, steps=8,
                                remasking=S.WeDLMEntropy(position_penalty=lam), temperature=0.0)
  out = S.generate(sampler, DENOISE, PARAMS, prompt, mask, jax.random.key(0))
  tokens, order = _python_wedlm_loop(prompt, mask, 8, block_length or 8, lam)
  np.testing.assert_array_equal(np.asarray(out.tokens_BL), tokens)
  np.testing.assert_array_equal(np.asarray(out.commit_step_BG), order)
  left_to_right = (order == np.arange(8)).all()
  if lam == 0.0:  # entropy alone picks positions out of order
    assert not left_to_right
  if lam == 100.0:  # a large penalty leaves only the position
    assert left_to_right


# ---------------------------------------------------------------------------------------------
# Sharding

MESHES = [(8, 1), (1, 8), (2, 4), (4, 2)]


@pytest.mark.parametrize("name", ["wedlm_entropy", "threshold_cache"])
def test_sharded_equals_single_device(name):
  """The tiny model's 4 query / 2 kv heads split 2 ways, stay whole 8 ways (replicated), and at
  model axis 4 the queries split while keys/values are replicated (WeDLM-8B at 16)."""
  sampler = _sampler(name, gen_length=8)
  rng = np.random.default_rng(0)
  prompt = rng.integers(0, 200, (8, 6)).astype(np.int32)
  mask = np.ones_like(prompt, bool)
  mask[1::2, :2] = False
  prompt[~mask] = PAD
  keys = jax.random.split(jax.random.key(0), 8)
  single = S.generate(sampler, DENOISE, PARAMS, prompt, mask, keys)
  for shape in MESHES:
    mesh = sharding.make_mesh(*shape)
    params = sharding.shard_params(PARAMS, CONFIG, mesh)
    with jax.set_mesh(mesh):
      out = S.generate(sampler, DENOISE, params, *sharding.shard_batch(mesh, prompt, mask, keys))
    np.testing.assert_array_equal(out.tokens_BL, single.tokens_BL, err_msg=f"mesh {shape}")


def test_parameter_specs():
  P = jax.sharding.PartitionSpec
  specs = sharding.param_specs(CONFIG, sharding.make_mesh(2, 4))["layers"][0]["attn"]
  assert specs["q_norm"]["scale"] == specs["k_norm"]["scale"] == P()
  assert specs["q_proj"]["kernel"] == P(None, "model") and specs["k_proj"]["kernel"] == P()
  big = models.wedlm_8b(param_dtype="bfloat16")
  mesh16 = jax.sharding.AbstractMesh((1, 16), ("data", "model"))
  attn16 = sharding.param_specs(big, mesh16)["layers"][0]["attn"]
  assert attn16["q_proj"]["kernel"] == P(None, "model")  # 32 heads split 16 ways
  assert attn16["k_proj"]["kernel"] == attn16["v_proj"]["kernel"] == P()  # 8 kv heads do not
  # Per device at 16: everything / 16, plus the replicated k/v projections' other 15/16.
  total = models.param_count(models.abstract_params(big)) * 2
  kv = big.num_layers * 2 * big.hidden_size * big.num_kv_heads * big.head_dim * 2
  small = (big.num_layers * (2 * big.hidden_size + 2 * big.head_dim) + big.hidden_size) * 2
  want = (total - kv - small) // 16 + kv + small
  assert sharding.param_bytes_per_device(big, 16) == want
