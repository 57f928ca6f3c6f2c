"""`skip_ganomaly_paper`: GANomaly and Skip-GANomaly on CIFAR-10 as Skip-GANomaly's Table I.

  python -m ganomaly_jax.experiments.benchmark --suite=skip_ganomaly_paper --workdir=runs/skip_paper
  python -m ganomaly_jax.experiments.benchmark --suite=skip_ganomaly_paper:epochs=25 \
      --workdir=runs/skip_paper_25
  python -m ganomaly_jax.experiments.benchmark \
      --suite=skip_ganomaly_paper:npz:/data/cifar10.npz --workdir=runs/skip_paper

CIFAR-10 through tfds (prepared once on a machine with network) or an npz file. Ten classes (each
abnormal in turn), seeds 0-2, 15 epochs (the official default niter; run_cifar.sh: 25, `epochs=25`),
the official hyper-parameters and split. Per class the table holds Table I's published value (its
source in the row name), each GAN's official read-out (`reference (test-selected)`) and honest
figure, and masked SkipGANomaly, the grid mask, RIAD (two rows) and the PCA / k-NN baselines on the
same split (configs/suites/_paper.py). Not CPU-sized: see docs/benchmark.md for the GPU command.
"""

from ganomaly_jax.config.arguments import load_sibling
from ganomaly_jax.data import sources

paper = load_sibling(__file__, '_paper')


def get_suite(arg=None):
  return paper.paper_suite(
      'skip_ganomaly_paper',
      arg,
      dataset='cifar10',
      classes=list(sources.CIFAR10_NAMES),
      channels=3,
      gans=('ganomaly', 'skip_ganomaly'),
      epochs=15,
      doc='GANomaly and Skip-GANomaly (IJCNN 2019, Table I) on CIFAR-10.',
  )
