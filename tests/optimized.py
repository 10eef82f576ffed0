"""`generate` compiled at XLA's default optimisation, for the few tests whose cost is running the
program rather than compiling it.

The suite compiles at LLVM optimisation level 0 (tests/conftest.py): much faster to compile, but
the code runs slower. A test that decodes 100k samples with 16 candidates each spent 16 s running
at level 0 and 4 s at level 3 (plus 1.3 s more compiling), so such tests compile their one
program at level 3; everything else stays at level 0."""

import jax

from dllm_jax import sampling as S


def generate(sampler, denoise_fn, params, prompt_BP, prompt_mask_BP, rng):
  """`sampling.generate(...)`, the same program compiled at optimisation level 3."""
  lowered = S.generate.lower(sampler, denoise_fn, params, prompt_BP, prompt_mask_BP, rng)
  compiled = lowered.compile(compiler_options={"xla_backend_optimization_level": 3})
  return compiled(params, prompt_BP, prompt_mask_BP, rng)  # sampler and denoise_fn are static
