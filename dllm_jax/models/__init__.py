"""Model configs (presets, HF config parsing) and the Flax NNX transformer as a pure function."""

from dllm_jax.models.config import (PRESETS, ModelConfig, dream_7b, dream_tiny, from_hf_config,
                                    llada2_flash, llada2_mini, llada2_tiny, llada_8b, llada_sized,
                                    llada_tiny, sdar_tiny, wedlm_7b, wedlm_7b_tiny,
                                    wedlm_8b, wedlm_tiny)
from dllm_jax.models.model import (DenoiseFn, Denoiser, Params, abstract_params, cast_params,
                                   init_params, make_denoise, param_count)
