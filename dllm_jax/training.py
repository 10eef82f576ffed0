"""Training a masked diffusion model (LLaDA's SFT objective): loss, optax step, resumable loop.

For a (prompt, answer) pair: draw t ~ U(t_min, 1) per sequence, mask every answer token
independently with probability t (prompt tokens are never masked), and take the cross-entropy of
the model's prediction at the masked positions, weighted by 1 / t and averaged over all answer
positions of the batch:

  loss = sum_{b, g} [masked_bg] * CE(logits_bg, answer_bg) / t_b  /  (B * G)

which is an upper bound on -log p(answer | prompt) of the masked diffusion model (t_min > 0
only clips the rare tiny t whose 1 / t weight would dominate the gradient noise).

`train` runs the jitted step in a loop, saving `{params, opt_state, step}` with an Orbax
`CheckpointManager` every `checkpoint_every` steps and resuming from the latest checkpoint in
its directory. The step's randomness is `fold_in(key(seed), step)` and batches come from
`batch_fn(step)`, so a resumed run reproduces an uninterrupted one exactly.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

from dllm_jax.models import ModelConfig, init_params, make_denoise
from dllm_jax.models.model import DenoiseFn, Params

Batch = tuple[np.ndarray, np.ndarray, np.ndarray]  # prompt_BP, prompt_mask_BP, answer_BG
TrainState = dict[str, Any]  # {"params", "opt_state", "step"}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  seed: int = 0
  num_steps: int = 2000
  batch_size: int = 256
  learning_rate: float = 2e-3
  warmup_steps: int = 100
  final_lr_fraction: float = 0.05  # cosine decay to this fraction of the peak
  weight_decay: float = 0.01
  grad_clip: float = 1.0
  t_min: float = 1e-3
  checkpoint_every: int = 250
  keep_checkpoints: int = 2
  log_every: int = 50

  def __post_init__(self):
    if self.num_steps < 1 or self.batch_size < 1 or self.checkpoint_every < 1:
      raise ValueError("num_steps, batch_size and checkpoint_every must be positive")
    if not 0 < self.t_min < 1:
      raise ValueError(f"t_min must be in (0, 1), got {self.t_min}")

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


def masked_diffusion_loss(denoise_fn: DenoiseFn, params: Params, prompt_BP: jax.Array,
                          prompt_mask_BP: jax.Array, answer_BG: jax.Array, rng: jax.Array,
                          mask_token_id: int, t_min: float) -> tuple[jax.Array, dict[str, Any]]:
  """The 1/t-weighted masked-token cross-entropy (see the module docstring) and metrics."""
  B, G = answer_BG.shape
  key_t, key_mask = jax.random.split(rng)
  t_B = jax.random.uniform(key_t, (B,), minval=t_min, maxval=1.0)
  masked_BG = jax.random.uniform(key_mask, (B, G)) < t_B[:, None]
  noisy_BG = jnp.where(masked_BG, mask_token_id, answer_BG)
  tokens_BL = jnp.concatenate([prompt_BP, noisy_BG], axis=1)
  attn_mask_BL = jnp.concatenate([prompt_mask_BP, jnp.ones((B, G), bool)], axis=1)
  logits_BGV = denoise_fn(params, tokens_BL, attn_mask_BL)[:, -G:]
  ce_BG = optax.softmax_cross_entropy_with_integer_labels(logits_BGV, answer_BG)
  loss = jnp.sum(jnp.where(masked_BG, ce_BG / t_B[:, None], 0.0)) / (B * G)
  num_masked = jnp.maximum(jnp.sum(masked_BG), 1)
  metrics = {"loss": loss, "masked_ce": jnp.sum(jnp.where(masked_BG, ce_BG, 0.0)) / num_masked}
  return loss, metrics


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, config.learning_rate, config.warmup_steps, max(config.num_steps, config.warmup_steps + 1),
      end_value=config.learning_rate * config.final_lr_fraction)
  return optax.chain(optax.clip_by_global_norm(config.grad_clip),
                     optax.adamw(schedule, b1=0.9, b2=0.99, weight_decay=config.weight_decay))


def init_state(model_config: ModelConfig, train_config: TrainConfig) -> TrainState:
  params = init_params(model_config, seed=train_config.seed)
  return {"params": params, "opt_state": make_optimizer(train_config).init(params),
          "step": jnp.zeros((), jnp.int32)}


@functools.partial(jax.jit, static_argnames=("model_config", "train_config"), donate_argnums=0)
def train_step(state: TrainState, prompt_BP: jax.Array, prompt_mask_BP: jax.Array,
               answer_BG: jax.Array, *, model_config: ModelConfig,
               train_config: TrainConfig) -> tuple[TrainState, dict[str, Any]]:
  """One optimizer step on one batch; the step's key is fold_in(key(seed), step)."""
  rng = jax.random.fold_in(jax.random.key(train_config.seed), state["step"])
  loss_fn = functools.partial(masked_diffusion_loss, make_denoise(model_config),
                              mask_token_id=model_config.mask_token_id, t_min=train_config.t_min)
  (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state["params"], prompt_BP, prompt_mask_BP, answer_BG, rng)
  updates, opt_state = make_optimizer(train_config).update(grads, state["opt_state"],
                                                           state["params"])
  metrics["grad_norm"] = optax.tree.norm(grads)
  return {"params": optax.apply_updates(state["params"], updates), "opt_state": opt_state,
          "step": state["step"] + 1}, metrics


def _check_run_config(directory: pathlib.Path, run_config: dict[str, Any]) -> None:
  """Writes the run's config beside its checkpoints, or checks a resumed run matches it."""
  path = directory / "run_config.json"
  text = json.dumps(run_config, indent=2, sort_keys=True)
  if path.exists():
    if json.loads(path.read_text()) != json.loads(text):
      raise ValueError(f"{directory} holds checkpoints of a different run (see {path}); "
                       "use another directory or the same configuration")
  else:
    path.write_text(text)


def train(model_config: ModelConfig, train_config: TrainConfig, batch_fn: Callable[[int], Batch],
          checkpoint_dir: str | pathlib.Path, *, stop_after: int | None = None,
          log: Callable[[str], None] = print,
          eval_fn: Callable[[Params, int], str] | None = None,
          eval_every: int = 0) -> tuple[Params, list[dict[str, float]]]:
  """Trains from scratch or from the latest checkpoint in `checkpoint_dir`; returns the params
  and the logged metrics. `stop_after` ends the run early at that step (with a checkpoint), as
  an interruption would; `eval_fn(params, step)` returns a line to log every `eval_every` steps.
  """
  cfg = train_config
  directory = pathlib.Path(checkpoint_dir).absolute()
  directory.mkdir(parents=True, exist_ok=True)
  _check_run_config(directory, {"model": dataclasses.asdict(model_config),
                                "train": cfg.to_dict()})
  options = ocp.CheckpointManagerOptions(save_interval_steps=cfg.checkpoint_every,
                                         max_to_keep=cfg.keep_checkpoints, create=True)
  history: list[dict[str, float]] = []
  with ocp.CheckpointManager(directory / "state", options=options) as manager:
    state = init_state(model_config, cfg)
    start = manager.latest_step()
    if start is not None:
      abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
      state = manager.restore(start, args=ocp.args.StandardRestore(abstract))
      log(f"resumed from step {start} in {directory}")
    start = start or 0
    end = cfg.num_steps if stop_after is None else min(stop_after, cfg.num_steps)
    run = functools.partial(train_step, model_config=model_config, train_config=cfg)
    t0, window, window_start = time.time(), [], time.time()
    for step in range(start, end):
      prompt_BP, prompt_mask_BP, answer_BG = batch_fn(step)
      state, metrics = run(state, prompt_BP, prompt_mask_BP, answer_BG)
      manager.save(step + 1, args=ocp.args.StandardSave(state))
      window.append(metrics)
      if (step + 1) % cfg.log_every == 0 or step + 1 == end:
        means = {k: float(np.mean([jax.device_get(m[k]) for m in window])) for k in window[0]}
        seconds = time.time() - window_start
        means.update(step=step + 1, elapsed_s=time.time() - t0,
                     steps_per_s=len(window) / max(seconds, 1e-9))
        history.append(means)
        log(f"step {step + 1:6d}  loss {means['loss']:.4f}  masked_ce {means['masked_ce']:.4f}  "
            f"grad_norm {means['grad_norm']:.3f}  {means['steps_per_s']:.2f} steps/s  "
            f"elapsed {means['elapsed_s']:.0f}s")
        window, window_start = [], time.time()
      if eval_fn is not None and eval_every and (step + 1) % eval_every == 0:
        log(f"step {step + 1:6d}  eval {eval_fn(state['params'], step + 1)}")
    if end > start and manager.latest_step() != end:
      manager.save(end, args=ocp.args.StandardSave(state), force=True)
    manager.wait_until_finished()
  return state["params"], history
