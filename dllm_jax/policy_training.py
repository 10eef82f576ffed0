"""Training a learned unmasking policy with GRPO, the dLLM frozen as the environment.

Per training step: `prompts_per_step` prompts, each decoded `group_size` times by the compiled
loop with the `LearnedPolicy` rule (one batch of P * G rows); each rollout is graded and rewarded

  reward = correct * ((L - NFE + 1) / L) ** alpha          (L = gen_length, NFE = its steps)

and its advantage is its reward minus its group's mean (no division by the std). Then
`iterations` optimiser steps on the clipped-ratio objective over the per-step Bernoulli
log-likelihoods the rollout recorded (`PolicyTrace`), averaged over each rollout's active steps:

  J = mean_rollouts [ sum_s active_s * min(r_s A, clip(r_s, 1 - eps, 1 + eps) A) / sum_s active_s ]
  r_s = exp(log pi_new(a_s | s_s) - log pi_rollout(a_s | s_s)),  loss = -J   (no KL term)

Options beyond the paper's recipe (all off by default): `entropy_coef` adds that multiple of the
mean Bernoulli entropy per masked position to J; `drop_zero_variance` averages J over the rollouts
of groups whose rewards differ (a group of equal rewards has zero advantage, so it only dilutes
the step); `imitate_threshold` = tau first trains the policy for `imitation_steps` steps to copy
Threshold(tau)'s decisions (unmask a masked position iff its top-1 probability >= tau) on states
of its own rollouts (binary cross-entropy, `imitation_iterations` Adam steps at
`imitation_learning_rate` per batch, decayed by a cosine with `imitation_cosine`), then runs GRPO
from there. The rollout policy temperature is the rule's (`LearnedPolicy.temperature`).

`train` saves {params, opt_state, step} with Orbax every `checkpoint_every` steps and resumes from
the latest; prompts and keys of step n depend on (seed, n) only, so a resumed run repeats an
uninterrupted one. Per step, `metrics.jsonl` gets reward, accuracy, NFE, the rollout policy's
mean Bernoulli entropy per masked position (nats), the fraction of groups with zero reward
variance, the gradient norm before clipping, loss, clip fraction and the step's wall seconds;
imitation steps go to `imitation.jsonl` (loss, agreement with Threshold's decisions, seconds).
`train_seconds(directory)` sums the steps' seconds, over resumptions.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import sys
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import tqdm
from jax.sharding import NamedSharding, PartitionSpec

from dllm_jax import checkpoint, models, sampling, sharding
from dllm_jax.data import jsonl, tokenize
from dllm_jax.data import prompts as prompts_lib
from dllm_jax.data.problems import Problem
from dllm_jax.data.tokenize import pad_left
from dllm_jax.eval import experiment
from dllm_jax.eval import math_grader as math_grader_lib
from dllm_jax.sampling.learned_policy import (LearnedPolicy, PolicyTrace, bernoulli_entropy,
                                             bernoulli_log_prob, trace_logits)
from dllm_jax.sampling.policy import PolicyParams, init_policy

# grade(problem_indices [N], generated_NG) -> correct [N] (bool)
GradeFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclasses.dataclass(frozen=True)
class GRPOConfig:
  seed: int = 0
  num_steps: int = 1000
  prompts_per_step: int = 4
  group_size: int = 8
  alpha: float = 1.0           # reward exponent of the NFE factor
  clip_eps: float = 0.5
  iterations: int = 2          # optimiser steps per batch of rollouts
  learning_rate: float = 3e-5
  warmup_steps: int = 100
  weight_decay: float = 0.1
  grad_clip: float = 0.2
  checkpoint_every: int = 50
  keep_checkpoints: int = 2
  entropy_coef: float = 0.0
  drop_zero_variance: bool = False
  imitate_threshold: float | None = None  # tau of the Threshold rule to imitate first
  imitation_steps: int = 0
  imitation_learning_rate: float = 1e-3
  imitation_iterations: int = 4  # Adam steps per imitation batch (the shipped semi-AR: 16)
  imitation_cosine: bool = False  # decay the imitation lr to 0 over the warm start (cosine)

  def __post_init__(self):
    for name in ("num_steps", "prompts_per_step", "group_size", "iterations",
                 "checkpoint_every", "keep_checkpoints", "imitation_iterations"):
      if getattr(self, name) < 1:
        raise ValueError(f"GRPOConfig.{name} must be >= 1, got {getattr(self, name)}")
    if self.group_size < 2:
      raise ValueError("GRPOConfig.group_size must be >= 2: advantages are relative to the group")
    if (self.imitate_threshold is None) != (self.imitation_steps == 0):
      raise ValueError("GRPOConfig.imitate_threshold (tau) and imitation_steps (> 0) go together")
    if self.imitate_threshold is not None and not 0 < self.imitate_threshold <= 1:
      raise ValueError(f"GRPOConfig.imitate_threshold must be in (0, 1], got "
                       f"{self.imitate_threshold}")
    if self.entropy_coef < 0 or self.imitation_steps < 0:
      raise ValueError("GRPOConfig.entropy_coef and imitation_steps must be >= 0")
    if self.alpha < 0 or not 0 < self.clip_eps < 1:
      raise ValueError(f"need alpha >= 0 and 0 < clip_eps < 1, got alpha={self.alpha}, "
                       f"clip_eps={self.clip_eps}")


def rewards(correct_N: jax.Array, nfe_N: jax.Array, gen_length: int, alpha: float) -> jax.Array:
  return correct_N * ((gen_length - nfe_N + 1) / gen_length) ** alpha


def group_advantages(reward_N: jax.Array, group_size: int) -> jax.Array:
  """Rows are grouped consecutively (prompt p's rollouts are rows p*G .. p*G + G - 1)."""
  reward_PG = reward_N.reshape(-1, group_size)
  return (reward_PG - reward_PG.mean(axis=1, keepdims=True)).reshape(-1)


def zero_variance_groups(reward_N: jax.Array, group_size: int) -> jax.Array:
  """[N] bool: the row's group has all rewards equal (so all its advantages are zero)."""
  reward_PG = reward_N.reshape(-1, group_size)
  same_P = jnp.all(reward_PG == reward_PG[:, :1], axis=1)
  return jnp.repeat(same_P, group_size)


def grpo_loss(params: PolicyParams, rule: LearnedPolicy, trace: PolicyTrace,
              old_logprob_NS: jax.Array, advantage_N: jax.Array, clip_eps: float,
              weight_N: jax.Array | None = None, entropy_coef: float = 0.0
              ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Minus the clipped-ratio objective (module docstring), and diagnostics. `weight_N` (default
  1 / N each) weights the rollouts' objectives; `entropy_coef` adds the entropy bonus."""
  active_NS = trace.active_BS.astype(jnp.float32)
  logits_NSW = trace_logits(rule, params, trace)
  logprob_NS = bernoulli_log_prob(logits_NSW, trace.action_BSW, trace.masked_BSW,
                                  rule.temperature) * active_NS
  ratio_NS = jnp.exp(logprob_NS - old_logprob_NS)
  a_N1 = advantage_N[:, None]
  objective_NS = jnp.minimum(ratio_NS * a_N1, jnp.clip(ratio_NS, 1 - clip_eps, 1 + clip_eps) * a_N1)
  per_rollout_N = (jnp.sum(objective_NS * active_NS, axis=1)
                   / jnp.maximum(jnp.sum(active_NS, axis=1), 1.0))
  if weight_N is None:
    weight_N = jnp.full(advantage_N.shape, 1.0 / advantage_N.shape[0])
  masked_NS = jnp.sum(trace.masked_BSW, axis=-1) * active_NS
  entropy = (jnp.sum(bernoulli_entropy(logits_NSW, trace.masked_BSW, rule.temperature)
                     * active_NS) / jnp.maximum(jnp.sum(masked_NS), 1.0))
  clipped = jnp.abs(ratio_NS - 1) > clip_eps
  loss = -jnp.sum(weight_N * per_rollout_N) - entropy_coef * entropy
  return loss, {"entropy": entropy,
                "clip_fraction": jnp.sum(clipped * active_NS) / jnp.maximum(jnp.sum(active_NS), 1.0)}


def make_optimizer(config: GRPOConfig) -> optax.GradientTransformation:
  total = max(config.num_steps * config.iterations, config.warmup_steps + 1)
  schedule = optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, config.warmup_steps,
                                                total, end_value=0.0)
  return optax.chain(optax.clip_by_global_norm(config.grad_clip),
                     optax.adamw(schedule, weight_decay=config.weight_decay))


@functools.partial(jax.jit, static_argnames=("rule", "config"))
def update(state: dict[str, Any], rule: LearnedPolicy, config: GRPOConfig, trace: PolicyTrace,
           old_logprob_NS: jax.Array, advantage_N: jax.Array, weight_N: jax.Array):
  """`config.iterations` optimiser steps on one batch of rollouts. Metrics are those of the
  first iteration (the rollout policy's)."""

  def one(state, _):
    (loss, metrics), grads = jax.value_and_grad(grpo_loss, has_aux=True)(
        state["params"], rule, trace, old_logprob_NS, advantage_N, config.clip_eps, weight_N,
        config.entropy_coef)
    updates, opt_state = make_optimizer(config).update(grads, state["opt_state"],
                                                       state["params"])
    metrics.update(loss=loss, grad_norm=optax.tree.norm(grads))
    return {"params": optax.apply_updates(state["params"], updates), "opt_state": opt_state,
            "step": state["step"]}, metrics

  state, metrics = jax.lax.scan(one, state, None, length=config.iterations)
  return {**state, "step": state["step"] + 1}, jax.tree.map(lambda x: x[0], metrics)


def rollout_weights(reward_N: jax.Array, config: GRPOConfig) -> jax.Array:
  """Each rollout's weight in the objective: 1 / N, or with `drop_zero_variance` 1 / (rollouts
  in groups whose rewards differ), 0 in the others."""
  if not config.drop_zero_variance:
    return jnp.full(reward_N.shape, 1.0 / reward_N.shape[0])
  keep_N = ~zero_variance_groups(reward_N, config.group_size)
  return keep_N / jnp.maximum(jnp.sum(keep_N), 1)


def threshold_decisions(trace: PolicyTrace, tau: float) -> jax.Array:
  """Threshold(tau)'s choice at every recorded state [B, S, W]: masked positions whose top-1
  probability is >= tau (the policy's argmax fallback adds the most confident when none is)."""
  return trace.masked_BSW & (trace.confidence_BSW >= tau)


def imitation_loss(params: PolicyParams, rule: LearnedPolicy, trace: PolicyTrace, tau: float
                   ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Binary cross-entropy of the policy's Bernoulli probabilities against Threshold(tau)'s
  decisions, averaged over the masked positions of active steps; and the decisions' agreement
  (policy probability > 1/2 iff Threshold unmasks)."""
  logits_NSW = trace_logits(rule, params, trace) / rule.temperature
  target_NSW = threshold_decisions(trace, tau)
  weight_NSW = (trace.masked_BSW & trace.active_BS[..., None]).astype(jnp.float32)
  bce_NSW = -jnp.where(target_NSW, jax.nn.log_sigmoid(logits_NSW),
                       jax.nn.log_sigmoid(-logits_NSW))
  count = jnp.maximum(jnp.sum(weight_NSW), 1.0)
  agree = jnp.sum(((logits_NSW > 0) == target_NSW) * weight_NSW) / count
  return jnp.sum(bce_NSW * weight_NSW) / count, {"agreement": agree}


def imitation_optimizer(config: GRPOConfig) -> optax.GradientTransformation:
  """Adam at `imitation_learning_rate`; with `imitation_cosine`, decayed to 0 by a half cosine
  over the warm start's imitation_steps x imitation_iterations updates, so that its last
  batches cannot throw the policy far from what the earlier ones taught."""
  if not config.imitation_cosine:
    return optax.adam(config.imitation_learning_rate)
  total = max(config.imitation_steps * config.imitation_iterations, 1)
  return optax.adam(optax.cosine_decay_schedule(config.imitation_learning_rate, total))


@functools.partial(jax.jit, static_argnames=("rule", "config"))
def imitation_update(params: PolicyParams, opt_state, rule: LearnedPolicy, config: GRPOConfig,
                     trace: PolicyTrace):
  """`config.imitation_iterations` Adam steps on `imitation_loss`; metrics of the first."""
  optimizer = imitation_optimizer(config)

  def one(carry, _):
    params, opt_state = carry
    (loss, metrics), grads = jax.value_and_grad(imitation_loss, has_aux=True)(
        params, rule, trace, config.imitate_threshold)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), {"loss": loss, **metrics}

  (params, opt_state), metrics = jax.lax.scan(one, (params, opt_state), None,
                                              length=config.imitation_iterations)
  return params, opt_state, jax.tree.map(lambda x: x[0], metrics)


def active_states(trace: PolicyTrace, bucket: int = 128) -> PolicyTrace:
  """The trace's active (row, step) states, one per row of a one-step trace, padded with inactive
  rows to `bucket` times a power of two (few shapes, so few compilations). The policy reads each
  state alone, so imitation on these equals imitation on the whole trace, without the work on
  the steps after a row finished (most of them: a row takes NFE of gen_length steps)."""
  rows, steps = np.nonzero(np.asarray(trace.active_BS))
  size = bucket
  while size < len(rows):
    size *= 2

  def take(x):
    picked = np.asarray(x)[rows, steps]
    pad = np.zeros((size - len(rows), *picked.shape[1:]), picked.dtype)
    return jnp.asarray(np.concatenate([picked, pad])[:, None])

  return jax.tree.map(take, trace)


def imitate_threshold(sampler: sampling.Sampler, denoise_fn, dllm_params,
                      prompts: Sequence[Sequence[int]], config: GRPOConfig, params: PolicyParams,
                      *, pad_id: int, mesh: jax.sharding.Mesh | None = None,
                      progress: bool = True, log_path: pathlib.Path | None = None
                      ) -> tuple[PolicyParams, list[dict[str, float]]]:
  """`config.imitation_steps` steps of behaviour cloning of Threshold(config.imitate_threshold):
  each step rolls out the current policy (so the states are the policy's own, as in DAgger) on
  `prompts_per_step * group_size` rows and takes `imitation_iterations` Adam steps on
  `imitation_loss` over the states it visited (`active_states`). Each step's metrics are
  appended to `log_path` if given."""
  rule = sampler.remasking
  optimizer_state = imitation_optimizer(config).init(params)
  rows = config.prompts_per_step * config.group_size
  prompt_length = max(len(p) for p in prompts)
  history = []
  seed = config.seed + 7919  # prompts and keys apart from the GRPO steps'
  for step in tqdm.trange(config.imitation_steps, disable=not progress, desc="imitation",
                          unit="step"):
    start = time.time()
    chosen = step_prompts(dataclasses.replace(config, seed=seed), step, len(prompts))
    problem_N = np.repeat(chosen, config.group_size)
    prompt_NP, mask_NP = pad_left([prompts[i] for i in problem_N], pad_id, prompt_length)
    keys_N = jax.random.split(jax.random.fold_in(jax.random.key(seed), step), rows)
    out = rollout(sampler, denoise_fn, dllm_params, params, prompt_NP, mask_NP, keys_N, mesh)
    trace = jax.tree.map(_gather, out.policy_trace)
    params, optimizer_state, metrics = imitation_update(params, optimizer_state, rule, config,
                                                        active_states(trace))
    history.append({"step": step + 1, "nfe": float(np.asarray(trace.active_BS).sum(1).mean()),
                    **{k: float(v) for k, v in jax.device_get(metrics).items()},
                    "seconds": time.time() - start})
    if log_path is not None:
      with open(log_path, "a", encoding="utf-8") as f:
        f.write(json.dumps(history[-1]) + "\n")
  return params, history


def step_prompts(config: GRPOConfig, step: int, num_prompts: int) -> np.ndarray:
  """The prompt indices of training step `step`: epochs of seeded permutations."""
  per_epoch = max(num_prompts // config.prompts_per_step, 1)
  epoch, offset = divmod(step, per_epoch)
  order = np.random.default_rng([config.seed, epoch]).permutation(num_prompts)
  end = (offset + 1) * config.prompts_per_step
  return np.resize(order, end)[end - config.prompts_per_step:]  # few prompts: cycle through


def rollout(sampler: sampling.Sampler, denoise_fn, dllm_params, policy_params, prompt_NP,
            mask_NP, keys_N, mesh: jax.sharding.Mesh | None = None) -> sampling.DecodeOutput:
  """One batch of rollouts through the compiled loop, rows sharded over the mesh's data axis."""
  if mesh is None:
    return sampling.generate(sampler, denoise_fn, dllm_params, prompt_NP, mask_NP, keys_N,
                             policy_params=policy_params)
  placed = sharding.shard_batch(mesh, prompt_NP, mask_NP, keys_N)
  policy_params = jax.device_put(policy_params, NamedSharding(mesh, PartitionSpec()))
  with jax.set_mesh(mesh):
    return sampling.generate(sampler, denoise_fn, dllm_params, *placed,
                             policy_params=policy_params)


def _gather(x: jax.Array) -> np.ndarray:
  if jax.process_count() == 1:
    return np.asarray(jax.device_get(x))
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


RESUMABLE_FIELDS = ("num_steps",)  # a rerun may change these (the cosine schedule then spans
                                   # the new num_steps from the resumed step on)


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
  if isinstance(old, dict) and isinstance(new, dict):
    return [d for key in sorted(set(old) | set(new))
            for d in _differences(old.get(key), new.get(key), f"{prefix}{key}.")]
  return [] if old == new else [f"{prefix[:-1]} ({old!r} there, {new!r} now)"]


def _check_run_config(directory: pathlib.Path, run_config: dict[str, Any]) -> None:
  """Refuses to resume a run of another configuration, naming the differing fields; the fields
  of RESUMABLE_FIELDS may differ (the file is then updated)."""
  path = directory / "run_config.json"
  text = json.dumps(run_config, indent=2, sort_keys=True, default=str)
  new = json.loads(text)
  if path.exists():
    old = json.loads(path.read_text())
    if isinstance(old.get("grpo"), dict):  # a run from before a field existed had its default
      defaults = json.loads(json.dumps(dataclasses.asdict(GRPOConfig()), default=str))
      old["grpo"] = {**defaults, **old["grpo"]}
    differ = [d for d in _differences(old, new)
              if d.split(" ")[0].rsplit(".", 1)[-1] not in RESUMABLE_FIELDS]
    if differ:
      raise ValueError(f"{directory} holds a run with other settings: {'; '.join(differ[:3])}; "
                       "rerun with those settings to resume, or use another output directory")
    if old != new and jax.process_index() == 0:
      path.write_text(text)
  elif jax.process_index() == 0:
    path.write_text(text)


def _metric_lines(path: pathlib.Path, upto: int) -> None:
  """Drops metric lines past step `upto` (written after the last checkpoint of a killed run)."""
  if not path.exists():
    return
  keep = [line for line in path.read_text().splitlines()
          if line.strip() and json.loads(line)["step"] <= upto]
  path.write_text("".join(line + "\n" for line in keep))


def train(sampler: sampling.Sampler, denoise_fn, dllm_params, prompts: Sequence[Sequence[int]],
          grade: GradeFn, config: GRPOConfig, directory: str | pathlib.Path, *, pad_id: int,
          mesh: jax.sharding.Mesh | None = None, initial_params: PolicyParams | None = None,
          stop_after: int | None = None, progress: bool = True,
          run_config: dict[str, Any] | None = None) -> tuple[PolicyParams, list[dict[str, float]]]:
  """Trains (or resumes) a policy for `sampler.remasking` (a LearnedPolicy) in `directory`;
  returns the policy params and this call's metrics. `stop_after` ends the run at that step
  (with a checkpoint), as an interruption would."""
  rule = sampler.remasking
  if not isinstance(rule, LearnedPolicy):
    raise ValueError(f"GRPO trains a LearnedPolicy rule; the sampler has {rule!r}")
  directory = pathlib.Path(directory).absolute()
  directory.mkdir(parents=True, exist_ok=True)
  _check_run_config(directory, {"sampler": repr(sampler), "grpo": dataclasses.asdict(config),
                                **(run_config or {})})
  rows = config.prompts_per_step * config.group_size
  if mesh is not None and rows % mesh.shape[sharding.DATA]:
    raise ValueError(f"prompts_per_step * group_size = {rows} rows must divide over the data "
                     f"axis ({mesh.shape[sharding.DATA]})")
  prompt_length = max(len(p) for p in prompts)
  params = initial_params if initial_params is not None else init_policy(rule.network,
                                                                         config.seed)
  state = {"params": params, "opt_state": make_optimizer(config).init(params),
           "step": jnp.zeros((), jnp.int32)}
  metrics_path = directory / "metrics.jsonl"
  options = ocp.CheckpointManagerOptions(save_interval_steps=config.checkpoint_every,
                                         max_to_keep=config.keep_checkpoints, create=True)
  history: list[dict[str, float]] = []
  with ocp.CheckpointManager(directory / "state", options=options) as manager:
    start = manager.latest_step()
    if start is not None:
      if start > config.num_steps:
        raise ValueError(f"{directory} holds step {start}, past --num_steps={config.num_steps}; "
                         "pass a num_steps of at least that to resume")
      abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
      state = manager.restore(start, args=ocp.args.StandardRestore(abstract))
    elif config.imitation_steps:
      log_path = directory / "imitation.jsonl"
      if jax.process_index() == 0:
        log_path.write_text("")  # a warm start killed before the first checkpoint reruns
      params, _ = imitate_threshold(sampler, denoise_fn, dllm_params, prompts, config, params,
                                    pad_id=pad_id, mesh=mesh, progress=progress,
                                    log_path=log_path if jax.process_index() == 0 else None)
      state = {**state, "params": params}
    start = start or 0
    if jax.process_index() == 0:
      _metric_lines(metrics_path, start)
    end = config.num_steps if stop_after is None else min(stop_after, config.num_steps)
    bar = tqdm.tqdm(total=config.num_steps, initial=start, disable=not progress,
                    desc="GRPO", unit="step")
    for step in range(start, end):
      step_start = time.time()
      chosen = step_prompts(config, step, len(prompts))
      problem_N = np.repeat(chosen, config.group_size)
      prompt_NP, mask_NP = pad_left([prompts[i] for i in problem_N], pad_id, prompt_length)
      keys_N = jax.random.split(jax.random.fold_in(jax.random.key(config.seed), step), rows)
      out = rollout(sampler, denoise_fn, dllm_params, state["params"], prompt_NP, mask_NP,
                    keys_N, mesh)
      # The update runs on every process's default device, on the whole (gathered) batch.
      trace = jax.tree.map(lambda x: jnp.asarray(_gather(x)), out.policy_trace)
      nfe_N = np.asarray(trace.active_BS).sum(1)
      correct_N = np.asarray(grade(problem_N, _gather(out.generated_BG)), np.float32)
      reward_N = rewards(correct_N, nfe_N, sampler.gen_length, config.alpha)
      advantage_N = group_advantages(jnp.asarray(reward_N), config.group_size)
      state, metrics = update(state, rule, config, trace, trace.logprob_BS, advantage_N,
                              rollout_weights(jnp.asarray(reward_N), config))
      manager.save(step + 1, args=ocp.args.StandardSave(state))
      zero_variance = np.asarray(zero_variance_groups(jnp.asarray(reward_N), config.group_size))
      record = {"step": step + 1, "reward": float(reward_N.mean()),
                "accuracy": float(correct_N.mean()), "nfe": float(nfe_N.mean()),
                "zero_variance_groups": float(zero_variance.mean()),
                **{k: float(v) for k, v in jax.device_get(metrics).items()},
                "seconds": time.time() - step_start}
      history.append(record)
      if jax.process_index() == 0:
        with open(metrics_path, "a", encoding="utf-8") as f:
          f.write(json.dumps(record) + "\n")
      bar.set_postfix(reward=f"{record['reward']:.3f}", acc=f"{record['accuracy']:.2f}",
                      nfe=f"{record['nfe']:.1f}", H=f"{record['entropy']:.3f}",
                      zero_var=f"{record['zero_variance_groups']:.2f}")
      bar.update(1)
    bar.close()
    if end > start and manager.latest_step() != end:
      manager.save(end, args=ocp.args.StandardSave(state), force=True)
    manager.wait_until_finished()
  return state["params"], history


def train_seconds(directory: str | pathlib.Path) -> float | None:
  """Wall seconds a `train` directory's policy took: the sum of its logged steps' `seconds`
  (warm start and GRPO, compilation included, over every resumption; model loading and the
  steps a killed run lost are not counted). None if a logged step has no time (a run from
  before steps were timed) or nothing is logged."""
  directory = pathlib.Path(directory)
  records = [json.loads(line) for name in ("imitation.jsonl", "metrics.jsonl")
             if (directory / name).exists()
             for line in (directory / name).read_text().splitlines() if line.strip()]
  if not records or any("seconds" not in r for r in records):
    return None
  return float(sum(r["seconds"] for r in records))


def load_policy(directory: str | pathlib.Path, rule: LearnedPolicy, step: int | None = None
                ) -> PolicyParams:
  """The policy params of a `train` directory (its latest checkpoint by default)."""
  directory = pathlib.Path(directory).absolute()
  params = init_policy(rule.network)
  state = {"params": params, "opt_state": make_optimizer(GRPOConfig()).init(params),
           "step": jnp.zeros((), jnp.int32)}  # the optimiser's structure, whatever its settings
  with ocp.CheckpointManager(directory / "state") as manager:
    step = manager.latest_step() if step is None else step
    if step is None:
      raise ValueError(f"no policy checkpoint in {directory / 'state'}; train one with "
                       "experiments/train_policy.py")
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
    return manager.restore(step, args=ocp.args.StandardRestore(abstract))["params"]


def read_problems(path: str | pathlib.Path, limit: int | None = None) -> list[Problem]:
  """Training problems from a JSONL/JSON file: each record has `question` (or `problem`) and
  `answer` (GSM8K's "... #### 42" keeps the part after ####). They are prompted and graded as
  math problems (final answer in \\boxed{})."""
  if not pathlib.Path(path).is_file():
    raise FileNotFoundError(f"no problems file at {path}; pass --data_path=<JSONL of "
                            "question/answer records>")
  problems = []
  for index, record in enumerate(jsonl.read_records(path)[:limit]):
    field = "question" if "question" in record.fields else "problem"
    answer = record.answer().rsplit("####", 1)[-1].strip()
    if not answer:
      raise record.fail("the answer after '####' is empty")
    problems.append(Problem(id=f"math500/train-{index}", benchmark="math500",
                            question=record.text(field), answer=answer))
  if not problems:
    raise ValueError(f"{path} holds no problems")
  return problems


def math_grader(problems: Sequence[Problem], decode: Callable[[Sequence[int]], str],
                stop_ids: Sequence[int]) -> GradeFn:
  """Grades generations of `problems` with the math grader (text up to the first stop id)."""
  stop = set(stop_ids)

  def grade(problem_N: np.ndarray, generated_NG: np.ndarray) -> np.ndarray:
    correct = []
    for index, ids in zip(problem_N, generated_NG.tolist()):
      cut = next((j for j, t in enumerate(ids) if t in stop), len(ids))
      correct.append(math_grader_lib.grade_math(decode(ids[:cut]), problems[index].answer))
    return np.array(correct, bool)

  return grade


def train_from_checkpoint(*, checkpoint_dir: str | pathlib.Path, tokenizer_dir: str | None,
                          data_path: str, limit: int | None, chat_template: str, mesh_spec: str,
                          output_dir: str, sampler_fields: dict[str, Any],
                          policy_temperature: float, config: GRPOConfig,
                          progress: bool = True) -> pathlib.Path:
  """GRPO on a converted dLLM checkpoint with the user's problems: what
  `experiments/train_policy.py` calls. The dLLM is sharded over the mesh as in `experiments/run`."""
  mesh = experiment.parse_mesh(mesh_spec)
  log = (lambda line: print(line, file=sys.stderr, flush=True)) if progress else (lambda _: None)
  checkpoint_dir = pathlib.Path(checkpoint_dir)
  tokenizer_dir = pathlib.Path(tokenizer_dir or checkpoint_dir / "tokenizer")
  problems = read_problems(data_path, limit)
  dllm_params, model_config = checkpoint.load(checkpoint_dir, mesh=mesh)
  tokenizer = tokenize.CheckpointTokenizer.from_checkpoint(tokenizer_dir)
  template = (None if chat_template == "none"
              else prompts_lib.load_chat_template(tokenizer_dir, family=model_config.family))
  prompt_ids = [tokenizer.encode(text) for text in prompts_lib.build_prompts(problems, template)]
  sampler = sampling.Sampler.for_model(
      model_config, remasking=LearnedPolicy(temperature=policy_temperature), **sampler_fields)
  stop_ids = [t for t in (model_config.eos_token_id, model_config.eot_token_id) if t is not None]
  log(f"{len(problems)} problems; the first training step compiles the decoder (minutes on CPU)")
  params, _ = train(sampler, models.make_denoise(model_config), dllm_params, prompt_ids,
                    math_grader(problems, tokenizer.decode, stop_ids), config, output_dir,
                    pad_id=model_config.pad_token_id, mesh=mesh, progress=progress,
                    run_config={"checkpoint": str(checkpoint_dir), "data": str(data_path),
                                "problems": len(problems), "chat_template": chat_template})
  path = pathlib.Path(output_dir) / "policy.safetensors"
  if jax.process_index() == 0:
    sampling.save_policy_params(path, params, {
        "gen_length": sampler.gen_length,
        "block_length": sampler.block_length or sampler.gen_length,
        "temperature": policy_temperature, "grpo": dataclasses.asdict(config),
        "train_seconds": train_seconds(output_dir),
        "checkpoint": checkpoint_dir.name, "data": pathlib.Path(data_path).name,
        "problems": len(problems)})
  return path
