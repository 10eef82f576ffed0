"""A benchmark run from plain settings: load the checkpoint, tokenizer, problems and prompts, build
the sampler, and hand everything to `runner.run`. What `experiments/run.py` calls."""

from __future__ import annotations

import functools
import hashlib
import pathlib
import sys
from typing import Any

import jax

from dllm_jax import checkpoint, models, sampling, sharding
from dllm_jax.data import jsonl, prompts, tokenize
from dllm_jax.eval import run_record, runner
from dllm_jax.sampling import block_batch
from dllm_jax.sampling.block_diffusion import BlockDiffusion
from dllm_jax.sampling.by_name import rule_from_name
from dllm_jax.sampling.imh import IMH
from dllm_jax.sampling.streaming import StreamingSampler


def initialize_distributed(coordinator: str | None, num_processes: int | None,
                           process_id: int | None, auto: bool = False) -> None:
  """`jax.distributed.initialize` for multi-host runs: explicit settings, or auto-detection."""
  explicit = (coordinator, num_processes, process_id)
  if any(v is not None for v in explicit):
    if any(v is None for v in explicit):
      raise ValueError("multi-host needs all of coordinator_address, num_processes, process_id")
    # Collectives between CPU devices of different processes (no effect on GPU/TPU clients).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator, num_processes, process_id)
  elif auto:
    jax.distributed.initialize()


def parse_mesh(spec: str) -> jax.sharding.Mesh:
  """'data=4,model=2' (-1: the rest of the devices) -> a (data, model) mesh."""
  sizes = {"data": -1, "model": 1}
  for part in filter(None, spec.split(",")):
    name, _, value = part.partition("=")
    if name.strip() not in sizes or not value.strip().lstrip("-").isdigit():
      raise ValueError(f"bad mesh {spec!r}; expected e.g. 'data=4,model=2'")
    sizes[name.strip()] = int(value)
  return sharding.make_mesh(sizes["data"], sizes["model"])


def run_benchmark(*, checkpoint_dir: pathlib.Path, tokenizer_dir: str | None, benchmark: str,
                  data_path: str | None, limit: int | None, chat_template: str, mesh_spec: str,
                  output_dir: str, n_samples: int, batch_size: int, seed: int,
                  allow_greedy: bool, rule: dict[str, Any], sampler_fields: dict[str, Any],
                  schedule: str = "linear", cache: str = "none",
                  streaming: dict[str, Any] | None = None, progress: bool = True,
                  verify_checkpoint: bool = True, stop_strings: tuple[str, ...] = (),
                  block: dict[str, Any] | None = None) -> pathlib.Path:
  """Runs (or resumes) one benchmark x sampler into `output_dir`. A response ends before the
  first EOS / end-of-turn token and after the first of `stop_strings` (`runner.cut_response`;
  Tencent's WeDLM evaluation uses "Question", "Problem" on every benchmark). A block diffusion
  checkpoint (LLaDA2.x, SDAR) is decoded by `block_sampler` (`block`: its settings); the other
  families by the rule `rule["name"]` (None: low_confidence)."""
  if any(not s for s in stop_strings):
    raise ValueError(f"--stop_strings has an empty entry: {list(stop_strings)!r}")
  if limit is not None and limit < 1:
    raise ValueError(f"--limit must be >= 1 (or unset for every problem), got {limit}")
  for name in ("n_samples", "batch_size"):
    if locals()[name] < 1:
      raise ValueError(f"--{name} must be >= 1, got {locals()[name]}")
  steps, gen_length = sampler_fields.get("steps"), sampler_fields.get("gen_length")
  if steps is not None and gen_length is not None and steps > gen_length:
    raise ValueError(f"--steps={steps} > --gen_length={gen_length}: every step commits at least "
                     "one token, so at most gen_length steps can run")
  mesh = parse_mesh(mesh_spec)
  log = (lambda line: print(line, file=sys.stderr, flush=True)) if progress else (lambda _: None)
  problems = jsonl.load_benchmark(benchmark, data_path, limit)
  log(f"loading {checkpoint_dir} ({'checking checksums, ' if verify_checkpoint else ''}"
      f"{len(problems)} {benchmark} problems) ...")
  checkpoint_dir = pathlib.Path(checkpoint_dir).absolute()
  tokenizer_dir = pathlib.Path(tokenizer_dir or checkpoint_dir / "tokenizer")
  params, config = checkpoint.load(checkpoint_dir, mesh=mesh, verify_checksums=verify_checkpoint)
  # The model's mask id wins: WeDLM's tokenizer files name no mask token.
  tokenizer = tokenize.CheckpointTokenizer.from_checkpoint(tokenizer_dir,
                                                           mask_id=config.mask_token_id)
  template = (None if chat_template == "none"
              else prompts.load_chat_template(tokenizer_dir, family=config.family))
  texts = prompts.build_prompts(problems, template)
  prompt_ids = [tokenizer.encode(text) for text in texts]
  policy_file = policy_params = None
  if config.attention_block:  # LLaDA2.x, SDAR
    sampler = block_sampler(config, rule, sampler_fields, schedule, cache, streaming or {},
                            block or {})
    if isinstance(sampler.remasking, sampling.LearnedPolicy):
      policy_file = rule["policy"]
      policy_params = sampling.load_policy_params(policy_file, sampler.remasking.network)
    longest = max(map(len, prompt_ids))
    if block_batch.canvas_length(sampler, longest) > config.max_length:
      raise ValueError(f"the longest prompt ({longest} tokens) + --gen_length={sampler.gen_length} "
                       f"fill {block_batch.canvas_length(sampler, longest)} positions in blocks of "
                       f"{sampler.block_length}, over the model's context of {config.max_length}; "
                       "lower --gen_length or --limit the problems")
  else:
    if any(v is not None for v in (block or {}).values()):
      raise ValueError(f"{sorted('--' + k for k, v in block.items() if v is not None)} are "
                       f"settings of block diffusion checkpoints (LLaDA2.x, SDAR), not of "
                       f"{config.family}")
    sampler, policy_file, policy_params = _sampler(config, rule, sampler_fields, schedule, cache,
                                                   streaming)
  stop_ids = [t for t in (config.eos_token_id, config.eot_token_id) if t is not None]
  stop_sequences = [tokenizer.encode(text) for text in stop_strings]
  run_config = run_record.build(
      checkpoint_dir=checkpoint_dir, tokenizer_dir=tokenizer_dir, config=config,
      benchmark=benchmark, problem_ids=[p.id for p in problems], template=template,
      sampler=sampler, n_samples=n_samples, seed=seed)
  if stop_strings:  # absent otherwise, so that earlier runs still resume
    run_config["stop_strings"] = list(stop_strings)
  if policy_file:  # the policy's weights are part of the sampler
    run_config["policy"] = hashlib.sha256(pathlib.Path(policy_file).read_bytes()).hexdigest()
  return runner.run(
      problems=problems, prompts=prompt_ids, stop_ids=stop_ids, stop_sequences=stop_sequences,
      # Special tokens ([MASK], padding, end of text) are not part of the response to grade.
      decode=functools.partial(tokenizer.decode, skip_special_tokens=True),
      pad_id=config.pad_token_id,
      model=runner.Model(models.make_denoise(config), params, config.max_length, policy_params),
      sampler=sampler, n_samples=n_samples, output_dir=output_dir, run_config=run_config,
      mesh=mesh, batch_size=batch_size, seed=seed, allow_greedy=allow_greedy, progress=progress,
      log=log if jax.process_index() == 0 else None,
      equivalent=run_record.equivalence(sampler=sampler, checkpoint_dir=checkpoint_dir,
                                        template=template))


def _sampler(config, rule: dict[str, Any], sampler_fields: dict[str, Any], schedule: str,
             cache: str, streaming: dict[str, Any] | None):
  """The sampler of a LLaDA / Dream / WeDLM run: (sampler, policy file, policy params)."""
  if rule["name"] is None:
    rule["name"] = "low_confidence"
  if rule.get("threshold") is None:
    rule["threshold"] = 0.9
  if rule["name"] not in STREAMING_RULES and any(v is not None for v in (streaming or {}).values()):
    raise ValueError(f"{sorted(k for k, v in streaming.items() if v is not None)} are settings "
                     "of --remasking=wedlm_streaming")
  policy_file, policy_temperature = rule.pop("policy", None), rule.pop("policy_temperature", None)
  if rule["name"] != "learned_policy" and (policy_file or policy_temperature is not None):
    raise ValueError("--policy and --policy_temperature are settings of --remasking=learned_policy")
  policy_params = None
  if rule["name"] in STREAMING_RULES:
    sampler = streaming_sampler(config, rule, sampler_fields, schedule, cache, streaming or {})
  elif rule["name"] == "learned_policy":
    sampler, policy_params = learned_policy_sampler(config, policy_file, policy_temperature,
                                                    sampler_fields, schedule, cache)
  else:
    sampler = sampling.Sampler.for_model(
        config, remasking=rule_from_name(rule.pop("name"), **rule),
        schedule=sampling.DreamSchedule() if schedule == "dream" else sampling.LinearSchedule(),
        cache=None if cache == "none" else sampling.BlockCache(cache), **sampler_fields)
  return sampler, policy_file, policy_params


STREAMING_RULES = ("wedlm_streaming", "wedlm_streaming_imh")


def learned_policy_sampler(config, policy_file: str | None, policy_temperature: float | None,
                           sampler_fields: dict[str, Any], schedule: str, cache: str
                           ) -> tuple[sampling.Sampler, Any]:
  """Block decoding with a trained unmasking policy (`sampling.LearnedPolicy`) and its params.
  The file must have been trained for this gen_length and block length; the policy picks the
  number of steps, so --steps and --schedule are errors."""
  if not policy_file:
    raise ValueError("--remasking=learned_policy needs --policy=<file>.safetensors")
  if sampler_fields.get("steps") is not None or schedule != "linear":
    raise ValueError("--remasking=learned_policy chooses its own steps: drop --steps/--schedule")
  fields = {k: v for k, v in sampler_fields.items() if k != "steps"}
  gen_length = fields.get("gen_length") or 256
  block_length = fields.get("block_length") or gen_length
  metadata = sampling.check_policy_fits(policy_file, gen_length, block_length)
  temperature = (policy_temperature if policy_temperature is not None
                 else metadata.get("temperature", 1.0))
  if not temperature > 0:
    raise ValueError(f"--policy_temperature must be > 0, got {temperature}")
  rule = sampling.LearnedPolicy(temperature=temperature)
  params = sampling.load_policy_params(policy_file, rule.network)
  sampler = sampling.Sampler.for_model(
      config, remasking=rule, cache=None if cache == "none" else sampling.BlockCache(cache),
      **fields)
  return sampler, params


def streaming_sampler(config, rule: dict[str, Any], sampler_fields: dict[str, Any], schedule: str,
                      cache: str, streaming: dict[str, Any]) -> StreamingSampler:
  """WeDLM streaming decoding (`sampling.streaming`) from the run's settings: `streaming` holds
  window, entropy_threshold (0 or None: one token per step) and position_penalty; `_imh` adds
  IMH with the rule's alpha and num_candidates. Settings of block decoding are errors."""
  name = rule["name"]
  if config.family != "wedlm":
    raise ValueError(f"--remasking={name} needs a WeDLM checkpoint, got family {config.family!r}")
  fields = dict(sampler_fields)
  stray = [k for k, default in (("block_length", None), ("steps", None), ("cfg_scale", 0.0),
                                ("forbid_eos", False), ("eos_confidence_inf", False))
           if fields.pop(k, default) != default]
  stray += ["schedule"] * (schedule != "linear") + ["cache"] * (cache != "none")
  if stray:
    raise ValueError(f"--remasking={name} does not take {stray} (block-decoding settings)")
  options = {k: v for k, v in streaming.items() if v is not None}
  if not options.get("entropy_threshold", 1):
    options["entropy_threshold"] = None  # 0: one token per step
  if name == "wedlm_streaming_imh":
    options["imh"] = IMH(alpha=rule["alpha"], num_candidates=rule["num_candidates"])
  fields = {k: v for k, v in fields.items() if v is not None}
  return StreamingSampler.for_model(config, **fields, **options)


# Flags the block decoder does not take, with the value that means "not given".
_NOT_BLOCK_SETTINGS = {"cfg_scale": 0.0,
                       "forbid_eos": False, "eos_confidence_inf": False, "schedule": "linear",
                       "cache": "none"}
# The settings of one rule (refused with any other rule), with their "not given" value.
_RULE_SETTINGS = {"alg_temp": 0.0, "alpha": 2.0, "num_candidates": 4, "imh_positions": "random",
                  "num_rollouts": 1, "rollout_tokens_per_step": 1, "rollout_greedy": False,
                  "num_particles": 8, "ess_threshold": 0.5, "position_penalty": 0.1,
                  "first_temperature": 0.9, "policy": None, "policy_temperature": None}
_RULE_TAKES = {"maskgit_plus": {"alg_temp"}, "topk_margin": {"alg_temp"}, "entropy": {"alg_temp"},
               "rank_then_sample": {"alg_temp"}, "egi": {"alg_temp", "first_temperature"},
               "wedlm_entropy": {"position_penalty"},
               "imh": {"alpha", "num_candidates", "imh_positions"},
               "rollout_imh": {"alpha", "num_candidates", "imh_positions", "num_rollouts",
                               "rollout_tokens_per_step", "rollout_greedy"},
               "smc": {"alpha", "num_particles", "ess_threshold", "imh_positions"},
               "learned_policy": {"policy", "policy_temperature"}}
_NOT_IN_BLOCKS = {
    "wedlm_streaming": "it is WeDLM's streaming decoder (WeDLM checkpoints only)",
    "wedlm_streaming_imh": "it is WeDLM's streaming decoder (WeDLM checkpoints only)"}


def block_sampler(config, rule: dict[str, Any], sampler_fields: dict[str, Any], schedule: str,
                  cache: str, streaming: dict[str, Any], block: dict[str, Any]) -> BlockDiffusion:
  """Block diffusion decoding (LLaDA2.x, SDAR) from the run's settings. Without `rule["name"]`
  (or with "threshold") LLaDA2's defaults: the model's block length, as many steps per block,
  threshold 0.95 with the scheduled low-confidence fallback, temperature 0 (`--temperature`,
  `--top_p`, `--top_k` sample as the official generate does). `block` may hold `llada21_mode`
  ("speed" or "quality": `BlockDiffusion.llada21_speed` / `llada21_quality`),
  `editing_threshold` (LLaDA2.1 token editing), `max_post_steps` and `reopened_blocks`
  (Multiple Block Editing). Another rule name runs that
  `Sampler` rule inside each block (`BlockDiffusion.remasking`; `--steps` per block, the rule's
  own settings as for LLaDA; learned_policy: `--policy`, whose params `run_benchmark` loads).
  Settings the block decoder does not take, or that the rule does not, are refused by flag."""
  family = config.family
  name = rule.get("name")
  if name in _NOT_IN_BLOCKS:
    raise ValueError(f"--remasking={name} is not supported for block diffusion ({family}): "
                     f"{_NOT_IN_BLOCKS[name]}")
  official = name in (None, "threshold")
  given = {**rule, **sampler_fields, "schedule": schedule, "cache": cache}
  stray = sorted(f"--{k}" for k, default in _NOT_BLOCK_SETTINGS.items()
                 if given.get(k, default) != default)
  stray += sorted(f"--{k}" for k, v in streaming.items() if v is not None)
  if stray:
    raise ValueError(f"block diffusion ({family}) does not take {stray}: the block decoder does "
                     "not support them; drop them")
  stray = sorted(f"--{k}" for k, default in _RULE_SETTINGS.items()
                 if given.get(k, default) != default and k not in _RULE_TAKES.get(name, ()))
  if not official and rule.get("threshold") is not None:
    stray.append("--threshold")
  if stray:
    rule_flag = f"--remasking={name}" if name else "the default rule (LLaDA2's threshold)"
    raise ValueError(f"{rule_flag} does not take {stray}: they are settings of other rules; "
                     "drop them or pick the rule they belong to")
  block_length = sampler_fields.get("block_length")
  if block_length not in (None, config.attention_block):
    raise ValueError(f"--block_length={block_length}: this {family} model attends in blocks of "
                     f"{config.attention_block}, which decoding must use; leave --block_length "
                     "unset")
  steps = sampler_fields.get("steps")
  if steps is not None and steps > config.attention_block:
    raise ValueError(f"--steps={steps} is per block: at most the model's block length "
                     f"{config.attention_block}")
  gen_length = sampler_fields.get("gen_length") or 256
  fields = {"block_length": config.attention_block, "steps": steps or config.attention_block}
  fields.update({k: sampler_fields[k] for k in ("temperature", "top_p", "top_k")
                 if sampler_fields.get(k) is not None})
  if not official:
    remasking = _block_rule(name, rule, fields, block, gen_length, steps)
    return BlockDiffusion(gen_length, remasking=remasking, **fields)
  mode = block.get("llada21_mode")
  threshold, editing = rule.get("threshold"), block.get("editing_threshold")
  if mode is not None:
    if threshold is not None or editing is not None:
      raise ValueError(f"--llada21_mode={mode} sets the thresholds itself; drop --threshold and "
                       "--editing_threshold (or the mode)")
    if mode not in ("speed", "quality"):
      raise ValueError(f"--llada21_mode must be 'speed' or 'quality', got {mode!r}")
    preset = getattr(BlockDiffusion, f"llada21_{mode}")
  else:
    fields.update({"threshold": 0.95 if threshold is None else threshold,
                   "editing_threshold": editing})
    preset = BlockDiffusion
  max_post = block.get("max_post_steps")
  if max_post is not None:
    if mode is None and editing is None:
      raise ValueError("--max_post_steps bounds token editing: it needs --editing_threshold or "
                       "--llada21_mode")
    fields["max_post_steps"] = max_post
  reopened = block.get("reopened_blocks")
  if reopened is not None:
    if mode is None and editing is None:
      raise ValueError("--reopened_blocks re-opens finished blocks for token editing: it needs "
                       "--editing_threshold or --llada21_mode")
    if reopened < 0:
      raise ValueError(f"--reopened_blocks must be >= 0, got {reopened}")
    fields["reopened_blocks"] = reopened
  return preset(gen_length, **fields)


def _block_rule(name: str, rule: dict[str, Any], fields: dict[str, Any], block: dict[str, Any],
                gen_length: int, steps: int | None):
  """The `Sampler` rule `name` to run inside the blocks (not the official threshold rule)."""
  editing = sorted(f"--{k}" for k, v in block.items() if v is not None)
  if editing:
    raise ValueError(f"{editing} edit with LLaDA2's threshold rule only, not with "
                     f"--remasking={name}: drop them or --remasking")
  sampled = sorted(f"--{k}" for k in ("temperature", "top_p", "top_k") if k in fields)
  if name in ("imh", "rollout_imh", "smc") and sampled:
    raise ValueError(f"--remasking={name} draws its values from p**alpha: drop {sampled} "
                     "(set --alpha)")
  if name != "learned_policy":
    return rule_from_name(name, **{k: rule[k] for k in _RULE_SETTINGS if k in rule
                                   and k not in ("policy", "policy_temperature")})
  if steps is not None:
    raise ValueError("--remasking=learned_policy chooses its own steps: drop --steps")
  if not rule.get("policy"):
    raise ValueError("--remasking=learned_policy needs --policy=<file>.safetensors")
  metadata = sampling.check_policy_fits(rule["policy"], gen_length, fields["block_length"])
  temperature = rule.get("policy_temperature")
  temperature = metadata.get("temperature", 1.0) if temperature is None else temperature
  if not temperature > 0:
    raise ValueError(f"--policy_temperature must be > 0, got {temperature}")
  return sampling.LearnedPolicy(temperature=temperature)
