r"""The quality-exploration trade-off of every sampler, measured honestly, on the built-in tasks.

  python -m experiments.tradeoff              # every held-out problem, n = 16 (minutes)
  python -m experiments.tradeoff --quick      # 12 problems, n = 4, 4 samplers (CI)

Prints per task the table (Pass@k +- bootstrap SE, NFE, distinct answers and answer entropy,
Pass at equal forward passes) and a verdict per sampler: whether it lies above the hull of the
free baselines and their mixtures at compute-matched k, by more than 2 SE, and by how much.
Writes table.md, verdicts.md, results.json, tradeoff.png and draws.npz to --out/<task>/;
--from_draws=<an earlier --out> recomputes all of it from the saved draws without decoding.
"""

from absl import app, flags, logging

from dllm_jax.tasks import tradeoff

_OUT = flags.DEFINE_string("out", "tradeoff_output", "Output directory.")
_QUICK = flags.DEFINE_bool("quick", False, "A small run for CI: 12 problems, n = 4, 4 samplers.")
_TASKS = flags.DEFINE_list("tasks", list(tradeoff.TASKS), "Built-in tasks to compare on.")
_SEED = flags.DEFINE_integer("seed", 0, "Problem sample, decoding keys and bootstrap.")
_FROM_DRAWS = flags.DEFINE_string("from_draws", None, "An earlier run's --out: judge its saved "
                                  "draws (<task>/draws.npz) again instead of decoding.")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # Orbax logs every step of its work at INFO
  try:
    tradeoff.run(_OUT.value, _TASKS.value, _QUICK.value, _SEED.value,
                 from_draws=_FROM_DRAWS.value)
  except (FileNotFoundError, ValueError) as e:
    raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
  app.run(main)
