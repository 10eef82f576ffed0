"""Converted LLaDA2.x and SDAR checkpoints against PyTorch references at float32.

LLaDA2.x: the reference is tests/torch_ref/llada2_torch.py, a PyTorch reimplementation written for
these tests and checked against inclusionAI's official `modeling_llada2_moe.py` /
`modeling_llada21_moe.py` (fetched, not committed; no PyPI package ships them): logits within
1e-6 x max|logit| and identical chosen experts on tiny random configs (see its docstring).
SDAR: the reference is `transformers`' own Qwen3ForCausalLM given the block-causal 4-D mask.

Measured here: LLaDA2 max|err| 4.5e-6 at max|logit| 3.9 (1.1e-6 relative) over unpadded and
left-padded rows, a block against cached finished blocks 2.6e-6, chosen experts identical in
every MoE layer and row; SDAR 4.1e-6 at max|logit| 4.0.
"""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from dllm_jax import checkpoint
from dllm_jax.models import make_denoise
from dllm_jax.models.model import _graphdef
from tests import llada2_fixtures as lf
from tests.torch_ref import llada2_torch

TOLERANCE = 1e-4  # max |jax - torch| <= TOLERANCE * max |logit|


def _torch_model(cfg, tensors):
  model = llada2_torch.LLaDA2(cfg)
  state = {k: torch.from_numpy(v) for k, v in tensors.items()}
  missing, unexpected = model.load_state_dict(state, strict=True), None
  del missing, unexpected
  return model.eval()


def _torch_logits(model, tokens, valid, block):
  """Each row run unpadded (its real tokens only, positions 0..), scattered back."""
  out, chosen_rows = np.zeros(tokens.shape + (model.cfg["vocab_size"],), np.float32), []
  for b in range(tokens.shape[0]):
    real = np.flatnonzero(valid[b])
    t = torch.as_tensor(tokens[b, real])[None]
    pos = torch.arange(len(real))[None]
    vis = llada2_torch.block_causal(pos, torch.ones_like(t, dtype=torch.bool), block)
    logits, chosen = model(t, pos, vis)
    out[b, real] = logits[0].numpy()
    chosen_rows.append([c[0].numpy() for c in chosen])
  return out, chosen_rows


def _canvases(config, seed):
  """Three rows of 24: unpadded, left-padded by 5 and by 10, masks scattered in each."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, config.mask_token_id, size=(3, 24))
  tokens[rng.random((3, 24)) < 0.4] = config.mask_token_id
  valid = np.ones_like(tokens, bool)
  for row, n in ((1, 5), (2, 10)):
    tokens[row, :n], valid[row, :n] = config.pad_token_id, False
  return tokens, valid


def _jax_routing(config, params, tokens, valid):
  """The experts each MoE layer of the JAX model picks, layer by layer (Block.__call__'s steps)."""
  model = nnx.merge(_graphdef(config), params)
  mask = jnp.asarray(valid)
  positions = model.positions(mask)
  attn_mask = model.attention_mask(jnp.asarray(tokens), mask)
  x = model.embed(jnp.asarray(tokens))
  chosen = []
  for i, layer in enumerate(model.layers):
    q, k, v = layer.attn.project(layer.attn_norm(x), positions)
    h = x + layer.attn.attend(q, k, v, attn_mask)
    n = layer.mlp_norm(h)
    if config.is_moe_layer(i):
      chosen.append(np.asarray(layer.mlp.route(n.reshape(-1, n.shape[-1]))[0]).reshape(
          tokens.shape + (-1,)))
    x = h + layer.mlp(n)
  return chosen


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("llada2")
  cfg = lf.llada2_hf_config(layers=3)
  tensors = lf.llada2_tensors(cfg, seed=5)
  from tests import hf_fixtures as fx  # pylint: disable=import-outside-toplevel
  fx.write_checkpoint(tmp / "hf", cfg, tensors, num_shards=3)
  config = checkpoint.convert_hf(tmp / "hf", tmp / "jax")
  assert config.attention_block == 32  # LLaDA2's default block, for a config.json without one
  params, _ = checkpoint.load(tmp / "jax")
  return cfg, tensors, config.replace(attention_block=4), params


def test_llada2_logits_and_routing_match_the_reference(converted):
  cfg, tensors, config, params = converted
  assert config.family == "llada2_moe" and config.dense_layers == 1 and config.rotary_dim == 8
  tokens, valid = _canvases(config, seed=3)
  want, want_chosen = _torch_logits(_torch_model(cfg, tensors), tokens, valid,
                                    config.attention_block)
  got = np.asarray(make_denoise(config)(params, tokens, valid))
  err, scale = np.abs(got - want)[valid].max(), np.abs(want[valid]).max()
  print(f"llada2 (unpadded and left-padded rows): max|err| {err:.3g}, max|logit| {scale:.3g}")
  assert err <= TOLERANCE * scale
  got_chosen = _jax_routing(config, params, tokens, valid)
  assert len(got_chosen) == 2
  for layer, chosen in enumerate(got_chosen):
    for b in range(3):
      real = np.flatnonzero(valid[b])
      np.testing.assert_array_equal(np.sort(chosen[b, real], -1),
                                    np.sort(want_chosen[b][layer], -1))
  # Block-causal attention matters: bidirectional attention is a different function.
  bidir = np.asarray(make_denoise(config.replace(attention_block=0))(params, tokens, valid))
  assert np.abs(bidir - want)[valid].max() > 100 * TOLERANCE * scale


def test_llada2_block_against_cached_finished_blocks(converted):
  """Block 3 (positions 12..15) recomputed against the cache of a forward over blocks 0..2 gives
  the reference's logits of a full forward, in a left-padded row too (its blocks counted from its
  first real token; padding 4 = one whole block)."""
  cfg, tensors, config, params = converted
  tokens, valid = _canvases(config, seed=4)
  valid[1, :5], valid[1, 5:] = False, True
  valid[2, :4], valid[2, 4:] = False, True
  tokens[~valid] = config.pad_token_id
  want, _ = _torch_logits(_torch_model(cfg, tensors), tokens, valid, config.attention_block)
  denoise = make_denoise(config)
  prefix = tokens.copy()
  prefix[:, 16:] = config.mask_token_id  # later blocks hold anything: they are never seen
  _, cache = denoise.with_cache(params, prefix, valid)
  for start in (16, 20):
    got, _ = denoise.window_with_cache(params, cache, tokens, valid, start, 4)
    rows = [0, 2]  # rows whose blocks start at multiples of 4 (row 1's padding is 5)
    err = np.abs(np.asarray(got)[rows] - want[rows, start:start + 4]).max()
    scale = np.abs(want[rows, start:start + 4]).max()
    print(f"llada2 block at {start} from the cache: max|err| {err:.3g}")
    assert err <= TOLERANCE * scale
    # The cache passed in holds keys/values of masks at positions >= 16; block 4 must read the
    # true ones of block 3, so write block 3's fresh keys/values first.
    _, cache = denoise.window_with_cache(params, cache, tokens, valid, start, 4)


def test_sdar_logits_match_qwen3_with_a_block_causal_mask(tmp_path):
  cfg = lf.sdar_hf_config()
  tensors = lf.sdar_tensors(cfg, seed=6)
  from tests import hf_fixtures as fx  # pylint: disable=import-outside-toplevel
  fx.write_checkpoint(tmp_path / "hf", cfg, tensors, num_shards=2)
  config = checkpoint.convert_hf(tmp_path / "hf", tmp_path / "jax")
  assert config.family == "sdar" and config.attention_block == 4 and config.qk_norm
  params, _ = checkpoint.load(tmp_path / "jax")
  tokens, valid = _canvases(config, seed=7)
  model = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(
      hidden_size=cfg["hidden_size"], intermediate_size=cfg["intermediate_size"],
      num_hidden_layers=cfg["num_hidden_layers"], num_attention_heads=cfg["num_attention_heads"],
      num_key_value_heads=cfg["num_key_value_heads"], head_dim=cfg["head_dim"],
      vocab_size=cfg["vocab_size"], rms_norm_eps=cfg["rms_norm_eps"], attention_bias=False,
      tie_word_embeddings=False, attn_implementation="eager",
      rope_parameters={"rope_type": "default", "rope_theta": cfg["rope_theta"]}))
  model.load_state_dict({k: torch.from_numpy(v) for k, v in tensors.items()}, strict=False)
  positions = np.where(valid, np.cumsum(valid, 1) - 1, 1)
  visible = llada2_torch.block_causal(torch.as_tensor(positions), torch.as_tensor(valid), 4)
  additive = torch.zeros(visible.shape).masked_fill(~visible, torch.finfo(torch.float32).min)
  with torch.no_grad():
    want = model.eval()(input_ids=torch.as_tensor(tokens),
                        position_ids=torch.as_tensor(positions),
                        attention_mask=additive[:, None]).logits.float().numpy()
  got = np.asarray(make_denoise(config)(params, tokens, valid))
  err, scale = np.abs(got - want)[valid].max(), np.abs(want[valid]).max()
  print(f"sdar: max|err| {err:.3g}, max|logit| {scale:.3g}")
  assert err <= TOLERANCE * scale
