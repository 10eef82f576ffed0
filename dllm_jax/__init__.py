"""dllm_jax: masked diffusion language models (LLaDA, Dream) and their samplers in JAX/Flax."""

__version__ = "0.1.0"
