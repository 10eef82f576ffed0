"""WeDLM streaming parallel decoding: the exact prefix cache against recomputing every forward,
the cache's contents, row independence, a plain Python loop of the algorithm, and IMH."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dllm_jax import models
from dllm_jax.models import transformer
from dllm_jax.sampling import remasking
from dllm_jax.sampling import streaming as ST
from dllm_jax.sampling.imh import IMH

CONFIGS = {"wedlm_8b_layout": models.wedlm_tiny(), "wedlm_7b_layout": models.wedlm_7b_tiny()}
# A token each random model below produces now and then, used as EOS so rows stop at different
# steps (the tests check that they do).
STOP = {"wedlm_8b_layout": 54, "wedlm_7b_layout": 128}


def _params(config, head_scale):
  """Random weights with a sharpened LM head: entropies spread over [0, log V], so thresholds,
  the position penalty and out-of-order fills all matter."""
  params = models.init_params(config, seed=1)
  params["lm_head"]["kernel"] = params["lm_head"]["kernel"] * head_scale
  return params


def _prompts(config, lengths, seed=0):
  rng = np.random.default_rng(seed)
  P = max(lengths)
  tokens = np.full((len(lengths), P), config.pad_token_id, np.int32)
  mask = np.zeros((len(lengths), P), bool)
  for row, n in enumerate(lengths):
    tokens[row, P - n:] = rng.integers(0, 250, n)
    mask[row, P - n:] = True
  return tokens, mask


# (head scale, sampler fields): one token per step (the paper), and entropy-threshold decoding.
SETTINGS = {"one_per_step": (20.0, dict(entropy_threshold=None, position_penalty=0.02)),
            "threshold": (40.0, dict(entropy_threshold=1.0, position_penalty=0.02))}


def _case(family, setting, **fields):
  config = CONFIGS[family]
  scale, setting_fields = SETTINGS[setting]
  sampler = ST.StreamingSampler.for_model(config, gen_length=24, window=6,
                                          eos_token_id=STOP[family],
                                          **{**setting_fields, **fields})
  return config, _params(config, scale), models.make_denoise(config), sampler


@pytest.mark.parametrize("family", sorted(CONFIGS))
@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_cached_decoding_equals_recomputing_every_forward(family, setting):
  """Greedy, left-padded rows of different prompt lengths; a token that the model produces
  often is EOS so rows stop at different steps."""
  config, params, denoise, sampler = _case(family, setting)
  prompt, mask = _prompts(config, (7, 4, 1, 5))
  cached = ST.stream_generate(sampler, denoise, params, prompt, mask, jax.random.key(0))
  plain = ST.stream_generate(sampler.replace(prefix_cache=False), denoise, params, prompt, mask,
                             jax.random.key(0))
  np.testing.assert_array_equal(cached.tokens_BL, plain.tokens_BL)
  np.testing.assert_array_equal(cached.nfe_B, plain.nfe_B)
  np.testing.assert_array_equal(cached.commit_step_BG, plain.commit_step_BG)
  np.testing.assert_allclose(cached.logprob_BG, plain.logprob_BG, atol=1e-4)
  np.testing.assert_allclose(cached.confidence_BG, plain.confidence_BG, atol=1e-4)
  generated = np.asarray(cached.generated_BG)
  steps = np.asarray(cached.commit_step_BG)
  # the rows really differ in how far they get before EOS and in fills per forward
  eos = STOP[family]
  lengths = [int(np.argmax(row == eos)) + 1 if (row == eos).any() else 24 for row in generated]
  assert len(set(lengths)) > 1, lengths
  assert all((steps[row, :n] >= 0).all() for row, n in enumerate(lengths))  # all were filled
  if setting == "threshold":
    assert (np.asarray(cached.nfe_B) < np.array(lengths)).any()


def test_cached_decoding_equals_recomputing_when_sampling():
  """At temperature > 0 with top-k / top-p the two paths draw the same tokens from the same
  keys (their logits agree to rounding)."""
  config, params, denoise, sampler = _case("wedlm_8b_layout", "threshold", temperature=0.8, top_k=20,
                                           top_p=0.9)
  prompt, mask = _prompts(config, (3, 6))
  cached = ST.stream_generate(sampler, denoise, params, prompt, mask, jax.random.key(5))
  plain = ST.stream_generate(sampler.replace(prefix_cache=False), denoise, params, prompt, mask,
                             jax.random.key(5))
  np.testing.assert_array_equal(cached.tokens_BL, plain.tokens_BL)
  np.testing.assert_allclose(cached.logprob_BG, plain.logprob_BG, atol=1e-4)


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_cache_holds_a_fresh_forward_of_the_committed_prefix(family):
  config, params, denoise, sampler = _case(family, "threshold")
  prompt, mask = _prompts(config, (7, 2, 5))
  state = ST.run_jit(sampler, denoise, params, prompt, mask, jax.random.key(0))
  committed = np.asarray(state.committed_B)
  assert committed.min() < sampler.gen_length and committed.min() > 0
  P, G = prompt.shape[1], sampler.gen_length
  canvas = np.concatenate([prompt, np.asarray(state.gen_BG)], axis=1)
  valid = np.concatenate([mask, np.arange(G)[None] < committed[:, None]], axis=1)
  _, fresh = denoise.with_cache(params, canvas, valid)
  for (k, v), (k_ref, v_ref) in zip(state.cache, fresh):
    for row in range(len(committed)):
      keep = valid[row]  # the prompt's real tokens and the committed prefix
      np.testing.assert_allclose(np.asarray(k)[row, :P + G][keep], np.asarray(k_ref)[row][keep],
                                 atol=2e-5)
      np.testing.assert_allclose(np.asarray(v)[row, :P + G][keep], np.asarray(v_ref)[row][keep],
                                 atol=2e-5)


def test_rows_do_not_depend_on_the_batch():
  config, params, denoise, sampler = _case("wedlm_8b_layout", "threshold",
                                           temperature=0.7)
  prompt, mask = _prompts(config, (7, 3, 5), seed=4)
  keys = jax.random.split(jax.random.key(9), 3)
  batch = ST.stream_generate(sampler, denoise, params, prompt, mask, keys)
  for row in (1,):  # the shortest prompt: the most padding in the batch
    n = int(mask[row].sum())
    alone = ST.stream_generate(sampler, denoise, params, prompt[row:row + 1, -n:],
                               mask[row:row + 1, -n:], keys[row:row + 1])
    np.testing.assert_array_equal(alone.generated_BG[0], batch.generated_BG[row])
    np.testing.assert_array_equal(alone.nfe_B[0], batch.nfe_B[row])


def _python_loop(sampler, denoise, params, prompt_tokens):
  """Tencent's loop in plain Python, one row, greedy (the rules of the port in
  tests/torch_ref/wedlm_decoder_port.py, with this library's model over [prompt, committed,
  window] each step): refill the window with as many masks as its leftmost filled run is long,
  one forward, commit that run, score the masks left on raw logits, fill."""
  M, W, G = sampler.mask_token_id, sampler.window, sampler.gen_length
  stops = {sampler.eos_token_id, sampler.eot_token_id} - {None}
  L = len(prompt_tokens) + G + 2 * W
  committed, window, filled, nfe, fills = [], [M] * W, [False] * W, 0, []
  while True:
    run = next((i for i, f in enumerate(filled) if not f), len(window))
    window, filled = window + [M] * run, filled + [False] * run
    canvas = list(prompt_tokens) + committed + window
    n = len(canvas)
    tokens = np.array([canvas + [0] * (L - n)], np.int32)
    logits = np.array(denoise(params, tokens, np.arange(L)[None] < n))[0, n - len(window):n]
    nfe += 1
    for t in window[:run]:
      committed.append(t)
      if t in stops or len(committed) >= G:
        return committed, nfe, fills
    window, filled, logits = window[run:], filled[run:], logits[run:]
    masks = [i for i in range(W) if not filled[i]]
    p = np.exp(logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True))
    entropy = -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=-1)
    adjusted = {i: entropy[i] + sampler.position_penalty * (i - masks[0]) for i in masks}
    chosen = [min(masks, key=lambda i: (adjusted[i], i))]
    if sampler.entropy_threshold is not None:
      chosen = [i for i in masks if adjusted[i] < sampler.entropy_threshold] or chosen
    for i in chosen:
      window[i], filled[i] = int(np.argmax(logits[i])), True
      assert window[i] != M  # the full forward here tells masks by their id
    fills.append(len(chosen))


@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_compiled_loop_follows_a_plain_python_loop(setting):
  config, params, denoise, sampler = _case("wedlm_8b_layout", setting)
  prompt, mask = _prompts(config, (6, 2, 4), seed=2)
  out = ST.stream_generate(sampler, denoise, params, prompt, mask, jax.random.key(0))
  fills_seen = []
  for row in range(len(prompt)):
    committed, nfe, fills = _python_loop(sampler, denoise, params, prompt[row][mask[row]])
    fills_seen += fills
    n = len(committed)
    np.testing.assert_array_equal(np.asarray(out.generated_BG[row, :n]), committed)
    assert (np.asarray(out.generated_BG[row, n:]) == sampler.eos_token_id).all()
    assert int(out.nfe_B[row]) == nfe
  if setting == "threshold":
    assert max(fills_seen) > 1
  else:
    assert set(fills_seen) == {1}


def test_selection_rule():
  """H~ = entropy + lambda * (index - first mask): all below tau, at least the lowest."""
  logits = jnp.log(jnp.array([[[0.5, 0.5, 0.0], [1.0, 0.0, 0.0], [0.98, 0.01, 0.01],
                               [0.34, 0.33, 0.33]]]) + 1e-30)
  eligible = jnp.array([[False, True, True, True]])
  entropy = np.asarray(remasking.entropy(logits))[0]
  sampler = ST.StreamingSampler(gen_length=4, mask_token_id=2, window=4, position_penalty=0.1,
                                entropy_threshold=0.25)
  fill, score = ST.select_fill(sampler, logits, eligible)
  np.testing.assert_allclose(-np.asarray(score)[0, 1:], entropy[1:] + 0.1 * np.arange(3),
                             atol=1e-6)
  assert np.asarray(fill).tolist() == [[False, True, True, False]]  # H~ = 0, 0.112 + 0.1, 1.099 + 0.2
  one, _ = ST.select_fill(sampler.replace(entropy_threshold=None), logits, eligible)
  assert np.asarray(one).tolist() == [[False, True, False, False]]
  none_below, _ = ST.select_fill(sampler.replace(entropy_threshold=1e-9), logits,
                                 jnp.array([[False, False, True, True]]))
  assert np.asarray(none_below).tolist() == [[False, False, True, False]]


def test_window_forward_against_the_cache_equals_the_full_forward():
  """`extend` with the rank mask of a window equals the topological full forward."""
  config = CONFIGS["wedlm_8b_layout"]
  params, denoise = _params(config, 1.0), models.make_denoise(config)
  M = config.mask_token_id
  prefix = np.array([[5, 9, 11, 3, 7]], np.int32)
  window = np.array([[M, 40, M, 41, M]], np.int32)
  full = denoise(params, np.concatenate([prefix, window], 1), np.ones((1, 10), bool))
  _, cache = denoise.with_cache(params, prefix, np.ones((1, 5), bool))
  visible = np.concatenate([np.ones((1, 5, 5), bool),
                            transformer.topological_mask(window, np.ones((1, 5), bool), M)], -1)
  logits, _ = denoise.extend(params, cache, window, 5 + np.arange(5)[None], visible)
  np.testing.assert_allclose(logits, full[:, 5:], atol=1e-5)


@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_imh_with_the_prefix_cache_equals_imh_without(setting):
  config, params, denoise, sampler = _case("wedlm_8b_layout", setting,
                                           imh=IMH(alpha=2.0, num_candidates=3))
  prompt, mask = _prompts(config, (5, 2, 6))
  cached = ST.stream_generate(sampler, denoise, params, prompt, mask, jax.random.key(2))
  plain = ST.stream_generate(sampler.replace(prefix_cache=False), denoise, params, prompt, mask,
                             jax.random.key(2))
  np.testing.assert_array_equal(cached.tokens_BL, plain.tokens_BL)
  np.testing.assert_array_equal(cached.imh_accepts_B, plain.imh_accepts_B)
  np.testing.assert_array_equal(cached.nfe_B, plain.nfe_B)
  assert np.asarray(cached.imh_accepts_B).sum() > 0
  # K window forwards per step after the first (one window of masks)
  steps = (np.asarray(cached.nfe_B) - 1) // 3
  assert ((np.asarray(cached.nfe_B) - 1) % 3 == 0).all() and (steps > 0).all()


def test_imh_one_slot_samples_the_tempered_model():
  """With one slot to generate no mask is left to weigh candidates by, so every proposal is
  accepted and the token follows softmax(alpha * logits) exactly: checked against the model's
  own distribution by total variation over many rows."""
  config = CONFIGS["wedlm_8b_layout"]
  params, denoise = _params(config, 30.0), models.make_denoise(config)
  sampler = ST.StreamingSampler.for_model(config, gen_length=1, window=1,
                                          imh=IMH(alpha=1.5, num_candidates=4))
  prompt = np.tile(np.array([[17, 4, 99]], np.int32), (2500, 1))
  out = ST.stream_generate(sampler, denoise, params, prompt, np.ones_like(prompt, bool),
                           jax.random.key(0))
  canvas = np.concatenate([prompt[:1], [[config.mask_token_id]]], 1)
  # raw logits, [MASK] included, as the decoder reads them (Tencent's; see exclude_mask_token)
  logits = np.asarray(denoise(params, canvas, np.ones_like(canvas, bool)))[0, -1].astype(
      np.float64)
  tempered = lambda alpha: np.exp(alpha * logits - np.logaddexp.reduce(alpha * logits))
  n = len(prompt)
  tv = lambda counts, p: 0.5 * np.abs(counts / n - p).sum()
  counts = np.bincount(np.asarray(out.generated_BG)[:, 0], minlength=config.vocab_size)
  # the 99.9% quantile of the distance of n exact draws from their law
  rng = np.random.default_rng(0)
  bound = np.quantile([tv(rng.multinomial(n, tempered(1.5)), tempered(1.5))
                       for _ in range(2000)], 0.999)
  assert (np.asarray(out.imh_accepts_B) == 3).all()
  assert tv(counts, tempered(1.5)) < bound, (tv(counts, tempered(1.5)), bound)
  assert tv(counts, tempered(1.0)) > bound  # the check tells the untempered law apart


def test_mask_token_is_drawn_as_tencent_draws_it_unless_excluded():
  """Tencent scores and draws on raw logits, so [MASK] itself can be filled in (then it is an
  observed token: the cache and the full forward agree on it); `exclude_mask_token` never
  draws it. The LM head's [MASK] column is made 1.5x that of the token decoding picks most."""
  config = CONFIGS["wedlm_8b_layout"]
  params = _params(config, 20.0)
  denoise = models.make_denoise(config)
  sampler = ST.StreamingSampler.for_model(config, gen_length=16, window=4, entropy_threshold=1.0,
                                          exclude_mask_token=True)
  prompt, mask = _prompts(config, (5, 3, 6))
  excluded = ST.stream_generate(sampler, denoise, params, prompt, mask, jax.random.key(0))
  common = np.bincount(np.asarray(excluded.generated_BG).ravel()).argmax()
  kernel = params["lm_head"]["kernel"]
  params["lm_head"]["kernel"] = kernel.at[:, config.mask_token_id].set(1.5 * kernel[:, common])
  raw = ST.stream_generate(sampler.replace(exclude_mask_token=False), denoise, params, prompt,
                           mask, jax.random.key(0))
  plain = ST.stream_generate(sampler.replace(exclude_mask_token=False, prefix_cache=False),
                             denoise, params, prompt, mask, jax.random.key(0))
  assert (np.asarray(raw.generated_BG) == config.mask_token_id).sum() > 2
  np.testing.assert_array_equal(raw.tokens_BL, plain.tokens_BL)
  np.testing.assert_array_equal(raw.nfe_B, plain.nfe_B)
  still_excluded = ST.stream_generate(sampler, denoise, params, prompt, mask, jax.random.key(0))
  np.testing.assert_array_equal(still_excluded.tokens_BL, excluded.tokens_BL)


def test_bf16_checkpoint_scores_in_float32():
  """With bfloat16 weights and activations the decoder's logits are float32 (the LM head
  accumulates in float32) and the entropies it scores positions by are computed in float32 from
  them: equal to a float64 entropy of those logits to 1e-5, where an entropy in bfloat16
  arithmetic on bfloat16-rounded logits (Tencent's dtype for a bf16 checkpoint) is off by more
  than 1e-3. (The first step of the decoder: its forward, then its selection.)"""
  config = CONFIGS["wedlm_8b_layout"].replace(dtype="bfloat16", param_dtype="bfloat16")
  params = models.cast_params(_params(CONFIGS["wedlm_8b_layout"], 8.0), jnp.bfloat16)
  denoise = models.make_denoise(config)
  sampler = ST.StreamingSampler.for_model(config, gen_length=4, window=2)
  prompt, mask = _prompts(config, (6, 4, 5, 6), seed=7)

  @jax.jit
  def first_step(params):
    inputs = ST._Inputs(params, jnp.asarray(prompt), jnp.asarray(mask),
                        jax.random.split(jax.random.key(0), 4))
    state = ST._initial_state(sampler, denoise, inputs)
    slots = jnp.concatenate([state.windows_KBW] * 2, -1)
    logits, _ = ST._forward(sampler, denoise, inputs, state.cache, state.gen_BG,
                            state.committed_B, slots, jnp.zeros((4, 4), bool))
    window_logits = logits[0, :, :2]
    return window_logits, ST.select_fill(sampler, window_logits, jnp.ones((4, 2), bool))[1]

  logits, score = first_step(params)
  assert logits.dtype == jnp.float32 and score.dtype == jnp.float32
  wide = np.asarray(logits, np.float64)
  p = np.exp(wide - np.logaddexp.reduce(wide, axis=-1, keepdims=True))
  entropy = -np.sum(p * np.log(p), axis=-1)
  np.testing.assert_allclose(-np.asarray(score), entropy + np.array([0.0, 0.02]), atol=1e-5)
  log_p16 = jax.nn.log_softmax(jnp.asarray(wide, jnp.bfloat16), axis=-1)
  entropy16 = -jnp.sum(jnp.exp(log_p16) * log_p16, axis=-1, dtype=jnp.bfloat16)
  assert np.abs(np.asarray(entropy16, np.float64) - entropy).max() > 1e-3
  out = ST.stream_generate(sampler, denoise, params, prompt, mask, jax.random.key(0))
  assert (np.asarray(out.commit_step_BG) >= 0).all()  # the bf16 decode runs to the end


def test_errors():
  config = CONFIGS["wedlm_8b_layout"]
  params = _params(config, 1.0)
  with pytest.raises(ValueError, match="entropy_threshold must be > 0"):
    ST.StreamingSampler(gen_length=4, mask_token_id=1, entropy_threshold=0.0)
  with pytest.raises(ValueError, match="leave IMH.positions at its default"):
    ST.StreamingSampler(gen_length=4, mask_token_id=1, imh=IMH(positions=remasking.LowConfidence()))
  with pytest.raises(ValueError, match="leave temperature, top_p and top_k unset"):
    ST.StreamingSampler(gen_length=4, mask_token_id=1, imh=IMH(), temperature=0.5)
  sampler = ST.StreamingSampler.for_model(config, gen_length=120, window=16)
  prompt = np.ones((1, 4), np.int32)
  with pytest.raises(ValueError, match=r"prompt length 4 \+ gen_length 120 \+ 2 x window 16"):
    ST.stream_generate(sampler, models.make_denoise(config), params, prompt, prompt > 0,
                       jax.random.key(0))
  llada = models.llada_tiny()
  with pytest.raises(ValueError, match="needs a WeDLM model"):
    ST.stream_generate(sampler.replace(gen_length=8), models.make_denoise(llada),
                       models.init_params(llada), prompt, prompt > 0, jax.random.key(0))


def test_experiment_settings_build_the_streaming_sampler():
  from dllm_jax.eval import experiment, runner
  config = CONFIGS["wedlm_8b_layout"]
  fields = dict(gen_length=32, block_length=None, steps=None, temperature=None, top_p=None,
                top_k=None, cfg_scale=0.0, forbid_eos=False, eos_confidence_inf=False)
  rule = dict(name="wedlm_streaming", alpha=2.0, num_candidates=4)
  sampler = experiment.streaming_sampler(config, rule, fields, "linear", "none",
                                         {"window": 8, "entropy_threshold": 0.0,
                                          "position_penalty": None})
  assert sampler == ST.StreamingSampler.for_model(config, gen_length=32, window=8,
                                                  entropy_threshold=None)
  assert not runner.can_sample(sampler)
  imh = experiment.streaming_sampler(config, {**rule, "name": "wedlm_streaming_imh"}, fields,
                                     "linear", "none", {"entropy_threshold": 0.3})
  assert imh.imh == IMH(alpha=2.0, num_candidates=4) and imh.entropy_threshold == 0.3
  assert runner.can_sample(imh)
  with pytest.raises(ValueError, match=r"does not take \['block_length', 'cache'\]"):
    experiment.streaming_sampler(config, rule, {**fields, "block_length": 8}, "linear", "dual", {})
  with pytest.raises(ValueError, match="needs a WeDLM checkpoint"):
    experiment.streaming_sampler(models.llada_tiny(), rule, fields, "linear", "none", {})


def test_benchmark_run_with_streaming_decoding(shared_data, tmp_path):
  """experiments/run.py's path: a tiny WeDLM checkpoint, two problems, wedlm_streaming."""
  import json
  from dllm_jax import checkpoint
  from dllm_jax.eval import experiment, runner
  from tests.experiment_fixtures import SPECIAL, build_tokenizer
  tokenizer = build_tokenizer(shared_data)
  ids = {token: tokenizer.token_to_id(token) for token in SPECIAL}
  config = models.wedlm_tiny(vocab_size=tokenizer.get_vocab_size(), max_length=512,
                             pad_token_id=ids["<pad>"], eos_token_id=ids["<|endoftext|>"],
                             mask_token_id=ids["<|mdm_mask|>"], eot_token_id=ids["<|eot_id|>"])
  ckpt = tmp_path / "ckpt"
  checkpoint.save(ckpt, models.init_params(config, seed=0), config, overwrite=True)
  (ckpt / "tokenizer").mkdir()
  tokenizer.save(str(ckpt / "tokenizer" / "tokenizer.json"))
  (ckpt / "tokenizer" / "tokenizer_config.json").write_text(json.dumps(
      {"pad_token": "<pad>", "eos_token": "<|endoftext|>", "mask_token": "<|mdm_mask|>"}))
  checkpoint.update_checksums(ckpt)  # the tokenizer files are checked too
  fields = dict(gen_length=16, block_length=None, steps=None, temperature=None, top_p=None,
                top_k=None, cfg_scale=0.0, forbid_eos=False, eos_confidence_inf=False)
  experiment.run_benchmark(
      checkpoint_dir=ckpt, tokenizer_dir=None, benchmark="math500", data_path=str(shared_data),
      limit=2, chat_template="none", mesh_spec="data=-1,model=1",
      output_dir=str(tmp_path / "out"), n_samples=1, batch_size=8, seed=0, allow_greedy=False,
      rule=dict(name="wedlm_streaming", alg_temp=0.0, threshold=0.9, alpha=2.0,
                num_candidates=4, imh_positions="random"),
      sampler_fields=fields, streaming={"window": 4, "entropy_threshold": 0.0,
                                        "position_penalty": None}, progress=False,
      stop_strings=("Question",))
  records = runner.read_results(tmp_path / "out")
  assert json.loads((tmp_path / "out" / "config.json").read_text())["stop_strings"] == ["Question"]
  assert len(records) == 2
  # one token per step: a forward per token (and one first), fewer if EOS came early
  assert all(2 <= r["nfe"] <= 2 * 16 + 1 for r in records), [r["nfe"] for r in records]
