"""Remasking rules by name, for command lines and configuration files."""

from __future__ import annotations

from dllm_jax.sampling.imh import IMH
from dllm_jax.sampling.position_first import EGI, RankThenSample
from dllm_jax.sampling.remasking import (DreamOrigin, Entropy, LowConfidence, MaskGitPlus, Random,
                                         Threshold, TopKMargin, WeDLMEntropy)

RULE_NAMES = ("random", "low_confidence", "maskgit_plus", "topk_margin", "entropy", "wedlm_entropy",
              "origin", "threshold", "imh", "rank_then_sample", "egi")


def rule_from_name(name: str, *, alg_temp: float = 0.0, threshold: float = 0.9,
                   alpha: float = 2.0, num_candidates: int = 4, imh_positions: str = "random",
                   eps: float = 1e-3, position_penalty: float = 0.1,
                   first_temperature: float = 0.9):
  """The rule called `name`, with the parameters that rule takes (the others must be left at
  their defaults, so a misplaced flag is an error rather than silently ignored)."""
  given = {"alg_temp": alg_temp != 0.0, "threshold": threshold != 0.9, "alpha": alpha != 2.0,
           "num_candidates": num_candidates != 4, "imh_positions": imh_positions != "random",
           "eps": eps != 1e-3, "position_penalty": position_penalty != 0.1,
           "first_temperature": first_temperature != 0.9}
  takes = {"random": set(), "low_confidence": set(), "maskgit_plus": {"alg_temp"},
           "topk_margin": {"alg_temp"}, "entropy": {"alg_temp"},
           "wedlm_entropy": {"position_penalty"}, "origin": {"eps"}, "threshold": {"threshold"},
           "imh": {"alpha", "num_candidates", "imh_positions"},
           "rank_then_sample": {"alg_temp"}, "egi": {"alg_temp", "first_temperature"}}
  if name not in takes:
    raise ValueError(f"unknown remasking rule {name!r}; expected one of {RULE_NAMES}")
  stray = sorted(k for k, set_ in given.items() if set_ and k not in takes[name])
  if stray:
    raise ValueError(f"remasking {name!r} does not take {stray}")
  if name == "imh":
    positions = {"random": Random(), "confidence": LowConfidence()}.get(imh_positions)
    if positions is None:
      raise ValueError(f"imh_positions must be 'random' or 'confidence', got {imh_positions!r}")
    return IMH(alpha=alpha, num_candidates=num_candidates, positions=positions)
  return {"random": Random, "low_confidence": LowConfidence,
          "maskgit_plus": lambda: MaskGitPlus(alg_temp), "topk_margin": lambda: TopKMargin(alg_temp),
          "entropy": lambda: Entropy(alg_temp),
          "wedlm_entropy": lambda: WeDLMEntropy(position_penalty=position_penalty),
          "origin": lambda: DreamOrigin(eps), "threshold": lambda: Threshold(threshold),
          "rank_then_sample": lambda: RankThenSample(alg_temp),
          "egi": lambda: EGI(alg_temp, first_temperature)}[name]()
