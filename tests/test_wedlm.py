"""WeDLM: the topological reordering against a hand-made one, parameter counts, config.json
parsing, and the converter on WeDLM checkpoints (sharded, bit-exact back, bad input)."""

import json

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from absl import logging
from flax import nnx

from dllm_jax import checkpoint, models
from dllm_jax.models import config as config_lib
from dllm_jax.models.transformer import Transformer
from tests import hf_fixtures as fx
from tests.test_checkpoint import _convert_fails, _read_all

TINY = {"8b": models.wedlm_tiny(), "7b": models.wedlm_7b_tiny()}


def _canvases(config, seed=0):
  """Three left-padded rows of 20 with masks scattered among observed tokens."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, config.mask_token_id, (3, 20)).astype(np.int32)
  tokens[rng.random(tokens.shape) < 0.45] = config.mask_token_id
  valid = np.ones_like(tokens, bool)
  for row, n in ((1, 4), (2, 9)):
    tokens[row, :n], valid[row, :n] = config.pad_token_id, False
  return tokens, valid


def _physical_logits(config, params, tokens, valid):
  """The reordering done by hand: permute each row (padding, observed, masks; each group in
  logical order), run the model's own blocks with a plain causal mask and the logical positions,
  and scatter the logits back."""
  graphdef, state = nnx.split(Transformer(config, rngs=nnx.Rngs(0)))
  nnx.replace_by_pure_dict(state, params)
  model = nnx.merge(graphdef, state)
  B, L = tokens.shape
  is_mask = tokens == config.mask_token_id
  perm = np.stack([np.concatenate([np.flatnonzero(~valid[b]),
                                   np.flatnonzero(valid[b] & ~is_mask[b]),
                                   np.flatnonzero(valid[b] & is_mask[b])]) for b in range(B)])
  rows = np.arange(B)[:, None]
  positions = np.where(valid, np.cumsum(valid, axis=1) - 1, 1)[rows, perm]
  causal_BLL = np.tril(np.ones((L, L), bool))[None] & valid[rows, perm][:, None, :]
  causal_BLL |= np.eye(L, dtype=bool)[None]  # padded query rows see themselves, not nothing
  x = model.embed(jnp.asarray(tokens[rows, perm]))
  for layer in model.layers:
    x, _ = layer(x, jnp.asarray(positions), jnp.asarray(causal_BLL))
  physical = np.asarray(model.lm_head(model.final_norm(x)))
  logical = np.empty_like(physical)
  logical[rows, perm] = physical
  return logical


@pytest.mark.parametrize("variant", ["8b", "7b"])
def test_logits_equal_the_hand_made_reordering(variant):
  config = TINY[variant]
  params = models.init_params(config, seed=3)
  params = jax.tree.map(lambda x: x * 6.0 if x.ndim == 2 else x + 0.3, params)  # non-trivial
  tokens, valid = _canvases(config)
  got = np.asarray(models.make_denoise(config)(params, tokens, valid))
  want = _physical_logits(config, params, tokens, valid)
  masked = valid & (tokens == config.mask_token_id)
  scale = np.abs(want[valid]).max()
  np.testing.assert_allclose(got[masked], want[masked], atol=1e-5 * scale, rtol=0)
  np.testing.assert_allclose(got[valid], want[valid], atol=1e-5 * scale, rtol=0)
  # Without the permutation (causal in logical order) the masked slots' logits differ.
  identity = _physical_logits(config, params, np.where(masked, 0, tokens), valid)
  assert np.abs(identity - want)[masked].max() > 1e-2 * scale


@pytest.mark.parametrize("variant", ["8b", "7b"])
def test_all_observed_canvas_is_a_plain_causal_lm(variant):
  """No masks: the topological order is the logical one, so a token's logits depend only on the
  tokens before it (changing a later token changes nothing before it)."""
  config = TINY[variant]
  params = models.init_params(config, seed=4)
  tokens, valid = _canvases(config, seed=1)
  tokens = np.where(tokens == config.mask_token_id, 5, tokens)
  denoise = models.make_denoise(config)
  got = np.asarray(denoise(params, tokens, valid))
  want = _physical_logits(config, params, tokens, valid)  # the identity permutation here
  np.testing.assert_allclose(got[valid], want[valid], atol=1e-5 * np.abs(want).max(), rtol=0)
  later = tokens.copy()
  later[:, 15:] = (later[:, 15:] + 1) % config.mask_token_id
  changed = np.asarray(denoise(params, later, valid))
  np.testing.assert_array_equal(changed[:, :15], got[:, :15])
  assert not np.allclose(changed[:, 15:], got[:, 15:])


def _count(c):
  """Parameters of a Qwen3 / Qwen2.5-layout model, written out from the architecture."""
  attn = (c.hidden_size * c.num_heads * c.head_dim           # q_proj
          + 2 * c.hidden_size * c.num_kv_heads * c.head_dim  # k_proj, v_proj
          + c.num_heads * c.head_dim * c.hidden_size)        # o_proj
  if c.qkv_bias:
    attn += c.num_heads * c.head_dim + 2 * c.num_kv_heads * c.head_dim
  if c.qk_norm:
    attn += 2 * c.head_dim
  mlp = 3 * c.hidden_size * c.mlp_hidden_size
  per_layer = attn + mlp + 2 * c.hidden_size  # + input / post-attention norms
  return c.num_layers * per_layer + 2 * c.vocab_size * c.hidden_size + c.hidden_size


@pytest.mark.parametrize("preset", ["wedlm_8b", "wedlm_7b", "wedlm_tiny", "wedlm_7b_tiny"])
def test_param_counts(preset):
  config = models.PRESETS[preset]()
  assert models.param_count(models.abstract_params(config)) == _count(config)


def test_preset_shapes():
  big, small = models.wedlm_8b(), models.wedlm_7b()
  assert (big.hidden_size, big.num_layers, big.num_heads, big.num_kv_heads, big.head_dim,
          big.mlp_hidden_size, big.vocab_size) == (4096, 36, 32, 8, 128, 12288, 151936)
  assert big.qk_norm and not big.qkv_bias and big.rope_theta == 1e6 and big.norm_eps == 1e-6
  assert (small.hidden_size, small.num_layers, small.num_heads, small.num_kv_heads) == (
      3584, 28, 28, 4)
  assert small.qkv_bias and not small.qk_norm
  assert _count(big) == 8_190_735_360 and _count(small) == 7_615_616_512
  assert big.mask_token_id == small.mask_token_id == 151665
  tiny = models.wedlm_tiny()
  assert tiny.head_dim * tiny.num_heads != tiny.hidden_size  # the head_dim trap


# ---------------------------------------------------------------------------------------------
# config.json

RELEASED_8B = {  # the fields of WeDLM-8B-Instruct's config.json (DESIGN.md §11)
    "architectures": ["WeDLMForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": 151643, "eos_token_id": 151643, "head_dim": 128, "hidden_act": "silu",
    "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 12288,
    "mask_token_id": None, "max_position_embeddings": 16384, "max_window_layers": 36,
    "model_type": "wedlm", "num_attention_heads": 32, "num_hidden_layers": 36,
    "num_key_value_heads": 8, "qk_norm": True, "rms_norm_eps": 1e-06, "rope_scaling": None,
    "rope_theta": 1000000, "sliding_window": None, "tie_word_embeddings": False,
    "torch_dtype": "bfloat16", "use_cache": True, "use_sliding_window": False,
    "vocab_size": 151936,
}


def _from(tmp_path, fields, **changes):
  (tmp_path / "config.json").write_text(json.dumps(fields))
  return models.from_hf_config(tmp_path, **changes)


def test_released_config_reads_as_the_preset_with_the_default_mask_id(tmp_path, monkeypatch):
  warnings = []
  monkeypatch.setattr(logging, "warning", lambda msg, *args: warnings.append(msg % args))
  config = _from(tmp_path, RELEASED_8B)
  assert config == models.wedlm_8b(bos_token_id=151643)
  assert config.mask_token_id == 151665 and config.eot_token_id == 151645
  assert len(warnings) == 1 and "mask_token_id is null; using 151665" in warnings[0]


def test_qwen3_config_is_read_as_wedlm(tmp_path):
  """A Qwen3 config.json (no qk_norm / mask fields: q/k norm always on, default mask id)."""
  fields = {k: v for k, v in RELEASED_8B.items() if k not in ("qk_norm", "mask_token_id")}
  config = _from(tmp_path, {**fields, "model_type": "qwen3", "max_position_embeddings": 40960,
                            "layer_types": ["full_attention"] * 36})
  assert config == models.wedlm_8b(bos_token_id=151643, max_length=40960)


def test_transformers_v5_rope_parameters(tmp_path):
  fields = {k: v for k, v in RELEASED_8B.items() if k != "rope_theta"}
  config = _from(tmp_path, {**fields, "rope_parameters": {"rope_type": "default",
                                                          "rope_theta": 5e5}})
  assert config.rope_theta == 5e5
  with pytest.raises(ValueError, match=r"rope_parameters .* \(only rope_type 'default'\)"):
    _from(tmp_path, {**fields, "rope_parameters": {"rope_type": "yarn", "factor": 4.0}})


@pytest.mark.parametrize("make", [models.wedlm_8b, models.wedlm_7b, models.wedlm_tiny,
                                  models.wedlm_7b_tiny,
                                  lambda: models.wedlm_tiny(param_dtype="bfloat16",
                                                            bos_token_id=283)])
def test_config_round_trip(tmp_path, make):
  config = make()
  (tmp_path / "config.json").write_text(json.dumps(config_lib.to_hf_config(config)))
  dtype = config.param_dtype
  assert models.from_hf_config(tmp_path, param_dtype=dtype, dtype=config.dtype) == config


@pytest.mark.parametrize("change,message", [
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, r"rope_scaling=.* not supported"),
    ({"use_sliding_window": True}, r"use_sliding_window=True is not supported"),
    ({"tie_word_embeddings": True}, r"tie_word_embeddings=True is not supported"),
    ({"hidden_act": "gelu"}, r"hidden_act='gelu' is not supported"),
    ({"layer_types": ["full_attention", "sliding_attention"]},
     r"layer_types \['full_attention', 'sliding_attention'\] are not supported"),
    ({"model_type": "qwen3", "qk_norm": False}, r"qk_norm=False is not supported"),
    ({"vocab_size": 320}, r"mask_token_id is null and the default 151665 is outside the "
                          r"vocabulary of 320; set mask_token_id"),
    ({"head_dim": None, "hidden_size": 4100}, r"hidden_size=4100 is not divisible by "
                                              r"num_attention_heads=32 and no head_dim"),
    ({"num_hidden_layers": None}, r"required field 'num_hidden_layers' is missing"),
    ({"num_key_value_heads": 5}, r"num_heads \(32\) must be a multiple of num_kv_heads \(5\)"),
])
def test_bad_configs_are_rejected(tmp_path, change, message):
  with pytest.raises(ValueError, match=message):
    _from(tmp_path, {**RELEASED_8B, **change})


# ---------------------------------------------------------------------------------------------
# Converter


@pytest.mark.parametrize("variant,dtype,shards", [("8b", np.float32, 3),
                                                  ("8b", ml_dtypes.bfloat16, 4),
                                                  ("7b", np.float32, 2)])
def test_sharded_checkpoint_round_trip_is_bit_exact(tmp_path, variant, dtype, shards):
  cfg = fx.wedlm_hf_config(variant)
  tensors = fx.random_tensors(cfg, seed=6, dtype=dtype)
  fx.write_checkpoint(tmp_path / "hf", cfg, tensors, num_shards=shards)
  assert (tmp_path / "hf" / "model.safetensors.index.json").is_file()
  (tmp_path / "hf" / "tokenizer_config.json").write_text('{"chat_template": "{{ x }}"}')
  (tmp_path / "hf" / "tokenizer.json").write_text("{}")
  config = checkpoint.convert_hf(tmp_path / "hf", tmp_path / "jax", buffer_bytes=20_000)
  assert config.family == "wedlm" and config.head_dim == (16 if variant == "8b" else 12)
  assert sorted(p.name for p in (tmp_path / "jax" / "tokenizer").iterdir()) == [
      "tokenizer.json", "tokenizer_config.json"]
  params, _ = checkpoint.load(tmp_path / "jax")
  if variant == "8b":
    np.testing.assert_array_equal(
        np.asarray(params["layers"][1]["attn"]["k_norm"]["scale"], np.float32),
        tensors["model.layers.1.self_attn.k_norm.weight"].astype(np.float32))
  files = checkpoint.export_hf(tmp_path / "jax", tmp_path / "back", max_shard_bytes=30_000)
  assert len(files) > 1
  back = _read_all(tmp_path / "back")
  assert sorted(back) == sorted(tensors)
  for key, want in tensors.items():
    assert back[key].dtype == want.dtype and back[key].shape == want.shape, key
    assert back[key].tobytes() == want.tobytes(), key
  exported = json.loads((tmp_path / "back" / "config.json").read_text())
  assert exported["model_type"] == "wedlm" and exported["qk_norm"] == (variant == "8b")
  assert checkpoint.convert_hf(tmp_path / "back", tmp_path / "jax2") == config


def _write(tmp_path, variant, edit):
  cfg = fx.wedlm_hf_config(variant)
  tensors = fx.random_tensors(cfg)
  edit(cfg, tensors)
  fx.write_checkpoint(tmp_path / "hf", cfg, tensors, num_shards=3)


def test_missing_q_norm(tmp_path):
  _write(tmp_path, "8b", lambda cfg, t: t.pop("model.layers.1.self_attn.q_norm.weight"))
  _convert_fails(tmp_path, r"missing tensors: model\.layers\.1\.self_attn\.q_norm\.weight")


def test_missing_bias(tmp_path):
  _write(tmp_path, "7b", lambda cfg, t: t.pop("model.layers.0.self_attn.v_proj.bias"))
  _convert_fails(tmp_path, r"missing tensors: model\.layers\.0\.self_attn\.v_proj\.bias")


def test_norms_present_but_config_says_no_qk_norm(tmp_path):
  _write(tmp_path, "8b", lambda cfg, t: cfg.update(qk_norm=False))
  _convert_fails(tmp_path, r"unexpected tensors: model\.layers\.0\.self_attn\.k_norm\.weight")


def test_extra_tensor(tmp_path):
  _write(tmp_path, "8b", lambda cfg, t: t.update(
      {"model.layers.0.self_attn.rotary_emb.inv_freq": np.ones(8, np.float32)}))
  _convert_fails(tmp_path, r"unexpected tensors: model\.layers\.0\.self_attn\.rotary_emb")


def test_q_norm_of_hidden_over_heads_width_has_the_wrong_shape(tmp_path):
  """A norm of width hidden / heads (12) instead of head_dim (16)."""
  _write(tmp_path, "8b", lambda cfg, t: t.update(
      {"model.layers.0.self_attn.q_norm.weight": np.ones(12, np.float32)}))
  _convert_fails(tmp_path, r"layers\.0\.self_attn\.q_norm\.weight: shape \[12\], expected \[16\]")


def test_wrong_dtype(tmp_path):
  _write(tmp_path, "7b", lambda cfg, t: t.update(
      {"model.layers.1.self_attn.q_proj.bias": np.ones(48, np.int32)}))
  _convert_fails(tmp_path, r"layers\.1\.self_attn\.q_proj\.bias: dtype I32, expected a floating")


def test_null_mask_id_with_a_small_vocabulary(tmp_path):
  _write(tmp_path, "8b", lambda cfg, t: cfg.update(mask_token_id=None))
  _convert_fails(tmp_path, r"mask_token_id is null and the default 151665 is outside")
