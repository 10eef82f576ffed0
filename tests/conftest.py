"""Shared pytest set-up: 8 fake CPU devices, one persistent compilation cache per run, the
location of the benchmark data, and the `slow` marker."""

import os
import pathlib
import shutil
import tempfile

# Multi-device tests need fake CPU devices; this must happen before jax is imported. The tests'
# programs are tiny, so compiling them is most of their cost: LLVM's optimisation level 0 and
# XLA:CPU's older (non-MLIR) fusion code generator make it compile them much faster (README,
# "Tests"); benchmarks run without either.
_flags = os.environ.get("XLA_FLAGS", "")
for _flag in ("--xla_force_host_platform_device_count=8", "--xla_backend_optimization_level=0",
              "--xla_cpu_use_fusion_emitters=false"):
  if _flag.split("=")[0] not in _flags:
    _flags = f"{_flags} {_flag}".strip()
os.environ["XLA_FLAGS"] = _flags
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# JAX's persistent compilation cache, in a fresh directory per run (made by the first pytest
# process; xdist workers and the scripts that tests start inherit it through the environment), so
# a program that several test modules or subprocesses compile is compiled once. A directory given
# in JAX_COMPILATION_CACHE_DIR is used and kept instead: `make test-fast` keeps one between runs
# (programs that a change did not touch are not compiled again). No size limit is set here: JAX's
# size-limited cache lists the whole directory on every write, which made the suite minutes slower.
_OWN_CACHE_DIR = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _OWN_CACHE_DIR = tempfile.mkdtemp(prefix="dllm_jax_test_jit_cache_")
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE_DIR
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import pytest  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def pytest_configure(config):
  # `make test-fast` deselects "slow": whatever starts a subprocess, uses the sandbox or trains a model.
  config.addinivalue_line(
      "markers", "slow: starts a subprocess, uses the code sandbox or trains a model")


# What `make test-fast` leaves out: whole files and single tests that start a subprocess (the
# scripts, the math grading worker), use the code sandbox or train a model. New tests of that
# kind carry `@pytest.mark.slow` themselves.
_SLOW_FILES = {
    "test_bench_accelerator.py", "test_cli_errors.py", "test_demo.py", "test_e2e_experiments.py",
    "test_eval_code.py", "test_eval_math.py", "test_eval_sandbox.py",
    "test_eval_sandbox_kernel.py", "test_eval_sandbox_orphans.py", "test_multihost.py",
    "test_notebooks.py", "test_policy_demo.py", "test_policy_training.py",
    "test_runner_resume.py", "test_train_policy_script.py", "test_training.py",
    "test_wedlm_e2e.py", "test_run_learned_policy.py", "test_tradeoff.py"}
_SLOW_TESTS = {
    "test_the_converter_command_is_quiet_and_its_errors_are_one_line",  # test_checkpoint.py
    "test_reference_solutions_pass_and_wrong_ones_fail",                # test_data_jsonl.py
    "test_tensorflow_is_not_needed",                                    # test_data_tfds.py
    "test_sharded_block_cache_equals_single_device"}                    # test_sharding.py

# The files that took a minute or more (`--durations`), started first so that the xdist workers
# finish together instead of one running a long file alone at the end.
_LONGEST_FIRST = (
    "test_policy_demo.py", "test_sharding.py", "test_notebooks.py", "test_e2e_experiments.py",
    "test_eval_code.py", "test_bench_accelerator.py", "test_wedlm_streaming.py",
    "test_train_policy_script.py", "test_multihost.py", "test_policy_training.py",
    "test_tradeoff.py", "test_wedlm_sampling.py", "test_block_cache.py", "test_demo.py")


def pytest_collection_modifyitems(config, items):
  del config
  for item in items:
    if item.path.name in _SLOW_FILES or item.originalname in _SLOW_TESTS:
      item.add_marker(pytest.mark.slow)
  rank = {name: i for i, name in enumerate(_LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: files stay whole


def pytest_unconfigure(config):
  if _OWN_CACHE_DIR is not None and not hasattr(config, "workerinput"):
    shutil.rmtree(_OWN_CACHE_DIR, ignore_errors=True)


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
  """The benchmark files that CI places in ../shared/data beside the repository."""
  path = pathlib.Path(os.environ.get("DLLM_JAX_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
  if not path.is_dir():
    raise FileNotFoundError(f"benchmark data not found at {path}; set DLLM_JAX_SHARED_DATA")
  return path


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
  """Drops every compiled program after each test module. One process compiling the whole
  suite's programs died twice with a segmentation fault inside XLA's CPU compiler, late in the
  run and in different tests (each passes alone); keeping only one module's programs alive
  keeps the process's memory mappings small."""
  yield
  import gc

  import jax
  jax.clear_caches()
  gc.collect()
