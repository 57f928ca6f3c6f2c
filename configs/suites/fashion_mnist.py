"""`fashion_mnist`: every method and baseline on each of the ten classes (one abnormal), 3 seeds.

  python -m ganomaly_jax.experiments.benchmark --suite=fashion_mnist --workdir=runs/bench_fashion_mnist
  python -m ganomaly_jax.experiments.benchmark --suite=fashion_mnist:npz:/data/fashion_mnist.npz \
      --workdir=runs/bench_fashion_mnist

Data through tfds (prepared once with network) or an npz file; 32×32, study widths, 3000 steps;
not CPU-sized. Options (suites.restrict): classes=0+1, seeds=0, methods=ganomaly+pca, steps=N.
"""

from ganomaly_jax.config.arguments import load_sibling

tfds_suite = load_sibling(__file__, '_tfds')


def get_suite(arg=None):
  return tfds_suite.class_suite(
      'fashion_mnist', arg, [str(c) for c in range(10)], channels=1, steps=3000
  )
