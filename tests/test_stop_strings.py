"""Stop strings as Tencent's WeDLM engine applies them (`runner.cut_response`), against a plain
transcription of its per-token check (`wedlm/engine/scheduler.py:134-151`: append the token;
stop at a stop token id or when prompt + generated ids end with a tokenized stop string)."""

import numpy as np
import pytest

from dllm_jax.eval import experiment, runner


def _tencent_completion(prompt, generated, stop_ids, stop_sequences):
  token_ids, completion = list(prompt), []
  for t in generated:
    token_ids.append(t)
    completion.append(t)
    if t in stop_ids:
      return completion[:-1]  # the stop token is special: decoding skips it
    if any(len(token_ids) >= len(s) and token_ids[-len(s):] == s for s in stop_sequences):
      return completion
  return completion


def test_cut_response_follows_tencents_check():
  rng = np.random.default_rng(0)
  stop_sequences = [[3], [1, 2], [4, 4, 4]]
  cuts = set()
  for _ in range(3000):
    prompt = rng.integers(0, 6, rng.integers(0, 4)).tolist()
    generated = rng.integers(0, 8, 12).tolist()
    want = _tencent_completion(prompt, generated, {7}, stop_sequences)
    got = runner.cut_response(generated, [7], stop_sequences, prompt)
    assert got == want, (prompt, generated, got, want)
    cuts.add(len(got))
  assert len(cuts) > 8  # responses end everywhere, at stop ids, strings and the boundary
  # a stop string that begins in the prompt ends the response at its first generated token
  assert runner.cut_response([2, 5, 6], [7], [[1, 2]], prompt=[0, 1]) == [2]
  assert runner.cut_response([2, 5, 6], [7], [[1, 2]]) == [2, 5, 6]


def test_empty_stop_string_is_an_error(tmp_path):
  with pytest.raises(ValueError, match="--stop_strings has an empty entry"):
    experiment.run_benchmark(
        checkpoint_dir=tmp_path, tokenizer_dir=None, benchmark="math500", data_path=None,
        limit=1, chat_template="none", mesh_spec="data=-1,model=1", output_dir=str(tmp_path),
        n_samples=1, batch_size=1, seed=0, allow_greedy=False, rule={"name": "random"},
        sampler_fields={}, stop_strings=("Question", ""))
