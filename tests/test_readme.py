"""The README's code example runs, and its numbers match the library."""

import re

import pytest

from dllm_jax import models, sharding
from tests.conftest import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text()


def _block_after(marker: str) -> str:
  start = README.index(marker)
  return re.search(r"```python\n(.*?)```", README[start:], re.S).group(1)


def test_import_example_runs():
  namespace = {}
  exec(compile(_block_after("This example runs as a test"), "README.md", "exec"), namespace)
  out = namespace["out"]
  assert out.generated_BG.shape == (1, 8)
  assert int(out.nfe_B[0]) == 8
  assert not (out.generated_BG == namespace["MASK"]).any()


@pytest.mark.parametrize("model_size", [1, 2, 4, 8, 16])
def test_memory_table(model_size):
  row = re.search(rf"^\| {model_size} \| ([\d.]+) GiB[^|]*\| ([\d.]+) GiB[^|]*\| ([\d.]+) GiB",
                  README, re.M)
  for preset, shown in ((models.llada_8b, row.group(1)), (models.dream_7b, row.group(2)),
                        (models.wedlm_8b, row.group(3))):
    config = preset(param_dtype="bfloat16", dtype="bfloat16")
    assert f"{sharding.param_bytes_per_device(config, model_size) / 2**30:.2f}" == shown
