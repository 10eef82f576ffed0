"""Remasking rules by name, for command lines and configuration files."""

from __future__ import annotations

from dllm_jax.sampling.imh import IMH
from dllm_jax.sampling.position_first import EGI, RankThenSample
from dllm_jax.sampling.remasking import (DreamOrigin, Entropy, LowConfidence, MaskGitPlus, Random,
                                         Threshold, TopKMargin, WeDLMEntropy)
from dllm_jax.sampling.rollout_imh import RolloutIMH
from dllm_jax.sampling.smc import SMC

RULE_NAMES = ("random", "low_confidence", "maskgit_plus", "topk_margin", "entropy", "wedlm_entropy",
              "origin", "threshold", "imh", "rollout_imh", "smc", "rank_then_sample", "egi")


def rule_from_name(name: str, *, alg_temp: float = 0.0, threshold: float = 0.9,
                   alpha: float = 2.0, num_candidates: int = 4, imh_positions: str = "random",
                   eps: float = 1e-3, position_penalty: float = 0.1,
                   first_temperature: float = 0.9, num_rollouts: int = 1,
                   rollout_tokens_per_step: int = 1, rollout_greedy: bool = False,
                   num_particles: int = 8, ess_threshold: float = 0.5):
  """The rule called `name`, with the parameters that rule takes (the others must be left at
  their defaults, so a misplaced flag is an error rather than silently ignored)."""
  given = {"alg_temp": alg_temp != 0.0, "threshold": threshold != 0.9, "alpha": alpha != 2.0,
           "num_candidates": num_candidates != 4, "imh_positions": imh_positions != "random",
           "eps": eps != 1e-3, "position_penalty": position_penalty != 0.1,
           "first_temperature": first_temperature != 0.9, "num_rollouts": num_rollouts != 1,
           "rollout_tokens_per_step": rollout_tokens_per_step != 1,
           "rollout_greedy": rollout_greedy, "num_particles": num_particles != 8,
           "ess_threshold": ess_threshold != 0.5}
  takes = {"random": set(), "low_confidence": set(), "maskgit_plus": {"alg_temp"},
           "topk_margin": {"alg_temp"}, "entropy": {"alg_temp"},
           "wedlm_entropy": {"position_penalty"}, "origin": {"eps"}, "threshold": {"threshold"},
           "imh": {"alpha", "num_candidates", "imh_positions"},
           "rollout_imh": {"alpha", "num_candidates", "imh_positions", "num_rollouts",
                           "rollout_tokens_per_step", "rollout_greedy"},
           "smc": {"alpha", "num_particles", "ess_threshold", "imh_positions"},
           "rank_then_sample": {"alg_temp"}, "egi": {"alg_temp", "first_temperature"}}
  if name not in takes:
    raise ValueError(f"unknown remasking rule {name!r}; expected one of {RULE_NAMES}")
  stray = sorted(k for k, set_ in given.items() if set_ and k not in takes[name])
  if stray:
    raise ValueError(f"remasking {name!r} does not take {stray}")
  if name in ("imh", "rollout_imh", "smc"):
    positions = {"random": Random(), "confidence": LowConfidence()}.get(imh_positions)
    if positions is None:
      raise ValueError(f"imh_positions must be 'random' or 'confidence', got {imh_positions!r}")
    if name == "smc":
      return SMC(alpha=alpha, num_particles=num_particles, ess_threshold=ess_threshold,
                 positions=positions)
    if name == "rollout_imh":
      return RolloutIMH(alpha=alpha, num_candidates=num_candidates, positions=positions,
                        num_rollouts=num_rollouts, rollout_tokens_per_step=rollout_tokens_per_step,
                        greedy=rollout_greedy)
    return IMH(alpha=alpha, num_candidates=num_candidates, positions=positions)
  return {"random": Random, "low_confidence": LowConfidence,
          "maskgit_plus": lambda: MaskGitPlus(alg_temp), "topk_margin": lambda: TopKMargin(alg_temp),
          "entropy": lambda: Entropy(alg_temp),
          "wedlm_entropy": lambda: WeDLMEntropy(position_penalty=position_penalty),
          "origin": lambda: DreamOrigin(eps), "threshold": lambda: Threshold(threshold),
          "rank_then_sample": lambda: RankThenSample(alg_temp),
          "egi": lambda: EGI(alg_temp, first_temperature)}[name]()
