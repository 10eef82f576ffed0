"""Model configs: presets, parameter counts, HF config parsing and its errors."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dllm_jax import models
from dllm_jax.models import config as config_lib
from tests import hf_fixtures as fx


def test_llada_8b_parameter_count():
  assert models.param_count(models.abstract_params(models.llada_8b())) == 8_015_581_184


def test_dream_7b_parameter_count_matches_its_config():
  c = dict(hidden=3584, layers=28, heads=28, kv_heads=4, head_dim=128, mlp=18944, vocab=152064)
  kv = c["kv_heads"] * c["head_dim"]
  per_layer = (c["hidden"] * c["hidden"] + c["hidden"]            # q_proj weight + bias
               + 2 * (c["hidden"] * kv + kv)                      # k_proj, v_proj weight + bias
               + c["hidden"] * c["hidden"]                        # o_proj (no bias)
               + 3 * c["hidden"] * c["mlp"]                       # gate, up, down
               + 2 * c["hidden"])                                 # two RMSNorm scales
  expected = c["layers"] * per_layer + 2 * c["vocab"] * c["hidden"] + c["hidden"]
  assert models.param_count(models.abstract_params(models.dream_7b())) == expected


def test_abstract_params_allocate_nothing():
  abstract = models.abstract_params(models.llada_8b(param_dtype="bfloat16"))
  leaves = jax.tree.leaves(abstract)
  assert all(isinstance(leaf, jax.ShapeDtypeStruct) for leaf in leaves)
  assert {leaf.dtype for leaf in leaves} == {jnp.dtype("bfloat16")}


def _write(tmp_path, fields):
  path = tmp_path / "config.json"
  path.write_text(json.dumps(fields))
  return path


def test_from_hf_config_reads_both_families(tmp_path):
  llada = models.from_hf_config(_write(tmp_path, fx.llada_hf_config()))
  assert llada == models.llada_tiny(eot_token_id=None, bos_token_id=None)
  dream = models.from_hf_config(_write(tmp_path, fx.dream_hf_config()), dtype="bfloat16")
  assert dream == models.dream_tiny(eot_token_id=None, dtype="bfloat16")


def test_released_llada_config_gives_the_preset(tmp_path):
  released = fx.llada_hf_config(d_model=4096, n_layers=32, n_heads=32, n_kv_heads=32,
                                mlp_hidden=12288, vocab=126464, mask_id=126336, eos_id=126081,
                                max_len=4096)
  assert models.from_hf_config(_write(tmp_path, released)) == models.llada_8b()


def test_to_hf_config_round_trips():
  for config in (models.llada_tiny(), models.dream_tiny(), models.llada_8b(), models.dream_7b()):
    fields = config_lib.to_hf_config(config)
    parsed = (config_lib._llada_from_hf if config.family == "llada"
              else config_lib._dream_from_hf)(fields, "x")
    assert parsed == config


@pytest.mark.parametrize("change,message", [
    ({"model_type": "bert"}, "unknown model_type 'bert'"),
    ({"d_model": 65}, "d_model=65 is not divisible by n_heads=4"),
    ({"n_kv_heads": 3}, r"num_heads \(4\) must be a multiple of num_kv_heads \(3\)"),
    ({"weight_tying": True}, "weight_tying=True is not supported"),
    ({"block_type": "sequential"}, "block_type='sequential' is not supported"),
    ({"mask_token_id": 999}, r"mask_token_id=999 is outside the vocabulary \[0, 256\)"),
    ({"n_layers": None}, "required field 'n_layers' is missing"),
])
def test_bad_llada_configs(tmp_path, change, message):
  with pytest.raises(ValueError, match=message):
    models.from_hf_config(_write(tmp_path, {**fx.llada_hf_config(), **change}))


@pytest.mark.parametrize("change,message", [
    ({"tie_word_embeddings": True}, "tie_word_embeddings=True is not supported"),
    ({"rope_scaling": {"type": "yarn"}}, "rope_scaling=.* is not supported"),
    ({"num_attention_heads": 5}, "hidden_size=64 is not divisible by num_attention_heads=5"),
])
def test_bad_dream_configs(tmp_path, change, message):
  with pytest.raises(ValueError, match=message):
    models.from_hf_config(_write(tmp_path, {**fx.dream_hf_config(), **change}))


def test_missing_or_invalid_config_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="no config.json"):
    models.from_hf_config(tmp_path)
  (tmp_path / "config.json").write_text("{oops")
  with pytest.raises(ValueError, match="not valid JSON"):
    models.from_hf_config(tmp_path)


def test_dtype_policy():
  """bf16 params and compute still return float32 logits close to the float32 model's."""
  config = models.llada_tiny()
  params = models.init_params(config, seed=1)
  tokens = jnp.arange(12)[None] % 200
  mask = jnp.ones_like(tokens, bool)
  full = models.make_denoise(config)(params, tokens, mask)
  low_config = config.replace(dtype="bfloat16", param_dtype="bfloat16")
  low = models.make_denoise(low_config)(models.cast_params(params, jnp.bfloat16), tokens, mask)
  assert full.dtype == low.dtype == jnp.float32
  np.testing.assert_allclose(low, full, atol=0.05 * float(jnp.abs(full).max()))
  assert not np.array_equal(np.asarray(low), np.asarray(full))
