"""experiments/run.py's path for block diffusion checkpoints (LLaDA2.x, SDAR): a tiny random
LLaDA2 checkpoint in the released layout, with a real tokenizer and its own chat template,
converted and run through the resumable runner; its tokens equal a direct `generate_blocks` call
on the same prompts. SDAR runs too, and flags the block decoder does not take are refused."""

import json
import subprocess
import sys

import numpy as np
import pytest

from dllm_jax import checkpoint, models
from dllm_jax.data import jsonl, prompts, tokenize
from dllm_jax.eval import experiment, report, runner
from dllm_jax.sampling import block_diffusion as bd
from tests import hf_fixtures as fx
from tests import llada2_fixtures as lf
from tests.conftest import REPO_ROOT
from tests.experiment_fixtures import build_tokenizer, write_tiny_checkpoint

SPECIAL = ["<|endoftext|>", "<|mask|>", "<|role_end|>", "<|im_start|>", "<|im_end|>"]
GEN = 32  # tokens per sample: at block 32, one block plus the one a prompt's tail may need
FIELDS = dict(gen_length=GEN, block_length=None, steps=None, temperature=None, top_p=None,
              top_k=None, cfg_scale=0.0, forbid_eos=False, eos_confidence_inf=False)


def _rule(**changes):
  return {"name": None, "threshold": None, "alg_temp": 0.0, "alpha": 2.0, "num_candidates": 4,
          "imh_positions": "random", "num_rollouts": 1, "rollout_tokens_per_step": 1,
          "rollout_greedy": False, "num_particles": 8, "ess_threshold": 0.5,
          "position_penalty": 0.1, "first_temperature": 0.9, "policy": None,
          "policy_temperature": None, **changes}


def _convert(root, cfg, tensors, tokenizer, tokenizer_config):
  fx.write_checkpoint(root / "hf", cfg, tensors, num_shards=2)
  tokenizer.save(str(root / "hf" / "tokenizer.json"))
  (root / "hf" / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
  checkpoint.convert_hf(root / "hf", root / "jax")
  return root / "jax"


@pytest.fixture(scope="module")
def tokenizer(shared_data):
  return build_tokenizer(shared_data, special=SPECIAL)


@pytest.fixture(scope="module")
def llada2_ckpt(tmp_path_factory, tokenizer):
  """LLaDA2 layout (block 32, the released default), its chat template in tokenizer_config."""
  ids = {token: tokenizer.token_to_id(token) for token in SPECIAL}
  cfg = lf.llada2_hf_config(vocab=tokenizer.get_vocab_size(), mask_id=ids["<|mask|>"],
                            eos_id=ids["<|endoftext|>"], max_len=1024)
  tensors = lf.llada2_tensors(cfg, seed=3)
  tensors["lm_head.weight"] = tensors["lm_head.weight"] * 6.0  # confident: several per step
  return _convert(tmp_path_factory.mktemp("llada2"), cfg, tensors, tokenizer,
                  {"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
                   "chat_template": prompts.LLADA2_FALLBACK_TEMPLATE + "{# own #}"})


def test_llada2_runs_resumes_and_equals_generate_blocks(llada2_ckpt, shared_data, tmp_path):
  out = tmp_path / "run"
  run = lambda **block: experiment.run_benchmark(
      checkpoint_dir=llada2_ckpt, tokenizer_dir=None, benchmark="math500",
      data_path=str(shared_data), limit=2, chat_template="auto", mesh_spec="data=-1,model=1",
      output_dir=str(out), n_samples=1, batch_size=2, seed=0, allow_greedy=False,
      rule=_rule(), sampler_fields=dict(FIELDS), progress=False, block=block)
  run()
  records = sorted(runner.read_results(out), key=lambda r: r["problem_id"])
  record_config = json.loads((out / "config.json").read_text())
  assert record_config["model"]["family"] == "llada2_moe"
  assert record_config["sampler"] == repr(bd.BlockDiffusion(GEN))  # LLaDA2's defaults
  assert record_config["chat_template"].startswith("tokenizer_config.json ")  # its own

  # The same prompts decoded directly: the checkpoint's template, left-padded, one batch.
  params, config = checkpoint.load(llada2_ckpt)
  tok = tokenize.CheckpointTokenizer.from_checkpoint(llada2_ckpt / "tokenizer",
                                                     mask_id=config.mask_token_id)
  template = prompts.load_chat_template(llada2_ckpt / "tokenizer", family="llada2_moe")
  problems = jsonl.load_benchmark("math500", shared_data, 2)
  texts = prompts.build_prompts(problems, template)
  assert all(t.startswith("<role>SYSTEM</role>detailed thinking off<|role_end|>") for t in texts)
  ids = [tok.encode(text) for text in texts]
  tokens, mask = tokenize.pad_left(ids, config.pad_token_id, max(map(len, ids)))
  direct = bd.generate_blocks(bd.BlockDiffusion(GEN), models.make_denoise(config), params,
                              np.asarray(tokens), np.asarray(mask), mask_id=config.mask_token_id,
                              eos_id=config.eos_token_id, pad_id=config.pad_token_id)
  by_id = {p.id: b for b, p in enumerate(problems)}
  assert len(records) == 2
  for record in records:
    assert record["tokens"] == direct.tokens[by_id[record["problem_id"]]].tolist()
  # generate_blocks lays out the blocks this batch needs, the runner those any prompt length
  # may need; with these prompts (remainders 23 and 19 mod 32) both decode 2 blocks, so the
  # forward counts are comparable too: each record has its row's own count, the count of that
  # prompt decoded alone.
  assert direct.layout.num_blocks - direct.layout.first_block == -(-(GEN + 31) // 32) == 2
  assert all(r["nfe"] == direct.nfe_B[by_id[r["problem_id"]]] for r in records), direct.nfe_B
  assert max(direct.nfe_B) <= direct.forward_passes  # the batch waits for its slowest row per block
  alone = bd.generate_blocks(bd.BlockDiffusion(GEN), models.make_denoise(config), params,
                             np.asarray([ids[0]]), mask_id=config.mask_token_id,
                             eos_id=config.eos_token_id, pad_id=config.pad_token_id)
  assert alone.nfe_B.tolist() == [alone.forward_passes] == [direct.nfe_B[0]]
  summary = report.summarize(out)
  assert summary.problems == 2 and set(summary.pass_at) == {1}
  assert summary.mean_nfe == records[0]["nfe"]

  run()  # resuming a finished run decodes nothing
  assert len(runner.read_results(out)) == 2
  with pytest.raises(ValueError, match="different configuration"):
    run(editing_threshold=0.5)  # another sampler in the same directory: refused


def test_sdar_runs_with_the_quality_preset(tmp_path, shared_data, tokenizer):
  ids = {token: tokenizer.token_to_id(token) for token in SPECIAL}
  cfg = lf.sdar_hf_config(vocab=tokenizer.get_vocab_size(), mask_id=ids["<|mask|>"],
                          eos_id=ids["<|endoftext|>"], max_len=1024)
  ckpt = _convert(tmp_path, cfg, lf.sdar_tensors(cfg, seed=4), tokenizer,
                  {"eos_token": "<|endoftext|>"})
  out = tmp_path / "run"
  experiment.run_benchmark(
      checkpoint_dir=ckpt, tokenizer_dir=None, benchmark="math500", data_path=str(shared_data),
      limit=1, chat_template="auto", mesh_spec="data=-1,model=1", output_dir=str(out),
      n_samples=1, batch_size=1, seed=0, allow_greedy=False, rule=_rule(),
      sampler_fields=dict(FIELDS, gen_length=8), progress=False,
      block={"llada21_mode": "quality"})
  [record] = runner.read_results(out)
  record_config = json.loads((out / "config.json").read_text())
  assert record_config["model"]["family"] == "sdar"
  assert record_config["sampler"] == repr(
      bd.BlockDiffusion.llada21_quality(8, block_length=4, steps=4))
  assert record_config["chat_template"].startswith("fallback:sdar")
  assert len(record["tokens"]) == 8 and record["nfe"] >= 2  # gen 8 at block 4: >= 2 blocks


@pytest.mark.parametrize("rule,fields,settings,message", [
    ({"name": "low_confidence"}, {}, {}, "--remasking=low_confidence is not supported"),
    ({"alpha": 4.0}, {"cfg_scale": 1.0}, {}, r"does not take \['--alpha', '--cfg_scale'\]"),
    ({}, {"temperature": -1.0}, {}, "temperature must be >= 0"),
    ({}, {"block_length": 8}, {}, "--block_length=8: this llada2_moe model attends in blocks of 4"),
    ({"threshold": 0.9}, {}, {"llada21_mode": "speed"}, "sets the thresholds itself"),
    ({}, {}, {"max_post_steps": 4}, "--max_post_steps bounds token editing"),
    ({}, {}, {"editing_threshold": 1.5}, r"editing_threshold must be in \[0, 1\]"),
])
def test_flags_the_block_decoder_does_not_take_are_named(rule, fields, settings, message):
  with pytest.raises(ValueError, match=message):
    experiment.block_sampler(models.llada2_tiny(), _rule(**rule), dict(FIELDS, **fields),
                             "linear", "none", {}, settings)
  with pytest.raises(ValueError, match=r"does not take \['--cache', '--window'\]"):
    experiment.block_sampler(models.llada2_tiny(), _rule(), FIELDS, "linear", "dual",
                             {"window": 4}, {})


def test_settings_map_to_the_decoder():
  config = models.sdar_tiny()
  make = lambda rule=None, fields=None, **block: experiment.block_sampler(
      config, _rule(**(rule or {})), dict(FIELDS, **(fields or {})), "linear", "none", {}, block)
  assert make() == bd.BlockDiffusion(GEN, block_length=4, steps=4, threshold=0.95)
  assert make({"name": "threshold", "threshold": 0.8}, {"steps": 2, "temperature": 0.0},
              editing_threshold=0.6, max_post_steps=3) == bd.BlockDiffusion(
                  GEN, block_length=4, steps=2, threshold=0.8, editing_threshold=0.6,
                  max_post_steps=3)
  assert make(llada21_mode="speed") == bd.BlockDiffusion(GEN, block_length=4, steps=4,
                                                         threshold=0.5, editing_threshold=0.0)
  assert not runner.can_sample(make())
  hot = make(fields={"temperature": 0.7, "top_p": 0.9, "top_k": 5})
  assert hot == bd.BlockDiffusion(GEN, block_length=4, steps=4, threshold=0.95, temperature=0.7,
                                  top_p=0.9, top_k=5)
  assert runner.can_sample(hot)


@pytest.mark.slow
def test_run_script_refuses_in_one_line(llada2_ckpt, shared_data, tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "experiments.run", f"--checkpoint={llada2_ckpt}",
       "--benchmark=math500", f"--data_path={shared_data}", "--limit=1",
       f"--output_dir={tmp_path / 'out'}", "--remasking=entropy"],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: --remasking=entropy is not supported for block diffusion"), last
  assert not (tmp_path / "out").exists()


def test_block_settings_on_another_family_are_named(tmp_path, shared_data):
  ckpt = write_tiny_checkpoint(tmp_path / "llada", shared_data)
  with pytest.raises(ValueError, match=r"\['--editing_threshold', '--llada21_mode'\] are settings "
                                       "of block diffusion checkpoints"):
    experiment.run_benchmark(
        checkpoint_dir=ckpt, tokenizer_dir=None, benchmark="math500", data_path=str(shared_data),
        limit=1, chat_template="none", mesh_spec="data=-1,model=1",
        output_dir=str(tmp_path / "out"), n_samples=1, batch_size=1, seed=0, allow_greedy=False,
        rule=_rule(), sampler_fields=dict(FIELDS), progress=False,
        block={"editing_threshold": 0.5, "llada21_mode": "speed", "max_post_steps": None})
  assert not (tmp_path / "out").exists()
