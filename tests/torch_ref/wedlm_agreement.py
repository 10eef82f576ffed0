"""Agreement of the compiled WeDLM streaming decoder with the port of Tencent's loop, greedy, over
issue 24's grid: W in {4, 8, 16} x tau in {none, 0.3, 0.6} x lambda in {0, 0.02, 0.1} x both
layouts x 4 rows of different prompt lengths (216 rows), with a stop token.

  python -m tests.torch_ref.wedlm_agreement [--latin] [path/to/another/streaming.py]

`--latin` runs 9 of the 27 settings per layout, a Latin square that takes every pair of values
of two parameters once (72 rows). A path loads `stream_generate` from another copy of the module
(an older version, to measure what changed). Prints tokens agreeing, rows equal, rows with equal forwards and total
forwards on each side.
"""

from __future__ import annotations

import importlib.util
import itertools
import sys

from tests.torch_ref import test_wedlm_streaming_reference as ref


def main(argv):
  decoder = ref.ST.stream_generate
  latin = "--latin" in argv
  argv = [a for a in argv if a != "--latin"]
  if len(argv) > 1:
    spec = importlib.util.spec_from_file_location("other_streaming", argv[1])
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    decoder = module.stream_generate
  totals = dict(agree=0, tokens=0, rows=0, rows_equal=0, forwards_equal=0, fill_steps_equal=0,
                forwards_ref=0, forwards_jax=0)
  for variant in ("8b", "7b"):
    stop = ref.stop_token(variant)
    grid = itertools.product(range(3), range(3), range(3))
    if latin:
      grid = [(i, j, (i + j) % 3) for i in range(3) for j in range(3)]
    for i, j, k in grid:
      window, tau, penalty = (4, 8, 16)[i], (None, 0.3, 0.6)[j], (0.0, 0.02, 0.1)[k]
      rows = ref.compare(variant, window, tau, penalty, stop, decoder)
      for r in rows:
        totals["agree"] += r["agree"]
        totals["tokens"] += ref.GEN_LENGTH
        totals["rows"] += 1
        totals["rows_equal"] += r["tokens"]
        totals["forwards_equal"] += r["forwards"]
        totals["fill_steps_equal"] += r["fill_steps"] and r["tokens"]
        totals["forwards_ref"] += r["forwards_ref"]
        totals["forwards_jax"] += r["forwards_jax"]
      print(variant, window, tau, penalty, [(r["tokens"], r["forwards_ref"], r["forwards_jax"])
                                            for r in rows], flush=True)
  t = totals
  print(f"tokens agreeing {t['agree']}/{t['tokens']} ({100 * t['agree'] / t['tokens']:.1f}%), "
        f"rows equal {t['rows_equal']}/{t['rows']}, rows with equal forwards "
        f"{t['forwards_equal']}/{t['rows']}, equal fill steps {t['fill_steps_equal']}/{t['rows']}, "
        f"forwards Tencent {t['forwards_ref']} vs here {t['forwards_jax']}")


if __name__ == "__main__":
  main(sys.argv)
