"""`digits`: all ten digits of scikit-learn's bundled digits, every method and baseline, 3 seeds.

  python -m ganomaly_jax.experiments.benchmark --suite=digits --workdir=runs/bench_digits
  python -m ganomaly_jax.experiments.benchmark --suite=digits:classes=3,seeds=0 --workdir=/tmp/d3   # one class

CPU-sized: 16×16 images, networks at a quarter of the study's width (ngf = ndf = 16), batch 32,
STEPS training steps with validation every STEPS/2 (checkpoint selection). 10 classes × 3 seeds ×
(9 trained methods + 2 baselines) = 330 runs, plus 90 re-evaluations that train nothing (rows
masked+auto, grid_mask+auto and riad+auto: the same checkpoints read out with eval.readout=auto).
Wall times: docs/results.md#wall-times.
Options (suites.restrict): classes=0+1, seeds=0, methods=ganomaly+pca, steps=N, pictures=1.
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
      classes=[str(d) for d in range(10)],
      seeds=[0, 1, 2],
      steps=steps,
      overrides={
          'train.eval_every': max(1, steps // 2),
          'train.checkpoint_every': steps,
          'train.log_every': min(50, steps),
      },
      doc=f'scikit-learn digits at 16×16, one digit abnormal (GANomaly protocol), ngf = ndf = 16, '
      f'batch 32, {steps} steps.',
  )
  return suites.restrict(suite, options)
