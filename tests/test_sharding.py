"""Sharded decoding on 8 fake CPU devices equals single-device decoding, for every sampler."""

import json
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from dllm_jax import models
from dllm_jax import sampling as S
from dllm_jax import sharding
from tests.conftest import REPO_ROOT

assert jax.device_count() == 8, "tests/conftest.py sets 8 fake CPU devices"

# 8 query/kv heads and vocab 512 so that every mesh below splits heads, MLP and vocabulary.
CONFIG = models.llada_tiny(num_heads=8, num_kv_heads=8, head_dim=8, vocab_size=512,
                           mask_token_id=500, eos_token_id=501, pad_token_id=501,
                           eot_token_id=502, bos_token_id=503)
PARAMS = models.init_params(CONFIG, seed=1)
_MODEL = models.make_denoise(CONFIG)


def DENOISE(params, tokens, mask):
  """The random model with 8x logits: a flat random model ranks positions by differences
  (e.g. of entropy) that are as small as float32 reduction-order noise."""
  return 8.0 * _MODEL(params, tokens, mask)

MESHES = [(8, 1), (1, 8), (2, 4), (4, 2)]
RULES = [
    (S.LowConfidence(), 0.0),
    (S.LowConfidence(), 0.7),
    (S.Random(), 1.0),
    (S.MaskGitPlus(alg_temp=0.3), 0.8),
    (S.TopKMargin(), 0.8),
    (S.Entropy(), 0.8),
    (S.DreamOrigin(), 0.8),
    (S.Threshold(0.01), 0.5),
    (S.IMH(alpha=2.0, num_candidates=3), None),
]


def _prompts():
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, 400, (8, 6)).astype(np.int32)
  mask = np.ones_like(tokens, bool)
  mask[1::2, :2] = False  # some left padding
  tokens[~mask] = CONFIG.pad_token_id
  return tokens, mask


def _sampler(rule, temperature):
  steps = None if isinstance(rule, S.Threshold) else 8
  kw = {} if temperature is None else {"temperature": temperature}
  return S.Sampler.for_model(CONFIG, gen_length=8, block_length=4, steps=steps, remasking=rule,
                             **kw)


@pytest.mark.parametrize("rule,temperature", RULES, ids=lambda x: repr(x)[:24])
def test_sharded_equals_single_device(rule, temperature):
  sampler = _sampler(rule, temperature)
  prompt, mask = _prompts()
  keys = jax.random.split(jax.random.key(0), 8)
  single = S.generate(sampler, DENOISE, PARAMS, prompt, mask, keys)
  for shape in MESHES:
    mesh = sharding.make_mesh(*shape)
    params = sharding.shard_params(PARAMS, CONFIG, mesh)
    placed = sharding.shard_batch(mesh, prompt, mask, keys)
    with jax.set_mesh(mesh):
      out = S.generate(sampler, DENOISE, params, *placed)
    np.testing.assert_array_equal(out.tokens_BL, single.tokens_BL, err_msg=f"mesh {shape}")
    np.testing.assert_array_equal(out.nfe_B, single.nfe_B)
    if shape[0] > 1:
      assert out.tokens_BL.sharding.spec[0] == sharding.DATA


# The model itself with 8x logits (the LM head scaled by 8: exactly 8x, as above), so that the
# block caches' `with_cache` / `window` / `suffix_window` methods are the model's own.
SHARP_PARAMS = {**PARAMS, "lm_head": {"kernel": 8.0 * PARAMS["lm_head"]["kernel"]}}


BLOCK_CACHE_CASES = [(mode, rule_index) for rule_index in (1, 7) for mode in ("dual", "prefix")]


@pytest.fixture(scope="module")
def block_cache_results():
  """Every case of the test below, checked in one process of its own: once, in the full suite
  (after hundreds of other programs), XLA's CPU compiler died with a segmentation fault compiling
  these programs; alone they pass. One process for the four cases, not one each: they share
  the single-device programs, and each process start costs seconds."""
  code = ("import json, traceback; from tests.test_sharding import BLOCK_CACHE_CASES, "
          "block_cache_check\nresults = {}\nfor mode, rule in BLOCK_CACHE_CASES:\n"
          "  try:\n    block_cache_check(mode, rule); results[f'{mode}-{rule}'] = 'ok'\n"
          "  except Exception:\n    results[f'{mode}-{rule}'] = traceback.format_exc()\n"
          "print('RESULTS ' + json.dumps(results))")
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                        text=True, timeout=1200, check=False)
  lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULTS ")]
  assert proc.returncode == 0 and lines, (proc.stdout + proc.stderr)[-4000:]
  return json.loads(lines[-1][len("RESULTS "):])


@pytest.mark.parametrize("mode,rule_index", BLOCK_CACHE_CASES,
                         ids=[f"{'lowconf' if i == 1 else 'threshold'}-{m}"
                              for m, i in BLOCK_CACHE_CASES])
def test_sharded_block_cache_equals_single_device(mode, rule_index, block_cache_results):
  result = block_cache_results[f"{mode}-{rule_index}"]
  assert result == "ok", result


def block_cache_check(mode: str, rule_index: int) -> None:
  rule, temperature = RULES[rule_index]
  sampler = _sampler(rule, temperature).replace(cache=S.BlockCache(mode))
  prompt, mask = _prompts()
  keys = jax.random.split(jax.random.key(0), 8)
  single = S.generate(sampler, _MODEL, SHARP_PARAMS, prompt, mask, keys)
  plain = S.generate(sampler.replace(cache=None), _MODEL, SHARP_PARAMS, prompt, mask, keys)
  assert not np.array_equal(single.logprob_BG, plain.logprob_BG)  # the cache was used
  for shape in MESHES:
    mesh = sharding.make_mesh(*shape)
    params = sharding.shard_params(SHARP_PARAMS, CONFIG, mesh)
    placed = sharding.shard_batch(mesh, prompt, mask, keys)
    with jax.set_mesh(mesh):
      out = S.generate(sampler, _MODEL, params, *placed)
    np.testing.assert_array_equal(out.tokens_BL, single.tokens_BL, err_msg=f"mesh {shape}")
    np.testing.assert_array_equal(out.nfe_B, single.nfe_B)


def test_parameter_shardings():
  mesh = sharding.make_mesh(2, 4)
  params = sharding.shard_params(PARAMS, CONFIG, mesh)
  layer = params["layers"][0]
  P = jax.sharding.PartitionSpec
  assert params["embed"]["embedding"].sharding.spec == P("model", None)
  assert params["lm_head"]["kernel"].sharding.spec == P(None, "model")
  assert layer["attn"]["q_proj"]["kernel"].sharding.spec == P(None, "model")
  assert layer["attn"]["o_proj"]["kernel"].sharding.spec == P("model", None)
  assert layer["mlp"]["gate_proj"]["kernel"].sharding.spec == P(None, "model")
  assert layer["mlp"]["down_proj"]["kernel"].sharding.spec == P("model", None)
  assert layer["attn_norm"]["scale"].sharding.spec == P()
  for model_size in (1, 2, 4, 8):
    mesh = sharding.make_mesh(8 // model_size, model_size)
    placed = sharding.shard_params(PARAMS, CONFIG, mesh)
    total = sum(x.nbytes for x in jax.tree.leaves(PARAMS))
    on_device0 = sum(s.data.nbytes for x in jax.tree.leaves(placed)
                     for s in x.addressable_shards if s.device == mesh.devices.flat[0])
    replicated = sum(x.nbytes for x in jax.tree.leaves(PARAMS) if x.ndim == 1)
    assert on_device0 == pytest.approx(total / model_size + replicated * (1 - 1 / model_size))
    assert on_device0 <= total / model_size * 1.05


def test_heads_that_do_not_divide_the_model_axis_are_replicated():
  config = models.dream_tiny()  # 4 query heads, 2 kv heads
  specs = sharding.param_specs(config, sharding.make_mesh(2, 4))
  attn = specs["layers"][0]["attn"]
  P = jax.sharding.PartitionSpec
  assert attn["q_proj"]["kernel"] == P(None, "model")
  assert attn["k_proj"]["kernel"] == P() and attn["k_proj"]["bias"] == P()


@pytest.mark.parametrize("rule,temperature", [RULES[1], RULES[-1]], ids=["lowconf", "imh"])
def test_vocab_sharded_logits_are_never_gathered(rule, temperature):
  """No collective in the compiled loop carries a vocabulary-sized dimension."""
  mesh = sharding.make_mesh(2, 4)
  params = sharding.shard_params(PARAMS, CONFIG, mesh)
  prompt, mask = _prompts()
  placed = sharding.shard_batch(mesh, prompt, mask, jax.random.split(jax.random.key(0), 8))
  with jax.set_mesh(mesh):
    hlo = S.generate.lower(_sampler(rule, temperature), DENOISE, params,
                           *placed).compile().as_text()
  shapes = re.findall(r"= (\w+\[[\d,]*\])\S* (?:all-gather|all-to-all|collective-permute)"
                      r"(?:-start)?\(", hlo)
  assert shapes, "expected some collectives on a (2, 4) mesh"
  for shape in shapes:
    dims = [int(d) for d in re.findall(r"\d+", shape.split("[")[1])]
    assert CONFIG.vocab_size not in dims, f"vocab-sized collective {shape}"


def test_batch_must_divide_the_data_axis():
  mesh = sharding.make_mesh(4, 2)
  with pytest.raises(ValueError, match=r"batch of 6 rows does not divide over the data axis"):
    sharding.shard_batch(mesh, np.zeros((6, 3)))
