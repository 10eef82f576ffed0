"""Samplers for masked diffusion LMs: one compiled decode loop, remasking rules, IMH, oracle, and
WeDLM streaming decoding with an exact prefix cache."""

from dllm_jax.sampling.block_cache import BlockCache
from dllm_jax.sampling.decode import DecodeOutput, generate
from dllm_jax.sampling.imh import IMH
from dllm_jax.sampling.learned_policy import LearnedPolicy, PolicyTrace
from dllm_jax.sampling.policy import PolicyConfig, init_policy
from dllm_jax.sampling.policy import load_params as load_policy_params
from dllm_jax.sampling.policy import save_params as save_policy_params
from dllm_jax.sampling.policy import check_fits as check_policy_fits
from dllm_jax.sampling.policy import read_metadata as read_policy_metadata
from dllm_jax.sampling.position_first import EGI, RankThenSample
from dllm_jax.sampling.rollout_imh import RolloutIMH
from dllm_jax.sampling.smc import SMC
from dllm_jax.sampling.remasking import (DreamOrigin, Entropy, LowConfidence, MaskGitPlus, Random,
                                         Threshold, TopKMargin, WeDLMEntropy)
from dllm_jax.sampling.sampler import Sampler
from dllm_jax.sampling.schedule import DreamSchedule, LinearSchedule
from dllm_jax.sampling.streaming import StreamingSampler, stream_generate
