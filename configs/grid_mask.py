"""Grid-mask SkipGANomaly: the study's proposal as written (its Figure 5.1; docs/methods.md#grid_mask).

  python -m ganomaly_jax.main --config=configs/grid_mask.py --workdir=/tmp/grid
  python -m ganomaly_jax.main --config=configs/grid_mask.py:quick --workdir=/tmp/grid_quick
  python -m ganomaly_jax.main --config=configs/grid_mask.py:cars256 --workdir=/tmp/grid_cars \
      --config.dataset.name=folder:/data/cars

Networks and losses are SkipGANomaly's (the U-Net generator, the latent-feature discriminator; G:
eq. 3.7 adversarial + 50 x eq. 3.3 contextual + the latent term; D: eq. 3.8), computed on one
reconstruction assembled from two inpaintings. The grid: two complementary checkerboards of square
cells (mask.partition='alternating', mask.sets=2); each masks one image copy (mask.fill), the
generator inpaints both in one call, and the reconstruction takes every pixel from the copy in which
it was hidden. Score: eq. 6.1 on that reconstruction (eval.score='lambda', λ = 0.9); pixel map |x - x̂|.

Cell size: mask.cells=(4,), a 4x4 board at every resolution (cell side isize / 4: 4 px at 16x16,
8 px at 32x32, 64 px at 256x256). A cell must be able to hide what the method has to find: a digit
stroke (the bundled digits are 8x8 images upsampled to 16x16, so a stroke is 2-4 px wide) or the
interior of a small defect (the textures' holes and stains are 4-14 px at 32x32), and with two sets
every hidden cell keeps its four edge neighbours as context. At 256 px a cell is half the side of
the masked method's hole (mask.size=0.5).

Switches (each a row of configs/suites/digits_grid.py and textures_grid.py):
  --config.mask.partition=random      RIAD's random balanced split, drawn afresh every step
  --config.mask.sets=3                three sets instead of two
  --config.mask.cells=(8,) / (2,)     half / double the cell side; (4, 8) trains both sizes
  --config.loss.w_ssim=50 --config.loss.w_msgms=50   RIAD's structural losses beside L1
  --config.loss.w_adv=0               no adversarial term for G (D still trains)
  --config.eval.score=map_max --config.eval.map=msgms   RIAD's read-out (also: inpaint, map_mean)
"""

from ganomaly_jax.config import arguments, schema
from ganomaly_jax.config.arguments import load_sibling

skip = load_sibling(__file__, 'skip_ganomaly').skip


def get_config(arg=None):
  args = arguments.parse_arg(arg)
  config = schema.base_config()
  config.method = 'grid_mask'
  skip(config)  # U-Net, latent D, eq. 3.7 / 3.8 losses, eq. 6.1 score
  config.mask.kind = 'grid'
  config.mask.cells = (4,)  # a 4x4 board: cell side isize / 4
  config.mask.sets = 2  # two complementary ...
  config.mask.partition = 'alternating'  # ... checkerboards
  config.mask.draw = 'image'
  config.mask.fill = 0.0
  return arguments.finalize(config, args)
