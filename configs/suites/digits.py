"""`digits`: all ten digits of scikit-learn's bundled digits, every method and baseline, 3 seeds.

  python -m ganomaly_jax.experiments.benchmark --suite=digits --workdir=runs/bench_digits
  python -m ganomaly_jax.experiments.benchmark --suite=digits:classes=3,seeds=0 --workdir=/tmp/d3   # one class

CPU-sized: 16×16 images, networks at a quarter of the study's width (ngf = ndf = 16), batch 32,
STEPS training steps with validation every STEPS/2 (checkpoint selection). 10 classes × 3 seeds ×
(9 trained methods + 2 baselines) = 330 runs.

Timing (2026-11-30, commit 2278609, the shared 2-core machine at load average 11-15):
`digits:classes=5,seeds=0` (one class × one seed, the 10 methods of that time, compile cache
warm) took 191 s of runs (211 s with start-up) and 104 s user + 5 s system CPU. The suite is 30
such rows: about 95 min at that load, and 30-60 min on an idle 2-core machine (the CPU time over
1-2 busy cores), plus a few minutes of compiling for the first row when the cache is cold (class
3, seed 0: 856 s cold vs 414 s warm at load ~20).
Options (suites.restrict): classes=0+1, seeds=0, methods=ganomaly+pca, steps=N.
"""

import os

from ganomaly_jax.experiments import suites

STEPS = 300
CONFIGS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def get_suite(arg=None):
  positional, options = suites.parse_arg(arg)
  if positional:
    raise suites.SuiteError(f'suite digits: unexpected argument(s) {positional}.')
  steps = int(options.pop('steps', STEPS))
  suite = suites.Suite(
      name='digits',
      methods=suites.standard_methods('model.ngf=16,model.ndf=16,batch=32', CONFIGS),
      classes=[str(d) for d in range(10)], seeds=[0, 1, 2], steps=steps,
      overrides={'train.eval_every': max(1, steps // 2), 'train.checkpoint_every': steps,
                 'train.image_every': steps, 'train.log_every': min(50, steps)},
      doc=f'scikit-learn digits at 16×16, one digit abnormal (GANomaly protocol), ngf = ndf = 16, '
          f'batch 32, {steps} steps.')
  return suites.restrict(suite, options)
