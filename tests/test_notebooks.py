"""Every notebook in colab/ runs top to bottom (in its small CPU mode) and is stored without outputs."""

import os
import subprocess
import sys

import nbclient
import nbformat
import pytest

from tests.conftest import REPO_ROOT

NOTEBOOKS = sorted((REPO_ROOT / "colab").glob("*.ipynb"))


def test_the_three_notebooks_exist():
  assert [p.name for p in NOTEBOOKS] == ["dilemma.ipynb", "own_denoiser.ipynb",
                                         "quickstart_tpu.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_outputs_are_cleared_in_git(path):
  notebook = nbformat.read(path, as_version=4)
  for cell in notebook.cells:
    if cell.cell_type == "code":
      assert not cell.outputs and cell.execution_count is None, f"{path.name} has outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, tmp_path, monkeypatch):
  # The kernel imports this checkout, installed or not (it runs in tmp_path).
  monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
      filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])))
  # Two fake devices, not the suite's eight: the notebooks still build and use a 2-device mesh,
  # and compiling their programs for 8 devices took most of their time (sharding over 8 is
  # tests/test_sharding.py's subject).
  monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", "").replace(
      "--xla_force_host_platform_device_count=8", "--xla_force_host_platform_device_count=2"))
  notebook = nbformat.read(path, as_version=4)
  client = nbclient.NotebookClient(notebook, timeout=900, kernel_name="python3",
                                   resources={"metadata": {"path": str(tmp_path)}})
  client.execute()  # raises CellExecutionError, naming the cell, if any cell fails
  text = "".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code"
                 for o in c.outputs)
  assert text.strip(), f"{path.name} printed nothing"


def _install_cell(path):
  notebook = nbformat.read(path, as_version=4)
  return next(c.source for c in notebook.cells if c.cell_type == "code")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_the_install_cell_finds_the_repository_without_a_placeholder(path, tmp_path):
  source = _install_cell(path)
  assert "YOUR_ORG" not in path.read_text() and "find_repository" in source
  namespace = {}
  exec(source, namespace)  # pylint: disable=exec-used  (dllm_jax is importable here: no install)
  assert namespace["find_repository"](REPO_ROOT / "colab") == REPO_ROOT.resolve()
  # Where nothing holds the repository and it is not installed: a message saying what to do.
  result = subprocess.run([sys.executable, "-S", "-c", source], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60, check=False,
                          env={k: v for k, v in os.environ.items()
                               if k not in ("PYTHONPATH", "DLLM_JAX_SOURCE")})
  assert result.returncode != 0
  assert "upload the repository folder" in result.stderr, result.stderr[-1000:]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_the_install_cell_takes_a_git_url_or_a_wheel_and_says_so(path):
  notebook = nbformat.read(path, as_version=4)
  intro = notebook.cells[0].source
  assert notebook.cells[0].cell_type == "markdown"
  for words in ("DLLM_JAX_SOURCE", "git URL", "wheel"):
    assert words in intro, (path.name, words)
  namespace = {}
  exec(_install_cell(path), namespace)  # pylint: disable=exec-used  (installed here: no pip)
  extras = "[convert]" if path.stem == "quickstart_tpu" else ""
  requirement = namespace["requirement"]
  assert requirement("https://github.com/o/dllm_jax.git") == (
      f"dllm_jax{extras} @ git+https://github.com/o/dllm_jax.git")
  assert requirement("git+https://github.com/o/dllm_jax.git@v1") == (
      f"dllm_jax{extras} @ git+https://github.com/o/dllm_jax.git@v1")
  assert requirement("/content/dllm_jax-0.1.0-py3-none-any.whl") == (
      f"/content/dllm_jax-0.1.0-py3-none-any.whl{extras}")
  assert requirement("https://x.org/dllm_jax-0.1.0-py3-none-any.whl") == (
      f"dllm_jax{extras} @ https://x.org/dllm_jax-0.1.0-py3-none-any.whl")


@pytest.mark.slow
def test_a_bad_install_source_fails_with_the_instruction(tmp_path):
  """Where dllm_jax is missing: DLLM_JAX_SOURCE naming nothing, or a file pip cannot install,
  stops the cell with what to set (pip runs only on the broken file: nothing gets installed)."""
  source = _install_cell(NOTEBOOKS[0])
  broken = tmp_path / "dllm_jax-0.1.0-py3-none-any.whl"
  broken.write_bytes(b"not a zip archive")
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  for value, expected in ((str(tmp_path / "missing.whl"), "does not exist"),
                          (str(broken), "pip could not install dllm_jax from")):
    result = subprocess.run([sys.executable, "-S", "-c", source], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120, check=False,
                            env={**env, "DLLM_JAX_SOURCE": value})
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert expected in last and "set DLLM_JAX_SOURCE to a git URL" in last, last
    assert "wheel (.whl)" in last, last
