"""The compiled WeDLM streaming decoder against a line-by-line port of Tencent's decoding loop
(`wedlm_decoder_port.py`, one `transformers` Qwen3 / Qwen2 forward per step, recomputed from
scratch), on tiny random checkpoints in both layouts with a scaled-up LM head (entropies spread
over [0, log V], so thresholds, the position penalty and out-of-order fills all matter).

Greedy: the same tokens, the same forwards per row and the same fill step for every committed
token, for rows of different prompt lengths (one batch, left-padded) with a stop token that ends
rows at different steps. At temperature > 0: the same law of a draw (top-k, top-p, temperature
in Tencent's order). `python -m tests.torch_ref.wedlm_agreement` prints the agreement over the
full grid of issue 24 (W x tau x lambda x layout).
"""

from __future__ import annotations

import functools
import pathlib
import tempfile

import jax
import numpy as np
import pytest
import torch

from dllm_jax import checkpoint, models
from dllm_jax.sampling import streaming as ST
from tests import hf_fixtures as fx
from tests.torch_ref import wedlm_decoder_port as port
from tests.torch_ref.test_wedlm_parity import _reference_model

GEN_LENGTH = 24
PROMPT_LENGTHS = (7, 2, 5, 1)
HEAD_SCALE = 6.0  # logits ~ N(0, 36): entropies from ~0 to ~3 nats
torch.set_num_threads(1)  # tiny forwards: threads only contend


@functools.lru_cache(maxsize=None)
def setup(variant: str, head_scale: float = HEAD_SCALE, dtype: str = "float32"):
  """(converted params, config, torch model, prompts) of a tiny random checkpoint."""
  cfg = fx.wedlm_hf_config(variant)
  tensors = fx.random_tensors(cfg, seed=21 if variant == "8b" else 22)
  tensors["lm_head.weight"] = tensors["lm_head.weight"] * np.float32(head_scale)
  directory = pathlib.Path(tempfile.mkdtemp(prefix=f"wedlm_ref_{variant}_"))
  fx.write_checkpoint(directory / "hf", cfg, tensors)
  kwargs = {} if dtype == "float32" else dict(param_dtype=dtype, dtype=dtype)
  config = checkpoint.convert_hf(directory / "hf", directory / "jax", **kwargs)
  params, config = checkpoint.load(directory / "jax")
  model = _reference_model(cfg, tensors)
  rng = np.random.default_rng(3)
  prompts = [rng.integers(0, config.mask_token_id, n).tolist() for n in PROMPT_LENGTHS]
  return params, config, model, prompts


def left_padded(prompts, pad):
  P = max(len(p) for p in prompts)
  tokens = np.full((len(prompts), P), pad, np.int32)
  valid = np.zeros((len(prompts), P), bool)
  for row, p in enumerate(prompts):
    tokens[row, P - len(p):], valid[row, P - len(p):] = p, True
  return tokens, valid


@functools.lru_cache(maxsize=None)
def stop_token(variant: str) -> int:
  """A token that the model produces in the middle of some rows' greedy output but not of all
  (W = 4, one token per step), used as the stop token so that rows end at different steps."""
  _, config, model, prompts = setup(variant)
  settings = port.Settings(window=4, entropy_threshold=None, max_tokens=GEN_LENGTH)
  middles = [port.decode(model, p, config.mask_token_id, settings).tokens[2:GEN_LENGTH - 2]
             for p in prompts]
  rows_with = lambda t: sum(t in m for m in middles)
  candidates = [t for t in set(sum(middles, [])) if rows_with(t) < len(prompts)]
  return max(candidates, key=lambda t: (rows_with(t), sum(m.count(t) for m in middles), -t))


def compare(variant, window, tau, penalty, stop, decoder=ST.stream_generate):
  """Per row: (tokens equal, forwards equal, fill steps equal, agreeing token count), the
  reference's traces and the compiled output."""
  params, config, model, prompts = setup(variant)
  mask_id = config.mask_token_id
  settings = port.Settings(window=window, entropy_threshold=tau, position_penalty=penalty,
                           max_tokens=GEN_LENGTH, stop_token_ids=(stop,))
  traces = [port.decode(model, p, mask_id, settings) for p in prompts]
  sampler = ST.StreamingSampler(gen_length=GEN_LENGTH, mask_token_id=mask_id, window=window,
                                entropy_threshold=tau, position_penalty=penalty,
                                eos_token_id=stop)
  tokens, valid = left_padded(prompts, config.pad_token_id)
  out = decoder(sampler, models.make_denoise(config), params, tokens, valid, jax.random.key(0))
  generated, nfe = np.asarray(out.generated_BG), np.asarray(out.nfe_B)
  steps = np.asarray(out.commit_step_BG)
  rows = []
  for row, trace in enumerate(traces):
    n = len(trace.tokens)
    want = np.array(trace.tokens + [stop] * (GEN_LENGTH - n))
    rows.append(dict(tokens=bool((generated[row] == want).all()),
                     forwards=int(nfe[row]) == trace.forwards,
                     fill_steps=steps[row, :n].tolist() == trace.fill_step,
                     agree=int((generated[row] == want).sum()), length=n,
                     forwards_ref=trace.forwards, forwards_jax=int(nfe[row]),
                     max_fill=max(trace.fills_per_step or [0])))
  return rows


# Per layout, three settings that together take every value of issue 24's grid (W in {4, 8, 16},
# tau in {none, 0.3, 0.6}, lambda in {0, 0.02, 0.1}), paired differently in the two layouts
# (a compilation each). The full 27 x 2 grid: `python -m tests.torch_ref.wedlm_agreement`.
GRID = {"8b": [(4, None, 0.0), (8, 0.3, 0.1), (16, 0.6, 0.02)],
        "7b": [(4, 0.6, 0.1), (8, None, 0.02), (16, 0.3, 0.0)]}


@pytest.mark.parametrize("variant", ["8b", "7b"])
def test_greedy_decoding_equals_tencents_loop(variant):
  stop = stop_token(variant)
  lengths, fills = set(), set()
  for window, tau, penalty in GRID[variant]:
    rows = compare(variant, window, tau, penalty, stop)
    for row, r in enumerate(rows):
      setting = f"W={window} tau={tau} lambda={penalty} row {row}: {r}"
      assert r["tokens"], setting
      assert r["forwards"], setting
      assert r["fill_steps"], setting
      lengths.add(r["length"])
      fills.add(r["max_fill"])
  # the grid exercises what it claims: rows end at different lengths (stop token and
  # gen_length), and steps fill one and several positions
  assert len(lengths) > 2 and GEN_LENGTH in lengths, lengths
  assert 1 in fills and max(fills) > 2, fills


def test_sampled_token_follows_tencents_law():
  """One slot, many rows at temperature 0.7 with top-k 12 and top-p 0.8: the empirical law of
  the compiled decoder's draw is Tencent's (top-k, top-p on raw logits, then temperature) within
  the 99.9% quantile of exact draws, and tells apart the law with top-p after the temperature."""
  params, config, model, prompts = setup("8b", head_scale=1.5)
  settings = port.Settings(window=1, temperature=0.7, top_p=0.8, top_k=12, max_tokens=1)
  prompt = prompts[0]
  logits, _ = port.window_forward(model, prompt, [config.mask_token_id], [True])
  law = port.token_law(logits[0], settings).double().numpy()
  law /= law.sum()
  tempered = torch.softmax(logits[0] / 0.7, -1)
  law_after = port.apply_top_p(port.apply_top_k(torch.log(tempered), 12), 0.8)
  law_after = torch.softmax(law_after, -1).double().numpy()
  law_after /= law_after.sum()
  assert 0.5 * np.abs(law - law_after).sum() > 0.05  # the orders differ on this logit vector
  n = 4000
  sampler = ST.StreamingSampler(gen_length=1, mask_token_id=config.mask_token_id, window=1,
                                temperature=0.7, top_p=0.8, top_k=12)
  tokens = np.tile(np.array([prompt], np.int32), (n, 1))
  out = ST.stream_generate(sampler, models.make_denoise(config), params, tokens,
                           np.ones_like(tokens, bool), jax.random.key(0))
  counts = np.bincount(np.asarray(out.generated_BG)[:, 0], minlength=config.vocab_size)
  tv = lambda c, p: 0.5 * np.abs(c / n - p).sum()
  rng = np.random.default_rng(0)
  bound = np.quantile([tv(rng.multinomial(n, law), law) for _ in range(2000)], 0.999)
  assert tv(counts, law) < bound, (tv(counts, law), bound)
  assert tv(counts, law_after) > bound
  assert counts[law == 0].sum() == 0  # nothing outside Tencent's top-k / top-p set
