r"""The README's main command: the built-in model's quality-exploration trade-off on CPU.

  python -m experiments.demo                # 200 held-out problems x 16 samples
  python -m experiments.demo --problems=8 --samples=4 --out=/tmp/demo_small

Decodes with the free baselines (random, low-confidence, random at temperature 1/alpha, TPP,
EGI) and IMH; prints Pass@k (k = 1, 2, 4, 8, 16) +- bootstrap SE with NFE, answer diversity and
Pass at equal forward passes; then the dilemma's claims as paired differences and, per sampler,
whether it lies above the hull of the other baselines and their mixtures (compute matched) by
more than 2 SE. Writes table.md, verdicts.md, results.json and tradeoff.png into --out.
The baselines draw --samples per problem unless --baseline_samples says otherwise (0: as many as
compute matching against IMH needs; experiments/tradeoff.py does that for more samplers).
"""

from absl import app, flags, logging

from dllm_jax.tasks import countdown_demo

_OUT = flags.DEFINE_string("out", "demo_output", "Output directory.")
_PROBLEMS = flags.DEFINE_integer("problems", 200, "Held-out problems.")
_SAMPLES = flags.DEFINE_integer("samples", 16, "Samples per problem.")
_BATCH = flags.DEFINE_integer("batch_rows", 800, "Rows per compiled decode call.")
_TEMPERATURE = flags.DEFINE_float("temperature", 1.0, "Token temperature of the baselines.")
_ALPHA = flags.DEFINE_float("alpha", 2.0, "IMH: target exponent.")
_CANDIDATES = flags.DEFINE_integer("num_candidates", 8, "IMH: candidates per step.")
_SEED = flags.DEFINE_integer("seed", 0, "Problem sample and decoding keys.")
_MODEL = flags.DEFINE_string("model", str(countdown_demo.BUILTIN), "Model directory.")
_BASELINE_SAMPLES = flags.DEFINE_integer(
    "baseline_samples", None, "Samples per problem of the baselines (default --samples; 0: as "
    "many as compute matching against IMH needs).")
_BOOTSTRAP = flags.DEFINE_integer("bootstrap_resamples", 1000, "Bootstrap resamples (SEs).")
_EGI_FIRST = flags.DEFINE_float("egi_first_temperature", None,
                                "EGI's first-step temperature (default 1.5 x --temperature).")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # Orbax logs every step of its work at INFO
  try:
    countdown_demo.run_demo(_OUT.value, _PROBLEMS.value, _SAMPLES.value, _BATCH.value,
                            _SEED.value, _TEMPERATURE.value, _ALPHA.value, _CANDIDATES.value,
                            _MODEL.value, _BASELINE_SAMPLES.value, _EGI_FIRST.value,
                            _BOOTSTRAP.value)
  except (FileNotFoundError, ValueError) as e:
    raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
  app.run(main)
