"""`digits_grid`: the grid mask's switches, on the `digits` suite's data, sizes and step budget.

  python -m ganomaly_jax.experiments.benchmark --suite=digits_grid:seeds=0 --workdir=runs/bench_digits_grid

An ablation of configs/grid_mask.py (each row one or two dotted overrides, nothing else changed):
  grid_mask           the default (cells 2 and 4 at 16×16, 3 random sets, L1 + SSIM + MSGMS, GAN)
  grid_mask_ae        loss.w_adv=0: RIAD's training, no adversarial term for G
  grid_mask_l1        loss.w_ssim=0, loss.w_msgms=0, eval.map=l1: no structural losses or maps
  grid_mask_sets2     mask.sets=2: a random complementary pair of cell sets
  grid_mask_cells4_8  mask.cell_sizes=(4, 8): no 2-pixel cells, cells up to half the image side
The scores of each row's checkpoints can be compared without training again
(ganomaly_jax/experiments/rescore.py). 5 variants × 10 digits × 3 seeds; `seeds=0` is a third of that.
"""

import dataclasses

from ganomaly_jax.experiments import suites
from ganomaly_jax.config_lib import load_sibling

digits = load_sibling(__file__, 'digits')

VARIANTS = {
    'grid_mask': {},
    'grid_mask_ae': {'loss.w_adv': 0.0},
    'grid_mask_l1': {'loss.w_ssim': 0.0, 'loss.w_msgms': 0.0, 'eval.map': 'l1'},
    'grid_mask_sets2': {'mask.sets': 2},
    'grid_mask_cells4_8': {'mask.cell_sizes': (4, 8)},
}


def get_suite(arg=None):
  positional, options = suites.parse_arg(arg)
  if positional:
    raise suites.SuiteError(f'suite digits_grid: unexpected argument(s) {positional}.')
  steps = options.pop('steps', None)
  suite = digits.get_suite(f'steps={steps}' if steps else None)
  grid = next(m for m in suite.methods if m.name == 'grid_mask')
  methods = [dataclasses.replace(grid, name=name, overrides={**grid.overrides, **extra})
             for name, extra in VARIANTS.items()]
  suite = dataclasses.replace(suite, name='digits_grid', methods=methods,
                              doc=f'Grid-mask ablation. {suite.doc}')
  return suites.restrict(suite, options)
