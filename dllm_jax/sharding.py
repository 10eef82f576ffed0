"""Device meshes and partition specs for parameters and decoding inputs.

One two-axis mesh, ("data", "model"), for the whole codebase. Its axes are `AxisType.Auto`: the
model and the samplers are written once, without sharding annotations, and XLA's partitioner
propagates the placements given to parameters and inputs (plus a few constraints on activations).
Explicit axes would need `out_sharding=` on every contraction over a sharded dimension and
forbid mixed-sharding `where`/`concatenate`, i.e. a second code path through every module.

Parameters are split Megatron-style over "model": attention by heads (q/k/v columns, o rows),
the MLP by its hidden width, embedding and LM head by vocabulary. A dimension that the model axis
does not divide is replicated instead. Prompts x samples are split over "data".

Mixture-of-experts layers (LLaDA2.x) reuse the "model" axis for expert parallelism: the stacked
expert weights [E, ...] are split by expert, the router, expert bias and shared expert as the
dense MLP. A third mesh axis would only pay if experts and attention heads wanted different
degrees of parallelism; with 256 experts and 16-32 heads, every model-axis size a user picks for
the heads (1-16) also divides the experts, and one axis keeps one code path and one mesh.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from dllm_jax.models.config import ModelConfig
from dllm_jax.models.model import abstract_params

DATA, MODEL = "data", "model"


def make_mesh(data: int = -1, model: int = 1, devices: list[jax.Device] | None = None
              ) -> jax.sharding.Mesh:
  """A (data, model) mesh over `devices` (all by default); `data=-1` takes what model leaves."""
  devices = devices if devices is not None else jax.devices()
  if data == -1:
    if len(devices) % model:
      raise ValueError(f"model axis {model} does not divide the {len(devices)} devices")
    data = len(devices) // model
  if data * model != len(devices):
    raise ValueError(f"mesh {data}x{model} needs {data * model} devices, have {len(devices)}")
  return jax.make_mesh((data, model), (DATA, MODEL), devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,) * 2)


def _param_spec(path: tuple[Any, ...], shape: tuple[int, ...], config: ModelConfig,
                model_size: int) -> P:
  name = "/".join(str(p) for p in path if not isinstance(p, int))
  heads_split = config.num_heads % model_size == 0
  kv_split = config.num_kv_heads % model_size == 0
  rules = {
      "embed/embedding": P(MODEL, None),
      "attn/q_proj/kernel": P(None, MODEL) if heads_split else P(),
      "attn/q_proj/bias": P(MODEL) if heads_split else P(),
      "attn/k_proj/kernel": P(None, MODEL) if kv_split else P(),
      "attn/k_proj/bias": P(MODEL) if kv_split else P(),
      "attn/v_proj/kernel": P(None, MODEL) if kv_split else P(),
      "attn/v_proj/bias": P(MODEL) if kv_split else P(),
      "attn/o_proj/kernel": P(MODEL, None) if heads_split else P(),
      "attn/q_norm/scale": P(),  # WeDLM-8B: one [head_dim] scale shared by all heads
      "attn/k_norm/scale": P(),
      "mlp/gate_proj/kernel": P(None, MODEL),
      "mlp/up_proj/kernel": P(None, MODEL),
      "mlp/down_proj/kernel": P(MODEL, None),
      "lm_head/kernel": P(None, MODEL),
      # MoE (LLaDA2.x): experts split over the model axis (expert parallelism).
      "mlp/gate_kernel": P(MODEL, None, None),
      "mlp/up_kernel": P(MODEL, None, None),
      "mlp/down_kernel": P(MODEL, None, None),
      "mlp/router": P(),
      "mlp/expert_bias": P(),
      "mlp/shared/gate_proj/kernel": P(None, MODEL),
      "mlp/shared/up_proj/kernel": P(None, MODEL),
      "mlp/shared/down_proj/kernel": P(MODEL, None),
      "attn/o_proj/bias": P(),
  }
  key = name.removeprefix("layers/")
  spec = rules.get(key, P())
  for dim, axis in zip(shape, spec):
    if axis is not None and dim % model_size:
      return P()  # the model axis does not divide this dimension: replicate.
  return spec


def param_specs(config: ModelConfig, mesh: jax.sharding.Mesh) -> Any:
  """A PartitionSpec for every parameter of `config`."""
  model_size = mesh.shape[MODEL]
  return jax.tree_util.tree_map_with_path(
      lambda path, leaf: _param_spec(tuple(getattr(k, "key", getattr(k, "idx", k)) for k in path),
                                     leaf.shape, config, model_size),
      abstract_params(config))


def param_shardings(config: ModelConfig, mesh: jax.sharding.Mesh) -> Any:
  return jax.tree.map(lambda spec: NamedSharding(mesh, spec), param_specs(config, mesh),
                      is_leaf=lambda x: isinstance(x, P))


def place(array: Any, sharding: jax.sharding.Sharding) -> jax.Array:
  """A host array (the same on every process) as a global array on `sharding`; each process
  fills only its own devices' shards, so this also works across hosts."""
  if isinstance(array, jax.Array) and jax.dtypes.issubdtype(array.dtype, jax.dtypes.prng_key):
    return jax.random.wrap_key_data(place(jax.random.key_data(array), sharding))
  host = np.asarray(array)
  return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def shard_params(params: Any, config: ModelConfig, mesh: jax.sharding.Mesh) -> Any:
  """Places (or re-places) a parameter tree on its mesh partitioning."""
  return jax.tree.map(place, params, param_shardings(config, mesh))


def batch_sharding(mesh: jax.sharding.Mesh, ndim: int) -> NamedSharding:
  """Rows over "data", every other dimension replicated."""
  return NamedSharding(mesh, P(DATA, *[None] * (ndim - 1)))


def shard_batch(mesh: jax.sharding.Mesh, *arrays: Any) -> tuple[Any, ...]:
  """Places arrays whose leading dimension is the batch (prompts, masks, per-row keys)."""
  data = mesh.shape[DATA]
  placed = []
  for array in arrays:
    if array.shape[0] % data:
      raise ValueError(f"batch of {array.shape[0]} rows does not divide over the data axis "
                       f"({data}); pad the batch to a multiple of {data}")
    placed.append(place(array, batch_sharding(mesh, array.ndim)))
  return tuple(placed)


def param_bytes_per_device(config: ModelConfig, model_size: int) -> int:
  """Parameter bytes one device holds with a model axis of `model_size` (no devices needed)."""
  mesh = jax.sharding.AbstractMesh((1, model_size), (DATA, MODEL))
  abstract = abstract_params(config)
  total = 0
  for leaf, spec in zip(jax.tree.leaves(abstract),
                        jax.tree.leaves(param_specs(config, mesh),
                                        is_leaf=lambda x: isinstance(x, P))):
    split = model_size if MODEL in tuple(spec) else 1
    total += leaf.size * leaf.dtype.itemsize // split
  return total
