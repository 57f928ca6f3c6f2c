"""`cifar10`: every method and baseline on each CIFAR-10 class (one abnormal), 3 seeds, 3000 steps.

  python -m ganomaly_jax.experiments.benchmark --suite=cifar10 --workdir=runs/bench_cifar10

Data through tfds (prepared once with network) or `cifar10:npz:PATH`; 32×32×3; not CPU-sized.
Options (suites.restrict): classes=cat+dog, seeds=0, methods=ganomaly+pca, steps=N.
"""

from ganomaly_jax.config.arguments import load_sibling
from ganomaly_jax.data import sources

tfds_suite = load_sibling(__file__, '_tfds')


def get_suite(arg=None):
  return tfds_suite.class_suite('cifar10', arg, sources.CIFAR10_NAMES, channels=3, steps=3000)
