r"""Distance to p^alpha of IMH, RolloutIMH and SMC on random oracle joints (DESIGN.md §7).

  python -m experiments.oracle_tv_curves --joints=20 --smc_runs=10000

20 random joints over V = 3 tokens x L = 4 positions (Dirichlet 0.3, the seeds of
tests/test_sampling_oracle.py), alpha = 2, one token per step, random positions. IMH (mean-field
weights) and RolloutIMH are exact laws (`oracle_exact`); SMC's law is estimated from `smc_runs`
runs per joint of `oracle_exact.smc_particle_law` (a numpy re-implementation, no compilation;
the compiled loop's weighted particles are checked unbiased in tests/test_sampling_sequence.py),
each run contributing its weighted particles (the expected law of one draw).
An estimate of TV from N runs is biased upward by noise: the `iid` column is the TV of N exact
draws from p^alpha itself, an upper reference for that bias (the weighted particles are less
noisy than one draw per run). Prints mean TV over the joints and the NFE of each setting.
"""

from __future__ import annotations

import json

import jax
import numpy as np
from absl import app, flags

from dllm_jax.sampling import oracle, oracle_exact

_JOINTS = flags.DEFINE_integer("joints", 20, "Random joints (seeds 100, 101, ...).")
_KS = flags.DEFINE_list("candidates", ["1", "2", "4", "8", "16", "32"], "IMH candidates K.")
_RS = flags.DEFINE_list("rollouts", ["1", "2"], "RolloutIMH rollouts R (exact laws).")
_PS = flags.DEFINE_list("particles", ["1", "2", "4", "8", "16"], "SMC particles P.")
_RUNS = flags.DEFINE_integer("smc_runs", 20000, "SMC runs per joint and P.")
_OUT = flags.DEFINE_string("out", None, "Also write the rows as JSON here.")

V, L, ALPHA = 3, 4, 2.0


def _joint(seed):
  log_p = oracle.random_joint(jax.random.key(seed), V, L, concentration=0.3)
  p = np.exp(np.asarray(log_p, np.float64))
  return log_p, p / p.sum()


def main(argv):
  del argv
  ks, rs, ps = ([int(x) for x in f.value] for f in (_KS, _RS, _PS))
  rows = {}
  for j in range(_JOINTS.value):
    _, p = _joint(100 + j)
    target = p ** ALPHA / (p ** ALPHA).sum()
    tv = lambda law: oracle_exact.total_variation(law, target)
    mean_field = oracle_exact.exact_distributions(p, V, L, ALPHA, ks)
    rows.setdefault("IMH mean-field", []).append([tv(mean_field[k]) for k in ks])
    for r in rs:
      law = oracle_exact.rollout_imh_distribution(p, V, L, ALPHA, ks, r)
      rows.setdefault(f"RolloutIMH R={r}", []).append([tv(law[k]) for k in ks])
    rows.setdefault("SMC", []).append([
        tv(oracle_exact.smc_particle_law(p, V, L, ALPHA, n, _RUNS.value, seed=j)) for n in ps])
    draws = np.random.default_rng(j).multinomial(_RUNS.value, target) / _RUNS.value
    rows.setdefault("iid", []).append([tv(draws)])
    print(f"joint {j + 1}/{_JOINTS.value} done", flush=True)
  print(f"mean TV to p^alpha over {_JOINTS.value} joints (V={V}, L={L}, alpha={ALPHA:g})")
  print("K:                " + " ".join(f"{k:>7d}" for k in ks))
  for name in ["IMH mean-field"] + [f"RolloutIMH R={r}" for r in rs]:
    print(f"{name:<18}" + " ".join(f"{t:7.4f}" for t in np.mean(rows[name], 0)))
  nfe = lambda k, r: 1 + k * L + (k > 1) * k * r * (L - 1) * (L - 2) // 2
  print("NFE IMH:          " + " ".join(f"{nfe(k, 0):>7d}" for k in ks))
  for r in rs:
    print(f"NFE R={r}:          " + " ".join(f"{nfe(k, r):>7d}" for k in ks))
  print("P:                " + " ".join(f"{n:>7d}" for n in ps))
  print(f"SMC ({_RUNS.value} runs) " + " ".join(f"{t:7.4f}" for t in np.mean(rows["SMC"], 0)))
  print("NFE SMC:          " + " ".join(f"{1 + n * (L - 1):>7d}" for n in ps))
  print(f"iid reference (TV of {_RUNS.value} exact draws): {np.mean(rows['iid']):.4f}")
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      json.dump({"K": ks, "P": ps, "rows": rows}, f)


if __name__ == "__main__":
  app.run(main)
