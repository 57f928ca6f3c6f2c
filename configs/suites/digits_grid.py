"""`digits_grid`: the grid mask's switches, on the `digits` suite's data, sizes and step budget.

  python -m ganomaly_jax.experiments.benchmark --suite=digits_grid:seeds=0 --workdir=runs/bench_digits_grid
  python -m ganomaly_jax.experiments.benchmark --suite=digits_grid:classes=3,seeds=0,methods=grid_mask+grid_random --workdir=/tmp/dg

An ablation of configs/grid_mask.py (the study's alternating grid: a 4x4 board, two complementary
checkerboards, SkipGANomaly's losses, eq. 6.1 score). Each row is one set of dotted overrides and
nothing else (docs/methods.md#grid_mask):
  grid_mask          the default
  grid_random        mask.partition=random: RIAD's random split into the two sets, fresh every step
  grid_sets3         mask.sets=3: three alternating sets (cell (i, j) in set (i + j) mod 3)
  grid_random_sets3  both: RIAD's partition
  grid_cell_half     mask.cells=(8,): half the cell side (2 px at 16x16)
  grid_cell_double   mask.cells=(2,): double the cell side (a 2x2 board)
  grid_cells_4_8     mask.cells=(4, 8): two cell sizes, one drawn per image
  grid_structural    loss.w_ssim=50, loss.w_msgms=50: RIAD's SSIM and MSGMS losses beside L1
  grid_no_gan        loss.w_adv=0: no adversarial term for G
  grid_map_max       eval.score=map_max: the largest value of the L1 map
  grid_msgms_max     eval.score=map_max, eval.map=msgms: RIAD's read-out
  grid_inpaint       eval.score=inpaint: mean squared error of the assembled reconstruction
  grid_riad_like     every RIAD switch at once: random partition, 3 sets, cells (4, 8), structural
                     losses, no adversarial term, RIAD's read-out
The read-out rows train what the default trains; ganomaly_jax/experiments/rescore.py re-reads
finished checkpoints instead. 13 rows x 10 digits x 3 seeds; `seeds=0` is a third of that.
"""

import dataclasses

from ganomaly_jax.experiments import suites
from ganomaly_jax.config.arguments import load_sibling

digits = load_sibling(__file__, 'digits')

STRUCTURAL = {'loss.w_ssim': 50.0, 'loss.w_msgms': 50.0}  # at w_con's scale, as RIAD's 1:1:1
RIAD_READOUT = {'eval.score': 'map_max', 'eval.map': 'msgms'}

# Row name -> the overrides that make it (nothing else differs from configs/grid_mask.py).
VARIANTS = {
    'grid_mask': {},
    'grid_random': {'mask.partition': 'random'},
    'grid_sets3': {'mask.sets': 3},
    'grid_random_sets3': {'mask.partition': 'random', 'mask.sets': 3},
    'grid_cell_half': {'mask.cells': (8,)},
    'grid_cell_double': {'mask.cells': (2,)},
    'grid_cells_4_8': {'mask.cells': (4, 8)},
    'grid_structural': STRUCTURAL,
    'grid_no_gan': {'loss.w_adv': 0.0},
    'grid_map_max': {'eval.score': 'map_max'},
    'grid_msgms_max': RIAD_READOUT,
    'grid_inpaint': {'eval.score': 'inpaint'},
    'grid_riad_like': {
        'mask.partition': 'random',
        'mask.sets': 3,
        'mask.cells': (4, 8),
        **STRUCTURAL,
        'loss.w_adv': 0.0,
        **RIAD_READOUT,
    },
}


def grid_ablation(suite: suites.Suite, name: str, variants: dict) -> suites.Suite:
  """`suite` with its grid_mask row replaced by one row per variant (overrides on top of its own)."""
  grid = next(m for m in suite.methods if m.name == 'grid_mask')
  methods = [
      dataclasses.replace(grid, name=row, overrides={**grid.overrides, **extra})
      for row, extra in variants.items()
  ]
  return dataclasses.replace(
      suite, name=name, methods=methods, doc=f'Grid-mask ablation. {suite.doc}'
  )


def get_suite(arg=None):
  positional, options = suites.parse_arg(arg)
  if positional:
    raise suites.SuiteError(f'suite digits_grid: unexpected argument(s) {positional}.')
  steps = options.pop('steps', None)
  suite = digits.get_suite(f'steps={steps}' if steps else None)
  return suites.restrict(grid_ablation(suite, 'digits_grid', VARIANTS), options)
