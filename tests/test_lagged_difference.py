"""The lagged-difference task: answers against a plain loop, the batch encoding, the split, and the
length law that makes full-diffusion confidence decoding commit EOS too early."""

import numpy as np
import pytest

from dllm_jax.tasks import builtin
from dllm_jax.tasks import lagged_difference as ls
from dllm_jax.tasks.char_tokenizer import CharTokenizer

TASK = ls.LaggedDifferenceTask()


def _plain_answer(seed: str, lag: int = 8, length: int = 32) -> str:
  x = list(map(int, seed))
  for _ in range(length):
    x.append(abs(x[-1] - x[-lag]))
    if x[-1] == 0:
      break
  return "".join(map(str, x[len(seed):]))


def test_answer_continues_the_recurrence_up_to_the_first_zero():
  assert TASK.answer("31415926") == "322145330"   # |6 - 3|, |3 - 1|, |2 - 4|, ..., |3 - 3|
  assert TASK.answer("10000000") == "111111110"   # |0 - 1| = 1 eight times, then |1 - 1|
  assert TASK.answer("00000000") == "0"
  assert ls.LaggedDifferenceTask(lag=2).answer("11") == "0"
  assert ls.LaggedDifferenceTask(lag=2).answer("13") == "2110"  # |3-1|, |2-3|, |1-2|, |1-1|
  for seed in ("31415926", "27182818", "99999999", "12345678", "90817263"):
    assert TASK.answer(seed) == _plain_answer(seed)
  long_seed = next(s for s in TASK.sample("train", 5000, np.random.default_rng(0))
                   if len(TASK.answer(s)) == 32)
  assert "0" not in TASK.answer(long_seed)[:-1]  # a 0 ends it, or gen_length does
  assert TASK.verify("10000000", "111111110") and not TASK.verify("10000000", "11111111")
  assert not TASK.verify("10000000", "1111111101") and not TASK.verify("10000000", "11111111?")


def test_batches_match_a_plain_loop_and_never_hold_held_out_problems():
  tokenizer = CharTokenizer()
  prompt, mask, answer = ls.sample_batch(TASK, tokenizer, np.random.default_rng(0), 300)
  assert prompt.shape == (300, 8) and mask.all() and answer.shape == (300, 32)
  for p_row, a_row in zip(prompt, answer):
    seed = tokenizer.decode(p_row)
    assert len(seed) == 8 and not TASK.is_heldout(seed)
    expected = _plain_answer(seed)
    assert tokenizer.decode(a_row) == expected
    assert (a_row[len(expected):] == tokenizer.eos_id).all()  # EOS-padded to 32


def test_split_is_disjoint_reproducible_and_about_a_tenth():
  held = TASK.sample_problems("heldout", 200, seed=0)
  assert len(set(held)) == 200 and all(TASK.is_heldout(p) for p in held)
  assert held == TASK.sample_problems("heldout", 200, seed=0)
  train = TASK.sample_problems("train", 200, seed=0)
  assert not set(train) & set(held) and not any(TASK.is_heldout(p) for p in train)
  rng = np.random.default_rng(1)  # uniform seeds, not drawn through the split
  share = np.mean([TASK.is_heldout("".join(map(str, row)))
                   for row in rng.integers(0, 10, (20_000, 8)).tolist()])
  assert abs(share - 0.1) < 0.0106  # 5 standard errors
  with pytest.raises(ValueError, match="split"):
    TASK.sample_problems("test", 1, seed=0)
  with pytest.raises(ValueError, match="lag"):
    ls.LaggedDifferenceTask(lag=1)


def test_answer_lengths_put_most_of_the_late_canvas_on_eos():
  """Measured law of the answer length. Before anything is written, position p (0-based) is EOS
  with chance P(length <= p): 0.71 at p = 10 and 0.90 at p = 15, so a full-diffusion rule that
  commits EOS there at that confidence truncates the answers that are longer (29% and 10%)."""
  seeds = TASK.sample("train", 20_000, np.random.default_rng(2))
  lengths = np.array([len(TASK.answer(s)) for s in seeds])
  eos_chance = {p: np.mean(lengths <= p) for p in (5, 10, 15, 20)}
  assert 0.39 < eos_chance[5] < 0.44 and 0.68 < eos_chance[10] < 0.73
  assert 0.88 < eos_chance[15] < 0.92 and 0.97 < eos_chance[20] < 0.99
  assert lengths.min() == 1 and lengths.max() == 32 and 7.3 < lengths.mean() < 8.3


def test_builtin_record_round_trips_both_tasks():
  for task in (TASK, ls.LaggedDifferenceTask(lag=4, gen_length=16)):
    assert builtin.task_from_record(builtin.task_record(task)) == task
  countdown_record = {"num_numbers": 3, "min_number": 1, "max_number": 9, "min_target": 1,
                      "max_target": 99, "heldout_per_mille": 100, "salt": "countdown-v1"}
  assert type(builtin.task_from_record(countdown_record)).__name__ == "CountdownTask"
  with pytest.raises(ValueError, match="unknown built-in task 'sudoku'"):
    builtin.task_from_record({"name": "sudoku"})
