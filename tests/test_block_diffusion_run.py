"""experiments/run.py's path for block diffusion checkpoints (LLaDA2.x, SDAR): a tiny random
LLaDA2 checkpoint in the released layout, with a real tokenizer and its own chat template,
converted and run through the resumable runner; its tokens equal a direct `generate_blocks` call
on the same prompts. SDAR runs too, and flags the block decoder does not take are refused."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dllm_jax import checkpoint, models
from dllm_jax import sampling as S
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


def _direct_inputs(ckpt, shared_data, limit):
  """(params, config, problems, tokens, mask): the run's prompts (the checkpoint's template),
  left-padded in one batch, for a direct `generate_blocks` call."""
  params, config = checkpoint.load(ckpt)
  tok = tokenize.CheckpointTokenizer.from_checkpoint(ckpt / "tokenizer",
                                                     mask_id=config.mask_token_id)
  template = prompts.load_chat_template(ckpt / "tokenizer", family=config.family)
  problems = jsonl.load_benchmark("math500", shared_data, limit)
  ids = [tok.encode(text) for text in prompts.build_prompts(problems, template)]
  tokens, mask = tokenize.pad_left(ids, config.pad_token_id, max(map(len, ids)))
  return params, config, problems, np.asarray(tokens), np.asarray(mask)


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


@pytest.fixture(scope="module")
def sdar_ckpt(tmp_path_factory, tokenizer):
  """SDAR layout (block 4), no chat template of its own."""
  ids = {token: tokenizer.token_to_id(token) for token in SPECIAL}
  cfg = lf.sdar_hf_config(vocab=tokenizer.get_vocab_size(), mask_id=ids["<|mask|>"],
                          eos_id=ids["<|endoftext|>"], max_len=1024)
  return _convert(tmp_path_factory.mktemp("sdar"), cfg, lf.sdar_tensors(cfg, seed=4), tokenizer,
                  {"eos_token": "<|endoftext|>"})


def test_sdar_runs_with_the_quality_preset(sdar_ckpt, tmp_path, shared_data):
  ckpt = sdar_ckpt
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


# The rules run.py takes for block models, as run.py passes them, and the decoder they must build.
RULES = {
    "low_confidence": ({"name": "low_confidence"}, {}, dict(remasking=S.LowConfidence())),
    "random": ({"name": "random"}, {"temperature": 1.0},
               dict(remasking=S.Random(), temperature=1.0)),
    "imh": ({"name": "imh", "alpha": 3.0, "num_candidates": 2}, {"steps": 8},
            dict(remasking=S.IMH(alpha=3.0, num_candidates=2), steps=8)),
    # On SDAR (dense, block 4, 8 tokens): their nested loops compile faster than on the MoE.
    "smc": ({"name": "smc", "num_particles": 3, "ess_threshold": 1.0}, {"gen_length": 8},
            dict(remasking=S.SMC(num_particles=3, ess_threshold=1.0), block_length=4, steps=4)),
    "rollout_imh": ({"name": "rollout_imh", "num_candidates": 2, "num_rollouts": 2,
                     "rollout_tokens_per_step": 2}, {"gen_length": 8},
                    dict(remasking=S.RolloutIMH(num_candidates=2, num_rollouts=2,
                                                rollout_tokens_per_step=2),
                         block_length=4, steps=4)),
}


@pytest.mark.parametrize("name", sorted(RULES))
def test_rules_inside_blocks_equal_generate_blocks(name, request, shared_data, tmp_path):
  """--remasking=<rule> on a LLaDA2 (or SDAR) checkpoint: the runner's records (tokens and each
  row's own forward count) equal a direct `generate_blocks` call with the same rule and the
  runner's per-sample keys."""
  rule, fields, decoder_fields = RULES[name]
  ckpt = request.getfixturevalue("sdar_ckpt" if "block_length" in decoder_fields
                                 else "llada2_ckpt")
  gen = fields.get("gen_length", GEN)
  out = tmp_path / "run"
  experiment.run_benchmark(
      checkpoint_dir=ckpt, tokenizer_dir=None, benchmark="math500",
      data_path=str(shared_data), limit=2, chat_template="auto", mesh_spec="data=-1,model=1",
      output_dir=str(out), n_samples=1, batch_size=2, seed=5, allow_greedy=False,
      rule=_rule(**rule), sampler_fields=dict(FIELDS, **fields), progress=False, block={})
  decoder = bd.BlockDiffusion(gen, **decoder_fields)
  assert json.loads((out / "config.json").read_text())["sampler"] == repr(decoder)
  params, config, problems, tokens, mask = _direct_inputs(ckpt, shared_data, 2)
  keys = jnp.stack([runner.unit_key(5, p.id, 0) for p in problems])
  direct = bd.generate_blocks(decoder, models.make_denoise(config), params, tokens, mask,
                              mask_id=config.mask_token_id, eos_id=config.eos_token_id,
                              pad_id=config.pad_token_id, rng=keys)
  by_id = {p.id: b for b, p in enumerate(problems)}
  records = runner.read_results(out)
  assert len(records) == 2
  for record in records:
    b = by_id[record["problem_id"]]
    assert record["tokens"] == direct.tokens[b].tolist()
    assert record["nfe"] == direct.nfe_B[b]
  # The rule ran (not the default): the default rule's tokens differ.
  default = bd.generate_blocks(bd.BlockDiffusion(gen, block_length=config.attention_block,
                                                 steps=config.attention_block),
                               models.make_denoise(config), params, tokens, mask,
                               mask_id=config.mask_token_id,
                               eos_id=config.eos_token_id, pad_id=config.pad_token_id)
  assert (default.tokens != direct.tokens).any() or (default.nfe_B != direct.nfe_B).any()
  if name == "imh":  # a step is 1 + K passes
    assert all(r["nfe"] % 3 == 0 for r in records)



@pytest.mark.parametrize("rule,fields,settings,message", [
    ({"name": "smc"}, {"temperature": 0.7}, {},
     r"--remasking=smc draws its values from p\*\*alpha: drop \['--temperature'\]"),
    ({"name": "smc", "num_candidates": 2}, {}, {},
     r"--remasking=smc does not take \['--num_candidates'\]"),
    ({"name": "imh", "num_rollouts": 2}, {}, {},
     r"--remasking=imh does not take \['--num_rollouts'\]"),
    ({"name": "rollout_imh"}, {"top_p": 0.9}, {},
     r"--remasking=rollout_imh draws its values from p\*\*alpha: drop \['--top_p'\]"),
    ({"name": "wedlm_streaming"}, {}, {}, "WeDLM's streaming decoder"),
    ({"alpha": 4.0}, {"cfg_scale": 1.0}, {}, r"does not take \['--cfg_scale'\]"),
    ({"alpha": 4.0}, {}, {}, r"the default rule \(LLaDA2's threshold\) does not take "
                             r"\['--alpha'\]"),
    ({"name": "random", "alpha": 3.0}, {}, {}, r"--remasking=random does not take \['--alpha'\]"),
    ({"name": "low_confidence", "threshold": 0.8}, {}, {},
     r"--remasking=low_confidence does not take \['--threshold'\]"),
    ({"name": "random"}, {}, {"editing_threshold": 0.5},
     r"\['--editing_threshold'\] edit with LLaDA2's threshold rule only, not with "
     "--remasking=random"),
    ({"name": "low_confidence"}, {}, {"llada21_mode": "speed"}, r"\['--llada21_mode'\] edit"),
    ({"name": "imh"}, {"temperature": 0.5, "top_k": 3}, {},
     r"--remasking=imh draws its values from p\*\*alpha: drop \['--temperature', '--top_k'\]"),
    ({"name": "learned_policy"}, {}, {}, "needs --policy="),
    ({"name": "learned_policy", "policy": "p.safetensors"}, {"steps": 2}, {},
     "chooses its own steps: drop --steps"),
    ({"name": "low_confidence"}, {"steps": 8}, {}, "--steps=8 is per block: at most the model's "
                                                   "block length 4"),
    ({}, {"temperature": -1.0}, {}, "temperature must be >= 0"),
    ({}, {"block_length": 8}, {}, "--block_length=8: this llada2_moe model attends in blocks of 4"),
    ({"threshold": 0.9}, {}, {"llada21_mode": "speed"}, "sets the thresholds itself"),
    ({}, {}, {"max_post_steps": 4}, "--max_post_steps bounds token editing"),
    ({}, {}, {"reopened_blocks": 1}, "--reopened_blocks re-opens finished blocks for token "
                                     "editing: it needs --editing_threshold"),
    ({}, {}, {"editing_threshold": 0.5, "reopened_blocks": -1}, "--reopened_blocks must be >= 0"),
    ({"name": "low_confidence"}, {}, {"reopened_blocks": 1}, r"\['--reopened_blocks'\] edit"),
    ({}, {}, {"editing_threshold": 1.5}, r"editing_threshold must be in \[0, 1\]"),
])
def test_flags_the_block_decoder_does_not_take_are_named(rule, fields, settings, message):
  with pytest.raises(ValueError, match=message):
    experiment.block_sampler(models.llada2_tiny(), _rule(**rule), dict(FIELDS, **fields),
                             "linear", "none", {}, settings)
  with pytest.raises(ValueError, match=r"does not take \['--cache', '--schedule', '--window'\]"):
    experiment.block_sampler(models.llada2_tiny(), _rule(), FIELDS, "dream", "dual",
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
  assert make(llada21_mode="quality", reopened_blocks=2) == bd.BlockDiffusion(
      GEN, block_length=4, steps=4, threshold=0.7, editing_threshold=0.5, reopened_blocks=2)
  assert not runner.can_sample(make())
  hot = make(fields={"temperature": 0.7, "top_p": 0.9, "top_k": 5})
  assert hot == bd.BlockDiffusion(GEN, block_length=4, steps=4, threshold=0.95, temperature=0.7,
                                  top_p=0.9, top_k=5)
  assert runner.can_sample(hot)
  imh = make({"name": "imh", "alpha": 4.0, "num_candidates": 2, "imh_positions": "confidence"},
             {"steps": 2})
  assert imh == bd.BlockDiffusion(GEN, block_length=4, steps=2, remasking=S.IMH(
      alpha=4.0, num_candidates=2, positions=S.LowConfidence()))
  assert runner.can_sample(imh) and runner.can_sample(make({"name": "random"}))
  rollouts = make({"name": "rollout_imh", "num_candidates": 3, "num_rollouts": 2,
                   "rollout_tokens_per_step": 2, "rollout_greedy": True})
  assert rollouts == bd.BlockDiffusion(GEN, block_length=4, steps=4, remasking=S.RolloutIMH(
      num_candidates=3, num_rollouts=2, rollout_tokens_per_step=2, greedy=True))
  assert runner.can_sample(rollouts)
  smc = make({"name": "smc", "alpha": 3.0, "num_particles": 2, "ess_threshold": 0.3,
              "imh_positions": "confidence"})
  assert smc == bd.BlockDiffusion(GEN, block_length=4, steps=4, remasking=S.SMC(
      alpha=3.0, num_particles=2, ess_threshold=0.3, positions=S.LowConfidence()))
  assert runner.can_sample(smc)
  assert not runner.can_sample(make({"name": "low_confidence"}))
  assert make({"name": "egi", "first_temperature": 1.5}, {"temperature": 0.5}) == bd.BlockDiffusion(
      GEN, block_length=4, steps=4, remasking=S.EGI(first_temperature=1.5), temperature=0.5)
  assert make({"name": "threshold"}) == make()  # the official rule by its name


def test_learned_policy_runs_inside_blocks(sdar_ckpt, shared_data, tmp_path):
  """--remasking=learned_policy --policy=<file> on a block model (SDAR, block 4): the file must
  be trained for this gen_length and the model's block length, its temperature is the default,
  and the run's records equal `generate_blocks` with the file's params and the runner's keys."""
  gen = 8
  path = tmp_path / "policy.safetensors"
  params = S.init_policy(S.PolicyConfig())
  leaves, tree = jax.tree.flatten(params)  # random weights: the smart init ignores its inputs
  keys = jax.random.split(jax.random.key(5), len(leaves))
  params = jax.tree.unflatten(tree, [x + 0.5 * jax.random.normal(k, x.shape, x.dtype)
                                     for x, k in zip(leaves, keys)])
  S.save_policy_params(path, params, {"gen_length": gen, "block_length": 4, "temperature": 0.7})
  rule = _rule(name="learned_policy", policy=str(path))
  make = lambda **changes: experiment.block_sampler(
      models.sdar_tiny(), dict(rule, **changes), dict(FIELDS, gen_length=gen, temperature=1.0),
      "linear", "none", {}, {})
  decoder = bd.BlockDiffusion(gen, block_length=4, steps=4, temperature=1.0,
                              remasking=S.LearnedPolicy(temperature=0.7))
  assert make() == decoder
  assert make(policy_temperature=0.3).remasking == S.LearnedPolicy(temperature=0.3)
  with pytest.raises(ValueError, match=r"was trained for gen_length 8 \(decoding uses 32\)"):
    experiment.block_sampler(models.sdar_tiny(), rule, dict(FIELDS), "linear", "none", {}, {})

  out = tmp_path / "run"
  experiment.run_benchmark(
      checkpoint_dir=sdar_ckpt, tokenizer_dir=None, benchmark="math500",
      data_path=str(shared_data), limit=2, chat_template="auto", mesh_spec="data=-1,model=1",
      output_dir=str(out), n_samples=1, batch_size=2, seed=1, allow_greedy=False,
      rule=dict(rule), sampler_fields=dict(FIELDS, gen_length=gen, temperature=1.0),
      progress=False, block={})
  model_params, config, problems, tokens, mask = _direct_inputs(sdar_ckpt, shared_data, 2)
  direct = bd.generate_blocks(decoder, models.make_denoise(config), model_params, tokens, mask,
                              mask_id=config.mask_token_id, eos_id=config.eos_token_id,
                              pad_id=config.pad_token_id, policy_params=params,
                              rng=jnp.stack([runner.unit_key(1, p.id, 0) for p in problems]))
  by_id = {p.id: b for b, p in enumerate(problems)}
  records = runner.read_results(out)
  assert len(records) == 2
  for record in records:
    assert record["tokens"] == direct.tokens[by_id[record["problem_id"]]].tolist()
    assert record["nfe"] == direct.nfe_B[by_id[record["problem_id"]]]


@pytest.mark.slow
def test_run_script_refuses_in_one_line(llada2_ckpt, shared_data, tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "experiments.run", f"--checkpoint={llada2_ckpt}",
       "--benchmark=math500", f"--data_path={shared_data}", "--limit=1",
       f"--output_dir={tmp_path / 'out'}", "--remasking=wedlm_streaming"],
      cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("error: --remasking=wedlm_streaming is not supported for block "
                         "diffusion"), last
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
