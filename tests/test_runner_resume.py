"""The experiment runner: an interrupted run resumes to exactly what an uninterrupted run writes."""

import json
import os
import shutil
import socket

import jax
import pytest

from dllm_jax import checkpoint, models, sampling, sharding
from dllm_jax.data import jsonl, prompts, tokenize
from dllm_jax.eval import experiment, run_record, runner
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
  kwargs = {"batch_size": 4, **kwargs}
  return runner.run(**fields, sampler=sampler, n_samples=3, output_dir=out,
                    run_config={"sampler": repr(sampler)},
                    mesh=MESH, seed=1, progress=False, **kwargs)


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
  assert not runner.can_sample(greedy.replace(remasking=sampling.WeDLMEntropy()))
  assert runner.can_sample(greedy.replace(remasking=sampling.TopKMargin(alg_temp=0.5)))
  assert runner.can_sample(greedy.replace(remasking=sampling.Random()))
  assert runner.can_sample(greedy.replace(temperature=0.3))
  assert runner.can_sample(greedy.replace(remasking=sampling.IMH()))
  _run(setup, tmp_path / "out", greedy, allow_greedy=True)  # explicitly allowed


def _random_sampler(config):
  return sampling.Sampler.for_model(config, gen_length=8, steps=8, temperature=1.0,
                                    remasking=sampling.Random())


def test_a_second_run_of_the_same_directory_is_refused_naming_the_holder(setup, tmp_path):
  _, config = setup
  sampler = _random_sampler(config)
  seen = []

  def second_run(batches_done):
    if batches_done == 1:
      with pytest.raises(runner.RunInUseError) as info:
        _run(setup, tmp_path / "out", sampler)
      seen.append(str(info.value))

  _run(setup, tmp_path / "out", sampler, after_batch=second_run)
  assert len(seen) == 1 and f"pid {os.getpid()} on {socket.gethostname()}" in seen[0]
  records, count = _records(tmp_path / "out")
  assert count == len(records) == 15  # every sample once
  lines = (tmp_path / "out" / "results.jsonl").read_text().splitlines()
  assert len(lines) == 15
  _run(setup, tmp_path / "out", sampler)  # the lock went with the first run


def test_a_last_record_without_its_newline_is_kept(setup, tmp_path):
  _, config = setup
  sampler = _random_sampler(config)

  def interrupt(batches_done):
    if batches_done == 2:
      raise Interrupted

  with pytest.raises(Interrupted):
    _run(setup, tmp_path / "out", sampler, after_batch=interrupt)
  path = tmp_path / "out" / "results.jsonl"
  text = path.read_text()
  path.write_text(text[:-1])  # the crash came between the record and its newline
  last = json.loads(text.splitlines()[-1])
  batches = []
  _run(setup, tmp_path / "out", sampler, after_batch=batches.append)
  assert batches == [1, 2]  # 7 units left (15 - 8), not 8: the last record was not redone
  lines = path.read_text().splitlines()
  assert len(lines) == 15 and len({(json.loads(l)["problem_id"], json.loads(l)["sample"])
                                   for l in lines}) == 15
  assert json.loads(lines[7]) == last


def test_failed_validation_writes_nothing(setup, tmp_path):
  fields, config = setup
  sampler = _random_sampler(config)
  out = tmp_path / "out"
  long_prompts = dict(fields, prompts=[p * 200 for p in fields["prompts"]])
  with pytest.raises(ValueError, match="exceeds the model's context"):
    runner.run(**long_prompts, sampler=sampler, n_samples=3, output_dir=out,
               run_config={"sampler": repr(sampler)}, mesh=MESH, progress=False)
  with pytest.raises(ValueError, match=r"batch_size must be >= 1, got 0 \(--batch_size\)"):
    _run(setup, out, sampler, batch_size=0)
  assert not out.exists()
  _run(setup, out, sampler)  # the corrected command is accepted


def test_n_samples_can_be_raised_without_redoing_samples(setup, tmp_path):
  fields, config = setup
  sampler = _random_sampler(config)

  def run(out, n, **kwargs):
    return runner.run(**fields, sampler=sampler, n_samples=n, output_dir=out,
                      run_config={"sampler": repr(sampler), "n_samples": n}, mesh=MESH,
                      batch_size=4, seed=1, progress=False, **kwargs)

  run(tmp_path / "grown", 2)
  batches = []
  run(tmp_path / "grown", 3, after_batch=batches.append)
  assert batches == [1, 2]  # the 5 new samples only
  assert json.loads((tmp_path / "grown" / "config.json").read_text())["n_samples"] == 3
  run(tmp_path / "direct", 3)
  grown, _ = _records(tmp_path / "grown")
  direct, _ = _records(tmp_path / "direct")
  assert {u: r["tokens"] for u, r in grown.items()} == {u: r["tokens"] for u, r in direct.items()}
  with pytest.raises(ValueError, match="can be raised but not lowered"):
    run(tmp_path / "grown", 2)


def test_other_weights_in_the_same_checkpoint_path_are_refused(shared_data, tmp_path):
  ckpt = tmp_path / "ckpt"
  kwargs = dict(checkpoint_dir=ckpt, tokenizer_dir=None, benchmark="math500",
                data_path=str(shared_data), limit=1, chat_template="none", mesh_spec="data=-1",
                output_dir=str(tmp_path / "out"), n_samples=1, batch_size=8, seed=0,
                allow_greedy=False, sampler_fields={"gen_length": 8}, progress=False)
  write_tiny_checkpoint(ckpt, shared_data, seed=0)
  experiment.run_benchmark(rule={"name": "low_confidence"}, **kwargs)
  shutil.rmtree(ckpt)
  write_tiny_checkpoint(ckpt, shared_data, seed=1)  # re-converted other weights, same path
  with pytest.raises(ValueError, match="holds samples of other weights"):
    experiment.run_benchmark(rule={"name": "low_confidence"}, **kwargs)
  assert len(runner.read_results(tmp_path / "out")) == 1


def test_a_relative_output_dir_works(setup, tmp_path, monkeypatch):
  _, config = setup
  monkeypatch.chdir(tmp_path)
  out = _run(setup, "runs/rel", _random_sampler(config))
  assert out == tmp_path / "runs" / "rel"
  assert len(runner.read_results(tmp_path / "runs" / "rel")) == 15


def _benchmark(ckpt, shared_data, out, **changes):
  kwargs = dict(checkpoint_dir=ckpt, tokenizer_dir=None, benchmark="math500",
                data_path=str(shared_data), limit=1, chat_template="auto", mesh_spec="data=-1",
                output_dir=str(out), n_samples=1, batch_size=8, seed=0, allow_greedy=False,
                rule={"name": "low_confidence"}, sampler_fields={"gen_length": 8},
                progress=False)
  return experiment.run_benchmark(**{**kwargs, **changes})


def test_a_moved_checkpoint_with_identical_files_resumes_its_run(shared_data, tmp_path):
  write_tiny_checkpoint(tmp_path / "a" / "ckpt", shared_data)
  out = tmp_path / "out"
  _benchmark(tmp_path / "a" / "ckpt", shared_data, out)
  shutil.move(tmp_path / "a", tmp_path / "b")
  _benchmark(tmp_path / "b" / "ckpt", shared_data, out)  # the same files elsewhere: resumes
  assert len(runner.read_results(out)) == 1
  # Other tokenizer files are another run, wherever they lie.
  config_path = tmp_path / "b" / "ckpt" / "tokenizer" / "tokenizer_config.json"
  config_path.write_text(json.dumps({**json.loads(config_path.read_text()),
                                     "model_max_length": 64}))
  checkpoint.update_checksums(tmp_path / "b" / "ckpt")
  with pytest.raises(ValueError, match=r"differs in \['tokenizer'\]"):
    _benchmark(tmp_path / "b" / "ckpt", shared_data, out)


def test_an_older_record_with_fewer_defaulted_fields_resumes(shared_data, tmp_path):
  ckpt = write_tiny_checkpoint(tmp_path / "ckpt", shared_data)
  out = tmp_path / "out"
  _benchmark(ckpt, shared_data, out)
  new = json.loads((out / "config.json").read_text())
  template = prompts.load_chat_template(ckpt / "tokenizer", family="llada")
  # What an older dllm_jax wrote: fields added since are absent (a model-config field, the
  # sampler's cache), and paths stand where content fingerprints now do.
  old = {k: v for k, v in new.items() if k != "tokenizer"}
  old["model"] = {k: v for k, v in new["model"].items() if k != "topological_causal"}
  assert ", cache=None)" in new["sampler"]
  old["sampler"] = new["sampler"].replace(", cache=None)", ")")
  old["checkpoint"], old["chat_template"] = str(ckpt), template.source

  def resume(record, **changes):
    (out / "config.json").write_text(json.dumps(record))
    return _benchmark(ckpt, shared_data, out, **changes)

  resume(old)
  assert json.loads((out / "config.json").read_text()) == new  # rewritten in the current form
  assert len(runner.read_results(out)) == 1
  # Not the same run: a field missing that has no default, a new field away from its default,
  # another checkpoint path in an older record.
  with pytest.raises(ValueError, match=r"differs in \['model'\]"):
    resume({**old, "model": {k: v for k, v in old["model"].items() if k != "rope_theta"}})
  with pytest.raises(ValueError, match=r"differs in \['sampler'\]"):
    resume(old, cache="prefix")
  with pytest.raises(ValueError, match=r"differs in \['chat_template', 'checkpoint', 'tok"):
    resume({**old, "checkpoint": str(tmp_path / "elsewhere")})
  resume(old)  # the refusals changed nothing


def test_an_older_sampler_record_matches_at_any_depth():
  config = models.llada_tiny(vocab_size=600)
  sampler = sampling.Sampler.for_model(config, gen_length=8, remasking=sampling.LowConfidence())
  text = repr(sampler)
  assert run_record.same_sampler(text, sampler)
  older = text.replace("LowConfidence(alg_temp=0.0)", "LowConfidence()")
  assert older != text and run_record.same_sampler(older, sampler)
  assert not run_record.same_sampler(older, sampler.replace(
      remasking=sampling.LowConfidence(alg_temp=0.5)))
  assert not run_record.same_sampler(text.replace("gen_length=8, ", ""), sampler)  # no default
