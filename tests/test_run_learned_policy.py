"""experiments/run.py --remasking=learned_policy: a policy file decodes a checkpoint, and the
file's recorded canvas/block length and shape are checked with one-line errors."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dllm_jax import models
from dllm_jax import sampling as S
from dllm_jax.eval import experiment, runner
from dllm_jax.sampling import policy
from tests.conftest import REPO_ROOT
from tests.experiment_fixtures import write_tiny_checkpoint

GEN, BLOCK = 16, 8


def _policy_file(path, bias, **metadata):
  """A policy that unmasks every position (bias +30) or none, i.e. one by the fallback (-30)."""
  params = policy.init_policy()
  params["head"]["kernel"] = jnp.zeros_like(params["head"]["kernel"])
  params["head"]["bias"] = jnp.asarray([bias], jnp.float32)
  fields = {"gen_length": GEN, "block_length": BLOCK, "temperature": 1.0, **metadata}
  S.save_policy_params(path, params, fields)
  return path


@pytest.mark.parametrize("family", ["llada", "dream", "wedlm"])
def test_policy_sampler_on_each_family(tmp_path, family):
  """All-at-once takes one step per block; none-at-once one step per token."""
  config = getattr(models, f"{family}_tiny")()
  params = models.init_params(config, seed=0)
  prompt = jnp.full((2, 4), 5, jnp.int32)
  for bias, nfe in ((30.0, GEN // BLOCK), (-30.0, GEN)):
    sampler, policy_params = experiment.learned_policy_sampler(
        config, str(_policy_file(tmp_path / f"{bias}.safetensors", bias)), None,
        {"gen_length": GEN, "block_length": BLOCK}, "linear", "none")
    assert isinstance(sampler.remasking, S.LearnedPolicy)
    out = S.generate(sampler, models.make_denoise(config), params, prompt,
                     jnp.ones_like(prompt, bool), jax.random.key(0), policy_params=policy_params)
    np.testing.assert_array_equal(out.nfe_B, [nfe, nfe])


def test_file_checks_are_one_line(tmp_path):
  config = models.llada_tiny()
  good = str(_policy_file(tmp_path / "good.safetensors", 0.0))
  make = lambda path, fields=None, temp=None: experiment.learned_policy_sampler(
      config, path, temp, fields or {"gen_length": GEN, "block_length": BLOCK}, "linear", "none")
  with pytest.raises(ValueError, match=r"trained for gen_length 16 \(decoding uses 32\)"):
    make(good, {"gen_length": 32, "block_length": BLOCK})
  with pytest.raises(ValueError, match=r"block_length 8 \(decoding uses 16\)"):
    make(good, {"gen_length": GEN, "block_length": None})
  S.save_policy_params(tmp_path / "bare.safetensors", policy.init_policy())
  with pytest.raises(ValueError, match="does not record the gen_length and block_length"):
    make(str(tmp_path / "bare.safetensors"))
  small = policy.init_policy(policy.PolicyConfig(width=64, mlp_width=256, time_features=64))
  S.save_policy_params(tmp_path / "small.safetensors", small,
                       {"gen_length": GEN, "block_length": BLOCK})
  with pytest.raises(ValueError, match=r"is float32\[64\], expected float32\[128\]"):
    make(str(tmp_path / "small.safetensors"))
  (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
  with pytest.raises(ValueError, match="not a readable safetensors file"):
    make(str(tmp_path / "junk.safetensors"))
  with pytest.raises(ValueError, match="needs --policy"):
    make(None)
  with pytest.raises(ValueError, match="policy_temperature must be > 0"):
    make(good, temp=0.0)
  sampler, _ = make(good, temp=0.5)
  assert sampler.remasking.temperature == 0.5


@pytest.mark.slow
def test_run_script_decodes_with_a_policy(tmp_path, shared_data):
  ckpt = write_tiny_checkpoint(tmp_path / "ckpt", shared_data)
  base = [sys.executable, "-m", "experiments.run", f"--checkpoint={ckpt}", "--benchmark=math500",
          f"--data_path={shared_data}", "--limit=2", f"--gen_length={GEN}",
          f"--block_length={BLOCK}", "--batch_size=2", "--mesh=data=2,model=4",
          "--remasking=learned_policy"]
  fast = _policy_file(tmp_path / "fast.safetensors", 30.0)
  result = subprocess.run(base + [f"--policy={fast}", f"--output_dir={tmp_path / 'out'}"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  records = runner.read_results(tmp_path / "out")
  assert len(records) == 2 and all(r["nfe"] == GEN // BLOCK for r in records)
  errors = {f"--policy={fast} --gen_length=32": "trained for gen_length 16 (decoding uses 32)",
            f"--policy={fast} --steps=4": "chooses its own steps",
            "--policy=/nonexistent.safetensors": "no policy weights at /nonexistent.safetensors"}
  for extra, message in errors.items():
    result = subprocess.run(base + extra.split() + [f"--output_dir={tmp_path / 'bad'}"],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
                            check=False)
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and message in lines[-1], (extra, result.stderr[-2000:])
    assert "Traceback" not in result.stderr
