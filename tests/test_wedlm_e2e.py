"""End to end on WeDLM: a tiny HF WeDLM checkpoint (sharded, Qwen-style tokenizer that names no
mask token, no chat template of its own) converted by checkpoints_convert/convert_hf.py and
run through experiments/run.py with the paper's WeDLM setting and with IMH."""

import json
import subprocess
import sys

import pytest

from dllm_jax.data import prompts, tokenize
from dllm_jax.eval import runner
from tests import hf_fixtures as fx
from tests.conftest import REPO_ROOT
from tests.experiment_fixtures import build_tokenizer

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|wedlm_mask|>"]


def _run(module, *flags):
  result = subprocess.run([sys.executable, "-m", module, *flags], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, shared_data):
  root = tmp_path_factory.mktemp("wedlm")
  tokenizer = build_tokenizer(shared_data, special=SPECIAL)
  ids = {token: tokenizer.token_to_id(token) for token in SPECIAL}
  cfg = fx.wedlm_hf_config("8b", vocab=tokenizer.get_vocab_size(), mask_id=ids["<|wedlm_mask|>"],
                           eos_id=ids["<|endoftext|>"], max_len=4096)
  cfg["eot_token_id"] = ids["<|im_end|>"]
  fx.write_checkpoint(root / "hf", cfg, fx.random_tensors(cfg, seed=2), num_shards=2)
  tokenizer.save(str(root / "hf" / "tokenizer.json"))
  (root / "hf" / "tokenizer_config.json").write_text(json.dumps(
      {"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}))
  _run("checkpoints_convert.convert_hf", f"--hf_dir={root / 'hf'}", f"--out_dir={root / 'jax'}")
  return root / "jax"


def test_fallback_chat_template_is_qwen_style(ckpt):
  template = prompts.load_chat_template(ckpt / "tokenizer", family="wedlm")
  assert template.source.startswith("fallback:wedlm")
  text = template.render_user("Hi")
  assert text == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
  assert template.render_user("Hi", system="Be brief.") == (
      "<|im_start|>system\nBe brief.<|im_end|>\n" + text)
  tokenizer = tokenize.CheckpointTokenizer.from_checkpoint(ckpt / "tokenizer", mask_id=0)
  ids = tokenizer.encode(text)
  assert ids[0] == tokenizer.token_to_id("<|im_start|>")
  assert ids.count(tokenizer.token_to_id("<|im_end|>")) == 1


@pytest.mark.parametrize("rule_flags,nfe", [
    (["--remasking=wedlm_entropy", "--position_penalty=0.1", "--temperature=0.1"], 16),
    (["--remasking=imh", "--num_candidates=2"], 1 + 2 * 16),
])
def test_wedlm_checkpoint_runs(ckpt, shared_data, tmp_path, rule_flags, nfe):
  """One token per step (steps = gen_length), two samples of two MBPP problems, on a (2, 4)
  mesh (the 2 kv heads do not split 4 ways: replicated)."""
  out = tmp_path / "run"
  _run("experiments.run", f"--checkpoint={ckpt}", "--benchmark=mbpp",
       f"--data_path={shared_data}", "--limit=2", "--gen_length=16", "--block_length=8",
       "--n_samples=2", "--batch_size=4", "--mesh=data=2,model=4", f"--output_dir={out}",
       *rule_flags)
  records = runner.read_results(out)
  assert len(records) == 4 and {r["sample"] for r in records} == {0, 1}
  for record in records:
    assert record["nfe"] == nfe and len(record["tokens"]) == 16
    assert record["problem_id"].startswith("mbpp/")
  config = json.loads((out / "config.json").read_text())
  assert config["model"]["family"] == "wedlm" and config["model"]["qk_norm"]
  assert config["chat_template"].startswith("fallback:wedlm")
  if "imh" in rule_flags[0]:
    assert config["sampler"].startswith("Sampler(") and "IMH(" in config["sampler"]
  else:
    assert "WeDLMEntropy(alg_temp=0.0, position_penalty=0.1)" in config["sampler"]


def test_position_penalty_belongs_to_wedlm_entropy(ckpt, shared_data, tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "experiments.run", f"--checkpoint={ckpt}", "--benchmark=mbpp",
       f"--data_path={shared_data}", "--limit=1", f"--output_dir={tmp_path / 'out'}",
       "--remasking=entropy", "--position_penalty=0.5"],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode != 0 and "does not take ['position_penalty']" in result.stderr
