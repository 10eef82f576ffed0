"""The pass@k report reads only a run's own results, each sample once, and says when a run is
partial."""

import json

import numpy as np
import pytest

from dllm_jax.eval import pass_at_k, report


def _record(problem, sample, correct):
  return {"problem_id": problem, "sample": sample, "response": "r", "answer": str(correct),
          "correct": correct, "detail": "", "nfe": 8, "seconds": 0.1, "neg_logprob": 1.0,
          "tokens": [1, 2]}


def _write_run(directory, correct_by_problem, n, problems=None):
  directory.mkdir(parents=True)
  problems = problems or sorted(correct_by_problem)
  (directory / "config.json").write_text(json.dumps(
      {"benchmark": "math500", "problems": problems, "n_samples": n}))
  lines = [json.dumps(_record(p, s, c)) for p, cs in correct_by_problem.items()
           for s, c in enumerate(cs)]
  (directory / "results.jsonl").write_text("\n".join(lines) + "\n")
  return directory


RUN = {"math500/a": [True, False, False, False], "math500/b": [False, False, True, True]}


def _expected_pass_at_2():
  return pass_at_k.mean_pass_at_k_from_counts([4, 4], [1, 2], [2])[2]


def test_a_backup_copy_and_duplicate_lines_change_nothing(tmp_path):
  run = _write_run(tmp_path / "run", RUN, n=4)
  clean = report.summarize(run)
  assert clean.samples == 4 and sorted(clean.pass_at) == [1, 2, 4] and not clean.warnings
  assert clean.pass_at[2] == pytest.approx(_expected_pass_at_2())
  # A backup of other results beside them, with more samples, and a line written twice.
  backup = [json.dumps(_record(p, s, True)) for p in RUN for s in range(8)]
  (run / "results.backup.jsonl").write_text("\n".join(backup) + "\n")
  (run / "results.jsonl.bak").write_text("\n".join(backup) + "\n")
  with open(run / "results.jsonl", "a") as f:
    f.write(json.dumps(_record("math500/a", 0, False)) + "\n")  # a duplicate, disagreeing
  again = report.summarize(run)
  assert again.pass_at == clean.pass_at and again.samples == 4


def test_partial_runs_are_flagged(tmp_path):
  run = _write_run(tmp_path / "run", {"math500/a": [True, False, True, False],
                                      "math500/b": [False, True]}, n=4,
                   problems=["math500/a", "math500/b", "math500/c"])
  summary = report.summarize(run)
  assert summary.samples == 2 and sorted(summary.pass_at) == [1, 2]
  assert any("1 of 3 problems have no samples (first: math500/c)" in w for w in summary.warnings)
  assert any("1 problems have fewer than n_samples=4" in w for w in summary.warnings)
  assert "partial run" in report.markdown([summary])


def test_labels_are_unique(tmp_path):
  first = _write_run(tmp_path / "a" / "lowconf", RUN, n=4)
  second = _write_run(tmp_path / "b" / "lowconf", RUN, n=4)
  other = _write_run(tmp_path / "b" / "imh", RUN, n=4)
  labels = [s.label for s in report.summarize_runs([first, second, other])]
  assert labels == ["a/lowconf", "b/lowconf", "b/imh"]
  with pytest.raises(ValueError, match="listed twice"):
    report.summarize_runs([first, first])


def test_ses_and_answer_entropy_are_reported(tmp_path):
  run = _write_run(tmp_path / "run", RUN, n=4)
  summary = report.summarize(run)
  # Per-problem pass@1 is 1/4 and 2/4: the bootstrap SE of their mean is near |a - b| / (2 sqrt 2).
  assert summary.pass_at_se[1] == pytest.approx(0.25 / 2 / 2 ** 0.5, rel=0.1)
  # Answers are str(correct): problem a has {True: 1, False: 3}, b {False: 2, True: 2}.
  entropy_a = -(0.25 * np.log(0.25) + 0.75 * np.log(0.75))
  assert summary.answer_entropy == pytest.approx((entropy_a + np.log(2)) / 2)
  table = report.markdown([summary])
  assert "| run | 2 x 4 | 8.0 | 0.375 +- " in table and "answer entropy (nats)" in table


def test_verdicts_against_baseline_runs(tmp_path):
  rng = np.random.default_rng(0)
  problems = [f"math500/{i}" for i in range(60)]
  draw = lambda chance: {p: [bool(x) for x in rng.random(4) < chance] for p in problems}
  runs = [_write_run(tmp_path / name, table, n=4)
          for name, table in (("easy", draw(0.9)), ("hard", draw(0.2)), ("claim", draw(0.05)))]
  labels = [s.label for s in report.summarize_runs(runs)]
  verdicts = report.verdicts(runs, labels, ["easy", "hard"])
  assert [v.claim.split()[0] for v in verdicts] == ["easy", "hard", "claim"]
  assert verdicts[0].holds and not verdicts[2].holds and verdicts[2].estimate < 0
  with pytest.raises(ValueError, match="--baselines names 'nope'"):
    report.verdicts(runs, labels, ["nope"])


def test_records_of_problems_not_in_the_run_are_ignored_with_a_warning(tmp_path):
  run = _write_run(tmp_path / "run", {"math500/a": [True, False], "math500/b": [False, False]},
                   n=2)
  clean = report.summarize(run)
  assert clean.problems == 2 and clean.pass_at[1] == pytest.approx(0.25)
  # Another benchmark's records appended to the file: 4 problems x 2 samples, all correct.
  strays = [json.dumps(_record(f"humaneval/{i}", s, True)) for i in range(4) for s in range(2)]
  with open(run / "results.jsonl", "a") as f:
    f.write("\n".join(strays) + "\n")
  again = report.summarize(run)
  assert (again.problems, again.samples) == (2, 2)
  assert again.pass_at == clean.pass_at
  assert any("ignored 8 records of problems that are not in this run (first: humaneval/0)" in w
             for w in again.warnings), again.warnings


@pytest.mark.parametrize("line,problem", [
    ("{}", "a record without ['problem_id', 'sample'"),
    ("[1, 2]", "a JSON list, not a record"),
    ('{"problem_id": "math500/a", "sample": "0", "answer": "1", "correct": true, "nfe": 8, '
     '"seconds": 0.1, "neg_logprob": 1.0}', "['sample'] have the wrong type"),
    ("{not json", "malformed results line")])
def test_a_bad_results_line_names_the_file_and_line(tmp_path, line, problem):
  from dllm_jax.eval import runner  # pylint: disable=import-outside-toplevel
  run = _write_run(tmp_path / "run", RUN, n=4)
  text = (run / "results.jsonl").read_text().splitlines()
  text.insert(3, line)  # not the last line: a cut-off last line is an interruption, skipped
  (run / "results.jsonl").write_text("\n".join(text) + "\n")
  for read in (report.summarize, runner.read_results):  # the report, and a run's resume
    with pytest.raises(ValueError) as info:
      read(run)
    message = str(info.value)
    assert message.startswith(f"{run / 'results.jsonl'}:4: ") and problem in message, message
    assert "\n" not in message and "fix that line" in message


@pytest.mark.parametrize("content", [b"{broken", b"\x00\xff binary", b"[]"])
def test_a_run_config_that_is_not_a_record_gives_one_line(tmp_path, content):
  run = _write_run(tmp_path / "run", RUN, n=4)
  (run / "config.json").write_bytes(content)
  with pytest.raises(ValueError) as info:
    report.summarize(run)
  message = str(info.value)
  assert message.startswith(str(run / "config.json")) and "\n" not in message, message
