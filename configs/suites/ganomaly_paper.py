"""`ganomaly_paper`: GANomaly on MNIST as its paper ran it (ACCV 2018; official run_mnist.sh).

  python -m ganomaly_jax.experiments.benchmark --suite=ganomaly_paper --workdir=runs/ganomaly_paper
  python -m ganomaly_jax.experiments.benchmark \
      --suite=ganomaly_paper:npz:/data/mnist.npz --workdir=runs/ganomaly_paper
  # A CPU-sized look: one seed, one epoch, two digits.
  python -m ganomaly_jax.experiments.benchmark \
      --suite=ganomaly_paper:npz:/data/mnist.npz,seeds=0,epochs=1,classes=1+7 --workdir=/tmp/gp

Ten digits (each abnormal in turn), seeds 0-2, 15 epochs, the official hyper-parameters and split;
GANomaly reports its honest figure and the official read-out (`reference (test-selected)`), on
[-1, 1] inputs and, as `ganomaly_mnist_norm`, on the official Normalize(0.1307, 0.3081) input,
beside
masked SkipGANomaly, the grid mask, RIAD (two rows) and the PCA / k-NN baselines on the same split
(configs/suites/_paper.py). The paper gives MNIST only as a bar chart: no published value is
tabled (experiments/published.py). Options: epochs=N, classes=1+7, seeds=0, methods=ganomaly+pca.
"""

from ganomaly_jax.config.arguments import load_sibling
from ganomaly_jax.experiments import published

paper = load_sibling(__file__, '_paper')


def get_suite(arg=None):
  return paper.paper_suite(
      'ganomaly_paper',
      arg,
      dataset='mnist',
      classes=[str(c) for c in range(10)],
      channels=1,
      gans=('ganomaly',),
      epochs=15,
      mnist_normalization=True,
      doc=f'GANomaly (ACCV 2018) on MNIST. {published.MNIST_NOTE}',
  )
