"""`textures`: scikit-image's bundled photographs cut into patches, synthetic defects, masks.

  python -m ganomaly_jax.experiments.benchmark --suite=textures --workdir=runs/bench_textures
  python -m ganomaly_jax.experiments.benchmark --suite=textures:seeds=0,steps=300 --workdir=runs/tex

The data (brick, grass, gravel, camera; scratches, stains, holes; recipe in
ganomaly_jax/data/textures.py) is written once into WORKDIR/data/ in MVTec AD layout and read
through the normal folder path, so image and pixel AUROC / PRO are reported. CPU-sized: 64 px
patches at 32×32 grayscale, ngf = ndf = 16, batch 32, 300 steps (24 passes over the 400 training
patches), 3 seeds; 4 textures × 11 methods × 3 seeds = 132 runs, plus 36 re-evaluations
(masked+auto, grid_mask+auto, riad+auto: the same checkpoints read out with eval.readout=auto).
Options (suites.restrict): classes=brick+grass, seeds=0, methods=..., steps=N, isize=N,
width=N, batch=N.
"""

from ganomaly_jax.experiments import suites
from ganomaly_jax.config.arguments import load_sibling
from ganomaly_jax.data import textures

folders = load_sibling(__file__, 'folder_categories')


def get_suite(arg=None):
  positional, options = suites.parse_arg(arg)
  if positional:
    raise suites.SuiteError(f'suite textures: unexpected argument(s) {positional}.')
  # The data folder is WORKDIR/data, known only when the suite runs: the class value names it
  # through {data}, and `prepare` writes it there (once) before the first run.
  return folders.folder_suite(
      'textures',
      textures.TEXTURES,
      options,
      class_value='folder:{data}/{cls}',
      steps=300,
      isize=32,
      channels=1,
      width=16,
      batch=32,
      prepare=textures.write_textures,
      doc='skimage photographs (brick, grass, gravel, camera) as 64 px patches, synthetic '
      'scratches / stains / holes with masks:',
  )
