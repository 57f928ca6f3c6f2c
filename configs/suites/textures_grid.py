"""`textures_grid`: the grid mask's switches on the `textures` suite's data, sizes and step budget.

  python -m ganomaly_jax.experiments.benchmark --suite=textures_grid:seeds=0 --workdir=runs/bench_textures_grid
  python -m ganomaly_jax.experiments.benchmark --suite=textures_grid:classes=brick,seeds=0,methods=grid_mask+grid_random --workdir=/tmp/tg

The rows of configs/suites/digits_grid.py (one set of dotted overrides each, on configs/grid_mask.py:
an 8 px cell at 32x32 here) plus one that only the pixel metrics see, since these images have
defect masks:
  grid_map_msgms     eval.map=msgms: the eq. 6.1 score with RIAD's 1 - MSGMS pixel map
14 rows x 4 textures x 3 seeds; `seeds=0` is a third of that. Options as the textures suite's
(classes, seeds, steps, isize, width, batch) and methods=...
"""

from ganomaly_jax.experiments import suites
from ganomaly_jax.config.arguments import load_sibling

textures = load_sibling(__file__, 'textures')
digits_grid = load_sibling(__file__, 'digits_grid')

VARIANTS = {**digits_grid.VARIANTS, 'grid_map_msgms': {'eval.map': 'msgms'}}


def get_suite(arg=None):
  positional, options = suites.parse_arg(arg)
  if positional:
    raise suites.SuiteError(f'suite textures_grid: unexpected argument(s) {positional}.')
  methods = options.pop('methods', None)
  base = textures.get_suite(','.join(f'{k}={v}' for k, v in options.items()) or None)
  suite = digits_grid.grid_ablation(base, 'textures_grid', VARIANTS)
  return suites.restrict(suite, {'methods': methods} if methods else {})
