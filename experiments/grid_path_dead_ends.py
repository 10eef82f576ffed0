r"""How often local decoding walks the grid-path model into a dead end (README "Grid paths").

  python -m experiments.grid_path_dead_ends --problems=100 --samples=8 --out=runs/grid_dead_ends

Decodes held-out problems of the shipped grid-path model (or --model) with each decoder, one
token per step (19 steps = 19 NFE), and reports Pass@1, Pass@4 and Pass@n (n = --samples;
unbiased estimator) with bootstrap standard errors over problems, and how the failed samples
failed: a dead end (the legal moves before the first broken rule leave no completion) or a
broken rule while an answer was still reachable. Greedy decoders (temperature 0) are deterministic: one sample per problem,
and their Pass@k is their Pass@1. It also reads the model's first move on the fully masked
canvas: how much probability it puts on legal first moves with no completion (the exact law
puts 0) and on illegal ones, and how often its most likely first move is a legal dead one.
Nothing here is tuned: the decoders are the library's rules at their defaults, problems come
from the held-out split.
"""

import json
import pathlib
import time

from absl import app, flags

_MODEL = flags.DEFINE_string("model", None, "Model directory (default: the shipped grid-path one).")
_PROBLEMS = flags.DEFINE_integer("problems", 200, "Held-out problems.")
_SAMPLES = flags.DEFINE_integer("samples", 16, "Samples per problem for temperature-1 decoders.")
_SEED = flags.DEFINE_integer("seed", 0, "Problem and sampling seed.")
_BOOTSTRAP = flags.DEFINE_integer("bootstrap", 1000, "Bootstrap resamples of the problems.")
_OUT = flags.DEFINE_string("out", None, "Directory for results.json and table.md.")


def decoders(model):
  from dllm_jax import sampling  # pylint: disable=import-outside-toplevel
  full = sampling.Sampler.for_model(model.config, gen_length=model.gen_length)
  left_to_right = full.replace(block_length=1)
  return {  # label: (sampler, stochastic)
      "left-to-right greedy": (left_to_right, False),
      "low-confidence greedy": (full, False),
      "left-to-right T=1": (left_to_right.replace(temperature=1.0), True),
      "low-confidence T=1": (full.replace(temperature=1.0), True),
      "random order T=1": (full.replace(remasking=sampling.Random(), temperature=1.0), True),
  }


def pass_at_k_with_se(correct_PN, ks, rng, reps):
  """{k: (mean pass@k, bootstrap SE over problems)}."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  from dllm_jax.eval.pass_at_k import pass_at_k  # pylint: disable=import-outside-toplevel
  n = correct_PN.shape[1]
  out = {}
  for k in ks:
    per_problem = np.array([pass_at_k(n, int(c), min(k, n)) for c in correct_PN.sum(1)])
    boot = [per_problem[rng.integers(len(per_problem), size=len(per_problem))].mean()
            for _ in range(reps)]
    out[k] = (float(per_problem.mean()), float(np.std(boot)))
  return out


def first_move_law(model, problems):
  """Per problem, from the model's first-move distribution on the fully masked canvas: the
  probability of legal first moves with no completion, of illegal ones (anything else that is
  not a legal move), and whether its argmax is a legal move with no completion."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from dllm_jax import models  # pylint: disable=import-outside-toplevel
  task, tok = model.task, model.tokenizer
  prompt, mask = model.encode_prompts(problems)
  canvas = np.concatenate([prompt, np.full((len(problems), model.gen_length),
                                           model.config.mask_token_id, np.int32)], 1)
  attn = np.concatenate([mask, np.ones((len(problems), model.gen_length), bool)], 1)
  logits = models.make_denoise(model.config)(model.params, canvas, attn)
  probs_BV = np.asarray(jax.nn.softmax(logits[:, prompt.shape[1]], axis=-1))
  dead_mass, illegal_mass, argmax_dead = [], [], []
  for problem, p_V in zip(problems, probs_BV):
    legal = [c for c in tok.chars[:task.num_cells] if task.legal_prefix(problem, c) == c]
    dead = [tok.encode(c)[0] for c in legal if task.completions(problem, c) == 0]
    dead_mass.append(float(p_V[dead].sum()))
    illegal_mass.append(1.0 - float(p_V[[tok.encode(c)[0] for c in legal]].sum()))
    argmax_dead.append(int(np.argmax(p_V)) in dead)
  return np.array(dead_mass), np.array(illegal_mass), np.array(argmax_dead)


def main(argv):
  del argv
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from dllm_jax import models, sampling  # pylint: disable=import-outside-toplevel
  from dllm_jax.tasks import builtin  # pylint: disable=import-outside-toplevel

  model = builtin.load_builtin(_MODEL.value or builtin.GRID_PATH)
  task, tok = model.task, model.tokenizer
  problems = task.sample_problems("heldout", _PROBLEMS.value, seed=_SEED.value)
  denoise = models.make_denoise(model.config)
  rng = np.random.default_rng(_SEED.value)
  results = {"problems": len(problems), "samples": _SAMPLES.value, "decoders": {}}
  ks = sorted({1, min(4, _SAMPLES.value), _SAMPLES.value})
  dead_mass, illegal_mass, argmax_dead = first_move_law(model, problems)
  results["first_move"] = {
      "mean_probability_on_legal_first_moves_with_no_completion": float(dead_mass.mean()),
      "se": float(dead_mass.std() / np.sqrt(len(problems))),
      "mean_probability_on_illegal_first_moves": float(illegal_mass.mean()),
      "share_of_problems_with_a_dead_first_move": float(np.mean(
          [any(task.legal_prefix(p, c) == c and task.completions(p, c) == 0
               for c in tok.chars[:task.num_cells]) for p in problems])),
      "share_of_problems_whose_argmax_first_move_is_dead": float(argmax_dead.mean())}
  print(json.dumps(results["first_move"], indent=1), flush=True)
  for label, (sampler, stochastic) in decoders(model).items():
    n = _SAMPLES.value if stochastic else 1
    repeated = [p for p in problems for _ in range(n)]
    prompt, mask = model.encode_prompts(repeated)
    keys = jax.random.split(jax.random.key(_SEED.value), len(prompt))
    start = time.time()
    out = sampling.generate(sampler, denoise, model.params, prompt, mask, keys)
    generated = np.asarray(out.generated_BG)
    seconds = time.time() - start
    texts = [tok.decode(row) for row in generated]
    correct_PN = np.array([task.verify(p, t) for p, t in zip(repeated, texts)]).reshape(-1, n)
    dead = np.array([task.dead_end(p, t) for p, t in zip(repeated, texts)])
    failed = ~correct_PN.reshape(-1)
    record = {
        "pass_at_k": {k: v for k, v in pass_at_k_with_se(
            correct_PN, ks, rng, _BOOTSTRAP.value).items()},
        "nfe": float(np.asarray(out.nfe_B).mean()),
        "samples_per_problem": n,
        "failed_share": float(failed.mean()),
        "dead_end_share_of_failures": float(dead[failed].mean()) if failed.any() else 0.0,
        "distinct_correct_answers": float(np.mean(
            [len({t for t, ok in zip(texts[i * n:(i + 1) * n], correct_PN[i]) if ok})
             for i in range(len(problems))])),
        "seconds": seconds}
    results["decoders"][label] = record
    print(label, json.dumps(record), flush=True)

  lines = ["| decoding | n | " + " | ".join(f"Pass@{k}" for k in ks) +
           " | NFE | failed samples: dead end | distinct correct |",
           "|---|---|" + "---|" * len(ks) + "---|---|---|"]
  for label, r in results["decoders"].items():
    cells = [f"{r['pass_at_k'][k][0]:.3f} +- {r['pass_at_k'][k][1]:.3f}" for k in ks]
    lines.append(f"| {label} | {r['samples_per_problem']} | " + " | ".join(cells) +
                 f" | {r['nfe']:.0f} | {r['dead_end_share_of_failures']:.2f} | "
                 f"{r['distinct_correct_answers']:.2f} |")
  table = "\n".join(lines)
  print(table)
  if _OUT.value:
    out_dir = pathlib.Path(_OUT.value)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=1))
    (out_dir / "table.md").write_text(table + "\n")


if __name__ == "__main__":
  app.run(main)
