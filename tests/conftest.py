"""Shared pytest set-up: 8 fake CPU devices, one persistent compilation cache per run, the
location of the benchmark data, and the `slow` marker."""

import os
import pathlib
import shutil
import tempfile

# Multi-device tests need fake CPU devices; this must happen before jax is imported.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# JAX's persistent compilation cache, in a fresh directory per run (made by the first pytest
# process; xdist workers and the scripts that tests start inherit it through the environment), so
# a program that several test modules or subprocesses compile is compiled once.
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
