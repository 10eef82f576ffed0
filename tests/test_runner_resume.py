"""The experiment runner: an interrupted run resumes to exactly what an uninterrupted run writes."""

import json

import jax
import pytest

from dllm_jax import checkpoint, models, sampling, sharding
from dllm_jax.data import jsonl, prompts, tokenize
from dllm_jax.eval import runner
from tests.experiment_fixtures import write_tiny_checkpoint


MESH = sharding.make_mesh(2, 2, jax.devices()[:4])


class Interrupted(Exception):
  pass


@pytest.fixture(scope="module")
def setup(tmp_path_factory, shared_data):
  ckpt = write_tiny_checkpoint(tmp_path_factory.mktemp("model") / "ckpt", shared_data)
  params, config = checkpoint.load(ckpt, mesh=MESH)
  tokenizer = tokenize.CheckpointTokenizer.from_checkpoint(ckpt / "tokenizer")
  problems = jsonl.load_benchmark("math500", shared_data, limit=5)
  ids = [tokenizer.encode(text)[-48:] for text in prompts.build_prompts(problems)]
  return dict(problems=problems, prompts=ids, decode=tokenizer.decode,
              stop_ids=[config.eos_token_id], pad_id=config.pad_token_id,
              model=runner.Model(models.make_denoise(config), params, config.max_length)), config


def _run(setup, out, sampler, **kwargs):
  fields, _ = setup
  return runner.run(**fields, sampler=sampler, n_samples=3, output_dir=out,
                    run_config={"sampler": repr(sampler)},
                    mesh=MESH, batch_size=4, seed=1,
                    progress=False, **kwargs)


def _records(out):
  records = runner.read_results(out)
  return {(r["problem_id"], r["sample"]): r for r in records}, len(records)


def test_interrupted_run_resumes_without_losing_or_duplicating(setup, tmp_path):
  _, config = setup
  sampler = sampling.Sampler.for_model(config, gen_length=8, steps=8, temperature=1.0,
                                       remasking=sampling.Random())
  _run(setup, tmp_path / "full", sampler)

  def interrupt(batches_done):
    if batches_done == 2:
      raise Interrupted

  with pytest.raises(Interrupted):
    _run(setup, tmp_path / "resumed", sampler, after_batch=interrupt)
  partial, _ = _records(tmp_path / "resumed")
  assert len(partial) == 8  # two batches of 4 were written before the interruption
  # A line cut off mid-write by a crash is skipped on resume.
  with open(tmp_path / "resumed" / "results.jsonl", "a") as f:
    f.write('{"problem_id": "math500/tru')
  _run(setup, tmp_path / "resumed", sampler)

  full, n_full = _records(tmp_path / "full")
  resumed, n_resumed = _records(tmp_path / "resumed")
  assert n_full == len(full) == 15 and n_resumed == len(resumed) == 15  # 5 problems x 3
  assert sorted(full) == sorted(resumed)
  for unit, record in full.items():
    assert resumed[unit]["tokens"] == record["tokens"], unit
    assert resumed[unit]["response"] == record["response"]
  assert len({tuple(r["tokens"]) for r in full.values()}) > 5  # the samples do differ
  versions = json.loads((tmp_path / "full" / "versions.json").read_text())
  assert versions["jax"] == jax.__version__


def test_a_different_configuration_in_the_same_directory_is_an_error(setup, tmp_path):
  _, config = setup
  sampler = sampling.Sampler.for_model(config, gen_length=8, temperature=1.0,
                                       remasking=sampling.Random())
  _run(setup, tmp_path / "out", sampler)
  with pytest.raises(ValueError, match=r"different configuration \(differs in \['sampler'\]\)"):
    _run(setup, tmp_path / "out", sampler.replace(temperature=0.5))


def test_greedy_collapse_is_refused(setup, tmp_path):
  _, config = setup
  greedy = sampling.Sampler.for_model(config, gen_length=8, remasking=sampling.LowConfidence())
  with pytest.raises(ValueError, match="deterministic: every sample would be the same"):
    _run(setup, tmp_path / "out", greedy)
  assert not runner.can_sample(greedy.replace(remasking=sampling.Threshold(0.9)))
  assert not runner.can_sample(greedy.replace(remasking=sampling.TopKMargin()))
  assert runner.can_sample(greedy.replace(remasking=sampling.TopKMargin(alg_temp=0.5)))
  assert runner.can_sample(greedy.replace(remasking=sampling.Random()))
  assert runner.can_sample(greedy.replace(temperature=0.3))
  assert runner.can_sample(greedy.replace(remasking=sampling.IMH()))
  _run(setup, tmp_path / "out", greedy, allow_greedy=True)  # explicitly allowed
