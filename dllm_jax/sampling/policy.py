"""The unmasking policy network of Jazbec, Olausson et al. (2025): one logit per position.

Inputs per position of the decoded window (W positions): the dLLM's top-1 probability c (masked
or not), a mask bit m, and the normalised step count t = steps taken / gen_length (one per row).

  x    = Linear(1 -> D)(c)                                     [B, W, D]
  cond = Embed(2, D)(m) + MLP(sinusoidal(t))                    [B, W, D]
  one DiT block: adaLN(cond) gives shift/scale/gate for attention and for the MLP;
    x += gate1 * Attention(LN(x) * (1 + scale1) + shift1)       bidirectional, RoPE
    x += gate2 * MLP(LN(x) * (1 + scale2) + shift2)             GELU
  logit = Linear(D -> 1)(LayerNorm(x))                          [B, W]

"Smart init": the adaLN projection is zero (the block starts as the identity) and the output
bias is negative, so every position starts with a small unmasking probability.
Defaults: D = 128, 2 heads, MLP 512: 330,753 parameters. `params` is a nested dict of arrays
(`nnx.to_pure_dict`), passed as a jit argument like the dLLM's.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import safetensors
import safetensors.numpy
from flax import nnx

from dllm_jax.models.transformer import rotary_embedding

PolicyParams = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class PolicyConfig:
  width: int = 128
  num_heads: int = 2
  mlp_width: int = 512
  time_features: int = 128   # sinusoidal features of t
  time_scale: float = 1000.0  # t in [0, 1] is scaled like a DiT timestep
  output_bias: float = -2.0
  rope_theta: float = 10_000.0

  def __post_init__(self):
    if self.width % (2 * self.num_heads):
      raise ValueError(f"PolicyConfig.width ({self.width}) must be a multiple of 2 * num_heads "
                       f"({2 * self.num_heads}) for RoPE")
    if self.time_features % 2:
      raise ValueError(f"PolicyConfig.time_features must be even, got {self.time_features}")


def sinusoidal(t_B: jax.Array, features: int, scale: float) -> jax.Array:
  """[cos, sin] features of `scale * t` at geometrically spaced frequencies: [B, features]."""
  half = features // 2
  freqs = jnp.exp(-math.log(10_000.0) * jnp.arange(half, dtype=jnp.float32) / half)
  args_BF = scale * t_B.astype(jnp.float32)[:, None] * freqs[None]
  return jnp.concatenate([jnp.cos(args_BF), jnp.sin(args_BF)], axis=-1)


class ConfidencePolicy(nnx.Module):
  """The policy network (see the module docstring)."""

  def __init__(self, config: PolicyConfig, *, rngs: nnx.Rngs):
    D, F = config.width, config.mlp_width
    zeros = nnx.initializers.zeros_init()
    self.config = config
    self.embed_confidence = nnx.Linear(1, D, rngs=rngs)
    self.embed_mask = nnx.Embed(2, D, rngs=rngs)
    self.time_in = nnx.Linear(config.time_features, D, rngs=rngs)
    self.time_out = nnx.Linear(D, D, rngs=rngs)
    self.modulation = nnx.Linear(D, 6 * D, kernel_init=zeros, bias_init=zeros, rngs=rngs)
    norm = lambda: nnx.LayerNorm(D, epsilon=1e-6, use_scale=False, use_bias=False, rngs=rngs)
    self.attn_norm, self.mlp_norm = norm(), norm()
    self.qkv = nnx.Linear(D, 3 * D, rngs=rngs)
    self.attn_out = nnx.Linear(D, D, rngs=rngs)
    self.mlp_in = nnx.Linear(D, F, rngs=rngs)
    self.mlp_out = nnx.Linear(F, D, rngs=rngs)
    self.final_norm = nnx.LayerNorm(D, epsilon=1e-6, rngs=rngs)
    self.head = nnx.Linear(D, 1, bias_init=nnx.initializers.constant(config.output_bias),
                           rngs=rngs)

  def _attention(self, x_BWD: jax.Array) -> jax.Array:
    c = self.config
    B, W, D = x_BWD.shape
    H = D // c.num_heads
    q_BWNH, k_BWNH, v_BWNH = jnp.split(self.qkv(x_BWD).reshape(B, W, 3 * c.num_heads, H), 3,
                                       axis=2)
    positions_BW = jnp.broadcast_to(jnp.arange(W), (B, W))
    q_BWNH = rotary_embedding(q_BWNH, positions_BW, c.rope_theta)
    k_BWNH = rotary_embedding(k_BWNH, positions_BW, c.rope_theta)
    scores_BNWW = jnp.einsum("bqnh,bknh->bnqk", q_BWNH, k_BWNH) / math.sqrt(H)
    out_BWNH = jnp.einsum("bnqk,bknh->bqnh", jax.nn.softmax(scores_BNWW, axis=-1), v_BWNH)
    return self.attn_out(out_BWNH.reshape(B, W, D))

  def __call__(self, confidence_BW: jax.Array, masked_BW: jax.Array, t_B: jax.Array
               ) -> jax.Array:
    c = self.config
    x_BWD = self.embed_confidence(confidence_BW.astype(jnp.float32)[..., None])
    time_BD = self.time_out(jax.nn.silu(self.time_in(sinusoidal(t_B, c.time_features,
                                                                 c.time_scale))))
    cond_BWD = self.embed_mask(masked_BW.astype(jnp.int32)) + time_BD[:, None]
    shift1, scale1, gate1, shift2, scale2, gate2 = jnp.split(
        self.modulation(jax.nn.silu(cond_BWD)), 6, axis=-1)
    h_BWD = self.attn_norm(x_BWD) * (1 + scale1) + shift1
    x_BWD = x_BWD + gate1 * self._attention(h_BWD)
    h_BWD = self.mlp_norm(x_BWD) * (1 + scale2) + shift2
    x_BWD = x_BWD + gate2 * self.mlp_out(jax.nn.gelu(self.mlp_in(h_BWD)))
    return self.head(self.final_norm(x_BWD))[..., 0]


@functools.lru_cache(maxsize=None)
def _graphdef(config: PolicyConfig) -> nnx.GraphDef:
  return nnx.split(nnx.eval_shape(lambda: ConfidencePolicy(config, rngs=nnx.Rngs(0))))[0]


def init_policy(config: PolicyConfig = PolicyConfig(), seed: int = 0) -> PolicyParams:
  return nnx.to_pure_dict(nnx.split(ConfidencePolicy(config, rngs=nnx.Rngs(seed)))[1])


def policy_logits(config: PolicyConfig, params: PolicyParams, confidence_BW: jax.Array,
                  masked_BW: jax.Array, t_B: jax.Array) -> jax.Array:
  """The policy's logits [B, W] as a pure function of its params."""
  return nnx.merge(_graphdef(config), params)(confidence_BW, masked_BW, t_B)


def param_count(params: PolicyParams) -> int:
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(params))


def save_params(path: str | pathlib.Path, params: PolicyParams,
                metadata: dict[str, Any] | None = None) -> None:
  """Writes policy params as one safetensors file (keys "module.leaf"), about 1.3 MB, with
  `metadata` (JSON values: the decoding it was trained for and how, see `read_metadata`)."""
  flat = {f"{module}.{leaf}": np.asarray(value) for module, leaves in params.items()
          for leaf, value in leaves.items()}
  text = {k: json.dumps(v) for k, v in (metadata or {}).items()}
  safetensors.numpy.save_file(flat, str(path), metadata=text or None)


def read_metadata(path: str | pathlib.Path) -> dict[str, Any]:
  """The metadata a policy file was saved with ({} for files without): `gen_length` (canvas
  length) and `block_length` it was trained for, its `temperature`, and the training settings."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"no policy weights at {path}")
  try:
    with safetensors.safe_open(str(path), "numpy") as f:
      raw = f.metadata() or {}
  except Exception as e:  # safetensors raises its own error types for damaged files
    raise ValueError(f"{path} is not a readable safetensors file ({e}); re-export the policy") \
        from None
  try:
    return {k: json.loads(v) for k, v in raw.items()}
  except json.JSONDecodeError:
    raise ValueError(f"{path}: its metadata is not JSON; re-export the policy") from None


def check_fits(path: str | pathlib.Path, gen_length: int, block_length: int) -> dict[str, Any]:
  """The file's metadata, after checking that it was trained for this canvas and block length
  (one-line ValueError otherwise); a file without those fields is refused too."""
  metadata = read_metadata(path)
  want = {"gen_length": gen_length, "block_length": block_length}
  if any(k not in metadata for k in want):
    raise ValueError(f"{path} does not record the gen_length and block_length it was trained "
                     "for; re-export it with sampling.save_policy_params(..., metadata=...)")
  differ = [f"{k} {metadata[k]} (decoding uses {v})" for k, v in want.items() if metadata[k] != v]
  if differ:
    raise ValueError(f"{path} was trained for {', '.join(differ)}; set --gen_length="
                     f"{metadata['gen_length']} --block_length={metadata['block_length']} or "
                     "train a policy for this decoding")
  return metadata


def load_params(path: str | pathlib.Path, config: PolicyConfig = PolicyConfig()) -> PolicyParams:
  """Reads a `save_params` file, checking every name and shape against `config`'s network."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"no policy weights at {path}")
  try:
    flat = safetensors.numpy.load_file(str(path))
  except Exception as e:  # safetensors raises its own error types for damaged files
    raise ValueError(f"{path} is not a readable safetensors file ({e}); re-export the policy") \
        from None
  expected = init_policy(config)
  want = {f"{m}.{leaf}": v.shape for m, leaves in expected.items() for leaf, v in leaves.items()}
  missing, extra = sorted(set(want) - set(flat)), sorted(set(flat) - set(want))
  if missing or extra:
    raise ValueError(f"{path} does not match PolicyConfig {config}: missing {missing[:3]}, "
                     f"unexpected {extra[:3]}")
  for name, shape in want.items():
    if flat[name].shape != shape or flat[name].dtype != np.float32:
      raise ValueError(f"{path}: {name} is {flat[name].dtype}{list(flat[name].shape)}, "
                       f"expected float32{list(shape)}")
  return {m: {leaf: jnp.asarray(flat[f"{m}.{leaf}"]) for leaf in leaves}
          for m, leaves in expected.items()}
