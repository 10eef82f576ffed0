"""LLaDA2.x (MoE) and SDAR in the shared transformer: routing against a plain loop, both expert
kernels (tiled, ragged_dot) against the dense oracle, preset sizes, config parsing, the
converter's round trip and bad input, expert sharding, and the README's memory table."""

import json
import re

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx

from dllm_jax import checkpoint, sharding
from dllm_jax import models
from dllm_jax.models import safetensors_io
from dllm_jax.models.config import from_hf_config
from dllm_jax.models.moe import MoE, capacity_rows, group_limited_top_k, tile_rows
from dllm_jax.models.safetensors_io import CheckpointError
from tests import hf_fixtures as fx
from tests import llada2_fixtures as lf
from tests.conftest import REPO_ROOT


def _loop_routing(scores, bias, k, groups, keep, scale):
  """The router written as plain Python over one token at a time."""
  chosen, weights = [], []
  for s in scores:
    biased = s + bias
    size = len(s) // groups
    group_score = [sum(sorted(biased[g * size:(g + 1) * size])[-2:]) for g in range(groups)]
    kept = sorted(range(groups), key=lambda g: -group_score[g])[:keep]
    candidates = [e for g in kept for e in range(g * size, (g + 1) * size)]
    top = sorted(candidates, key=lambda e: -biased[e])[:k]
    w = np.array([s[e] for e in top])
    chosen.append(sorted(top))
    weights.append(dict(zip(top, w / w.sum() * scale)))
  return chosen, weights


def test_routing_matches_a_plain_loop_and_the_layer_matches_dense():
  config = models.llada2_tiny(num_experts=16, expert_groups=4, groups_per_token=2,
                              experts_per_token=3)
  layer = MoE(config, rngs=nnx.Rngs(3))
  layer.expert_bias[...] = jax.random.normal(jax.random.key(1), (16,)) * 0.3
  x = jax.random.normal(jax.random.key(2), (40, config.hidden_size))
  chosen, weights = layer.route(x)
  logits = np.asarray(x, np.float64) @ np.asarray(layer.router[...], np.float64)
  scores = 1 / (1 + np.exp(-logits))
  want_chosen, want_weights = _loop_routing(scores, np.asarray(layer.expert_bias[...]), 3, 4, 2,
                                            config.routed_scaling)
  np.testing.assert_array_equal(np.sort(np.asarray(chosen), -1), want_chosen)
  for t in range(40):
    for j, e in enumerate(np.asarray(chosen[t])):
      np.testing.assert_allclose(float(weights[t, j]), want_weights[t][e], rtol=1e-5)
  # The bias changes choices (so the test above sees it), never the weights' source.
  unbiased = group_limited_top_k(jnp.asarray(scores, jnp.float32), 3, 4, 2)
  assert (np.sort(np.asarray(unbiased), -1) != np.asarray(want_chosen)).any()
  dense, auto = jax.jit(lambda x: (layer(x, path="dense"), layer(x)))(x[None])
  np.testing.assert_allclose(np.asarray(auto), np.asarray(dense), atol=1e-5, rtol=1e-5)


def test_group_limited_top_k_breaks_ties_to_the_lower_index():
  """Scores on a coarse grid (many equal group scores and equal entries): the chosen experts
  equal a plain loop that ranks groups, then experts, by score and then by lower index."""
  rng = np.random.default_rng(4)
  scores = np.round(rng.uniform(0, 1, (300, 32)) * 4) / 4
  got = np.asarray(jax.jit(group_limited_top_k, static_argnums=(1, 2, 3))(
      jnp.asarray(scores, jnp.float32), 4, 8, 3))
  for t, s in enumerate(scores):
    group_score = [sum(sorted(s[g * 4:(g + 1) * 4])[-2:]) for g in range(8)]
    kept = sorted(range(8), key=lambda g: (-group_score[g], g))[:3]
    candidates = [e for e in range(32) if e // 4 in kept]
    np.testing.assert_array_equal(got[t], sorted(candidates, key=lambda e: (-s[e], e))[:4])


def _routing(kind, T, E, K, rng):
  """Chosen experts [T, K] (distinct per token) with a given group-size pattern."""
  if kind == "uneven":  # a few crowded experts, many with zero or one row
    p = np.r_[np.full(3, 10.0), np.ones(E - 3)] / (30 + E - 3)
    return np.stack([rng.choice(E, K, replace=False, p=p) for _ in range(T)])
  if kind == "one expert":  # every row on expert 5 (a grouped-matmul case routing never makes)
    return np.full((T, K), 5)
  if kind == "three experts":  # every token on the same three experts, the rest empty
    return np.tile([E - 1, 0, 7], (T, 1))
  return np.stack([rng.choice(E, K, replace=False) for _ in range(T)])


# (tile, capacity) of the CPU kernel: loop only; batched only for small groups; both, with the
# capacity below, equal to and above group sizes and tiles that overrun the groups.
_TILED = ((1, 0), (3, 0), (64, 0), (8, 1), (3, 2), (4, 8), (1, 23), (2, 64))


@pytest.fixture(scope="module")
def all_expert_paths():
  """One compiled function per routing shape: every expert path on a given routing."""
  config = models.llada2_tiny(num_experts=16, expert_groups=4, groups_per_token=2,
                              experts_per_token=3)
  layer = MoE(config, rngs=nnx.Rngs(5))

  @jax.jit
  def run(x, chosen, weights):
    out = {path: layer.experts(x, chosen, weights, path)
           for path in ("dense", "ragged_dot", "tiled", "auto")}
    for tile, capacity in _TILED:
      experts_tiled = layer._experts_tiled  # pylint: disable=protected-access
      out[f"tile {tile} capacity {capacity}"] = experts_tiled(x, chosen, weights, tile, capacity)
    return out
  return config, run


@pytest.mark.parametrize("kind", ["uniform", "uneven", "one expert", "three experts"])
def test_tiled_and_ragged_paths_match_the_dense_oracle(kind, all_expert_paths):
  """Both grouped-matmul paths == every expert on every token (float32, 1e-5), for group sizes
  from empty to all tokens, with every split of rows between the CPU kernel's batched matmul
  and its loop."""
  config, run = all_expert_paths
  rng = np.random.default_rng(0)
  T = 23
  chosen = jnp.asarray(_routing(kind, T, 16, 3, rng), jnp.int32)
  weights = jnp.asarray(rng.uniform(0.1, 1.0, chosen.shape), jnp.float32)
  out = {k: np.asarray(v) for k, v in
         run(jax.random.normal(jax.random.key(6), (T, config.hidden_size)), chosen,
             weights).items()}
  assert np.abs(out["dense"]).max() > 1e-3
  for path in ("ragged_dot", "tiled") + tuple(f"tile {t} capacity {c}" for t, c in _TILED):
    np.testing.assert_allclose(out[path], out["dense"], atol=1e-5, rtol=1e-5, err_msg=str(path))
  # On CPU "auto" compiles the tiled kernel (bit for bit; ragged_dot rounds differently).
  np.testing.assert_array_equal(out["auto"], out["tiled"])


def test_tile_and_capacity_sizes():
  assert tile_rows(256 * 8, 256) == 8 and tile_rows(40, 256) == 1 and tile_rows(10**6, 8) == 64
  # Mean group 1 to 16: twice the tile in the batched matmul; else the loop only.
  assert capacity_rows(512 * 8, 256) == 32 and capacity_rows(32 * 8, 256) == 2
  assert capacity_rows(31 * 8, 256) == 0 and capacity_rows(1024 * 8, 256) == 0


def test_unknown_expert_path_is_refused():
  layer = nnx.eval_shape(lambda: MoE(models.llada2_tiny(), rngs=nnx.Rngs(0)))
  with pytest.raises(ValueError, match="experts path 'fast' is unknown; use 'auto', 'tiled'"):
    layer(jnp.zeros((1, 2, layer.config.hidden_size)), path="fast")


def _independent_count(c):
  """Parameters of a LLaDA2 config counted from the released layout, not from the model."""
  D, H = c.hidden_size, c.head_dim
  attention = D * (c.num_heads + 2 * c.num_kv_heads) * H + c.num_heads * H * D + 2 * H + 2 * D
  dense_mlp = 3 * D * c.mlp_hidden_size
  moe = (c.num_experts * 3 * D * c.expert_hidden_size + D * c.num_experts + c.num_experts
         + 3 * D * c.expert_hidden_size * c.num_shared_experts)
  layers = c.num_layers * attention + c.dense_layers * dense_mlp + (
      c.num_layers - c.dense_layers) * moe
  return layers + 2 * c.vocab_size * D + D


@pytest.mark.parametrize("preset,billions", [(models.llada2_mini, 16.26),
                                             (models.llada2_flash, 102.89)])
def test_preset_parameter_counts(preset, billions):
  config = preset()
  count = models.param_count(models.abstract_params(config))
  assert count == _independent_count(config)
  assert round(count / 1e9, 2) == billions


def _write(tmp_path, cfg=None, tensors=None, shards=2, dtype=np.float32):
  cfg = cfg or lf.llada2_hf_config()
  tensors = tensors or {k: v.astype(dtype) for k, v in lf.llada2_tensors(cfg, seed=1).items()}
  fx.write_checkpoint(tmp_path / "hf", cfg, tensors, num_shards=shards)
  return cfg, tensors


@pytest.mark.parametrize("dtype,shards", [(np.float32, 3), (ml_dtypes.bfloat16, 1)])
def test_round_trip_is_bit_exact(tmp_path, dtype, shards):
  cfg, tensors = _write(tmp_path, shards=shards, dtype=dtype)
  (tmp_path / "hf" / "tokenizer.json").write_text("{}")
  (tmp_path / "hf" / "tokenizer_config.json").write_text('{"chat_template": "{{ x }}"}')
  config = checkpoint.convert_hf(tmp_path / "hf", tmp_path / "jax", buffer_bytes=10_000)
  assert sorted(p.name for p in (tmp_path / "jax" / "tokenizer").iterdir()) == [
      "tokenizer.json", "tokenizer_config.json"]
  params, _ = checkpoint.load(tmp_path / "jax")
  assert params["layers"][1]["mlp"]["gate_kernel"].shape == (8, 32, 16)
  checkpoint.export_hf(tmp_path / "jax", tmp_path / "back", max_shard_bytes=30_000)
  infos = safetensors_io.scan_checkpoint(tmp_path / "back")
  assert sorted(infos) == sorted(tensors)
  for key, want in tensors.items():
    got = safetensors_io.read_tensor(key, infos[key])
    assert got.dtype == want.dtype and got.tobytes() == want.tobytes(), key
  assert checkpoint.convert_hf(tmp_path / "back", tmp_path / "jax2") == config


def test_missing_expert_and_misshapen_fused_qkv_are_named(tmp_path):
  cfg = lf.llada2_hf_config()
  tensors = lf.llada2_tensors(cfg)
  del tensors["model.layers.1.mlp.experts.5.up_proj.weight"]
  tensors["model.layers.0.attention.query_key_value.weight"] = np.zeros((60, 32), np.float32)
  _write(tmp_path, cfg, tensors)
  with pytest.raises(CheckpointError) as error:
    checkpoint.convert_hf(tmp_path / "hf", tmp_path / "jax")
  text = str(error.value)
  assert "model.layers.1.mlp.experts.5.up_proj.weight" in text
  assert "query_key_value.weight: shape [60, 32], expected [128, 32]" in text
  assert not (tmp_path / "jax").exists()


@pytest.mark.parametrize("change,message", [
    ({"some_new_field": 1}, "unknown llada2_moe config fields ['some_new_field']"),
    ({"score_function": "softmax"}, "score_function='softmax' is not supported"),
    ({"num_shared_experts": 0}, "num_shared_experts=0 is not supported"),
    ({"tie_word_embeddings": True}, "tie_word_embeddings=True is not supported"),
    ({"num_experts": 6}, "num_experts (6) must split into expert_groups (4)"),
])
def test_unsupported_config_fields_are_refused(tmp_path, change, message):
  path = tmp_path / "config.json"
  path.write_text(json.dumps({**lf.llada2_hf_config(), **change}))
  with pytest.raises(ValueError) as error:
    from_hf_config(path)
  assert message in str(error.value)


def test_released_config_fields_parse(tmp_path):
  """The LLaDA2.0-mini config.json's fields (as published) give the mini preset."""
  released = {
      "architectures": ["LLaDA2MoeModelLM"], "model_type": "llada2_moe", "dtype": "bfloat16",
      "first_k_dense_replace": 1, "head_dim": 128, "hidden_act": "silu", "hidden_size": 2048,
      "initializer_range": 0.02, "intermediate_size": 5120, "max_position_embeddings": 32768,
      "moe_intermediate_size": 512, "moe_router_enable_expert_bias": True, "n_group": 8,
      "norm_head": False, "norm_topk_prob": True, "num_attention_heads": 16,
      "num_experts": 256, "num_experts_per_tok": 8, "num_hidden_layers": 20,
      "num_key_value_heads": 4, "num_shared_experts": 1, "output_router_logits": False,
      "pad_token_id": 156892, "partial_rotary_factor": 0.5, "rms_norm_eps": 1e-06,
      "rope_theta": 600000, "routed_scaling_factor": 2.5, "score_function": "sigmoid",
      "tie_word_embeddings": False, "topk_group": 4, "use_qk_norm": True, "use_bias": False,
      "use_qkv_bias": False, "vocab_size": 157184}
  path = tmp_path / "config.json"
  path.write_text(json.dumps(released))
  assert from_hf_config(path) == models.llada2_mini()


def test_sdar_config(tmp_path):
  path = tmp_path / "config.json"
  path.write_text(json.dumps(lf.sdar_hf_config()))
  config = from_hf_config(path)
  assert (config.family, config.attention_block, config.qk_norm) == ("sdar", 4, True)
  assert not config.topological_causal
  path.write_text(json.dumps({**lf.sdar_hf_config(), "num_experts": 128}))
  with pytest.raises(ValueError, match="SDAR MoE"):
    from_hf_config(path)


@pytest.mark.parametrize("mesh_shape", [(1, 8), (2, 4)])
def test_sharded_experts_equal_unsharded(mesh_shape):
  config = models.llada2_tiny()
  params = models.init_params(config, seed=4)
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, 150, (4, 12)).astype(np.int32)
  mask = np.ones_like(tokens, bool)
  mask[1, :3] = False
  denoise = jax.jit(models.make_denoise(config))
  want = np.asarray(denoise(params, tokens, mask))
  mesh = sharding.make_mesh(*mesh_shape)
  specs = sharding.param_specs(config, mesh)
  assert specs["layers"][1]["mlp"]["gate_kernel"] == jax.sharding.PartitionSpec("model", None,
                                                                                None)
  placed = sharding.shard_params(params, config, mesh)
  tokens_s, mask_s = sharding.shard_batch(mesh, tokens, mask)
  with jax.set_mesh(mesh):
    got = np.asarray(denoise(placed, tokens_s, mask_s))
  np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("model_size", [1, 8, 16, 32])
def test_readme_memory_table(model_size):
  readme = (REPO_ROOT / "README.md").read_text()
  table = readme[readme.index("| model axis | LLaDA2.0-mini"):]
  row = re.search(rf"^\| {model_size} \| ([\d.]+) GiB[^|]*\| ([\d.]+) GiB", table, re.M)
  for preset, shown in ((models.llada2_mini, row.group(1)), (models.llada2_flash, row.group(2))):
    config = preset(param_dtype="bfloat16", dtype="bfloat16")
    assert f"{sharding.param_bytes_per_device(config, model_size) / 2**30:.2f}" == shown
