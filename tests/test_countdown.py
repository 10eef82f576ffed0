"""The Countdown task: enumeration, the verifier, the held-out split and the token encoding."""

from fractions import Fraction

import numpy as np
import pytest

from dllm_jax.tasks import countdown as cd
from dllm_jax.tasks import countdown_data as cdd
from dllm_jax.tasks.char_tokenizer import CharTokenizer

TASK = cd.CountdownTask(num_numbers=3, max_number=9)


def test_every_enumerated_answer_verifies_and_values_are_exact():
  for numbers in [(1, 2, 3), (2, 2, 9), (4, 7, 8)]:
    expressions = cd.enumerate_expressions(numbers)
    texts = [t for t, _ in expressions]
    assert len(texts) == len(set(texts))
    for text, value in expressions:
      got, used = cd.evaluate(text)
      assert got == value and sorted(used) == sorted(numbers), text
  problem = cd.Problem((3, 8, 2), 22)  # 3*8-2, 8*3-2, 2*8+... every answer verifies
  answers = TASK.answers(problem)
  assert "3*8-2" in answers and "8*3-2" in answers and len(answers) >= 2
  assert all(cd.verify(problem, a) for a in answers)


def test_verifier_rejects_wrong_and_ill_formed_answers():
  problem = cd.Problem((3, 8, 2), 22)
  for text in ["3*8+2", "3*8", "3*8-2-2", "38-2", "3*8-2)", "(3*8-2", "3**8", "3*8-2;",
               "__import__('os')", "", "3/0+8*2", "2-3*8"]:
    assert not cd.verify(problem, text), text
  assert cd.verify(problem, " 3 * 8 - 2 ")
  assert cd.verify(cd.Problem((1, 2, 3), 1), "(1+2)/3")
  assert cd.evaluate("8/3*3")[0] == Fraction(8)
  with pytest.raises(cd.ParseError, match="division by zero"):
    cd.evaluate("1/(2-2)")


def test_held_out_problems_never_occur_in_training():
  train, held = TASK.problems("train"), TASK.problems("heldout")
  assert len(held) >= 200 and len(train) > 5 * len(held)
  assert not {p.key for p in train} & {p.key for p in held}
  sampled = TASK.sample_problems("heldout", 50, seed=3)
  assert all(TASK.is_heldout(p) for p in sampled)
  assert all(TASK.is_heldout(cd.Problem(p.numbers[::-1], p.target)) for p in sampled)
  bank = cdd.AnswerBank.build(TASK, CharTokenizer())
  bank_keys = {bank.problem(i).key for i in range(bank.num_problems)}
  assert bank_keys == {p.key for p in train}


def test_training_batches_are_valid_answers_in_random_order():
  tokenizer = CharTokenizer()
  bank = cdd.AnswerBank.build(TASK, tokenizer)
  prompt, mask, answer = bank.sample_batch(np.random.default_rng(0), 64)
  assert prompt.shape == (64, cdd.prompt_width(TASK)) and answer.shape == (64, 7)
  for p_row, m_row, a_row in zip(prompt, mask, answer):
    text = tokenizer.decode(p_row[m_row])
    digits, target = text.split("=")
    problem = cd.Problem(tuple(int(c) for c in digits), int(target))
    assert cd.verify(problem, tokenizer.decode(a_row))
  # Several different answers to one problem appear across draws.
  index = int(np.argmax(bank.counts_N))
  assert bank.counts_N[index] > 2


def test_tokenizer_round_trip_and_errors():
  tokenizer = CharTokenizer()
  ids, mask = tokenizer.encode_prompts(["123=6"], 7)
  assert tokenizer.decode(ids[0][mask[0]]) == "123=6" and mask[0].sum() == 5
  answers = tokenizer.encode_answers(["1+2+3"], 7)
  assert tokenizer.decode(answers[0]) == "1+2+3" and answers[0, -1] == tokenizer.eos_id
  with pytest.raises(ValueError, match="not in the vocabulary"):
    tokenizer.encode("x")
  with pytest.raises(ValueError, match="longer than"):
    tokenizer.encode_prompts(["123456789"], 4)
