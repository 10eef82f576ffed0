r"""The README's main command: the built-in model's quality-exploration dilemma on CPU.

  python -m experiments.demo                # 200 held-out problems x 16 samples, 3 samplers
  python -m experiments.demo --problems=8 --samples=4 --out=/tmp/demo_small

Prints Pass@k (k = 1, 2, 4, 8, 16) with NFE and wall time per sampler, checks the three claims
(low-confidence wins Pass@1, random gains more with k, IMH sits on the Pareto front), and writes
results.json, table.md and the plot into --out. --position_first adds TPP and EGI and checks
Jeon et al.'s claims (TPP explores more than low-confidence, EGI at least as much as TPP).
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
_POSITION_FIRST = flags.DEFINE_bool("position_first", False,
                                    "Also decode with TPP (RankThenSample) and EGI.")
_EGI_FIRST = flags.DEFINE_float("egi_first_temperature", None,
                                "EGI's first-step temperature (default 1.5 x --temperature).")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # Orbax logs every step of its work at INFO
  countdown_demo.run_demo(_OUT.value, _PROBLEMS.value, _SAMPLES.value, _BATCH.value, _SEED.value,
                          _TEMPERATURE.value, _ALPHA.value, _CANDIDATES.value, _MODEL.value,
                          _POSITION_FIRST.value, _EGI_FIRST.value)


if __name__ == "__main__":
  app.run(main)
