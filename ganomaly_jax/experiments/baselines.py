"""Non-learned baselines on the training path's splits: PCA reconstruction error, k-NN distance.

A GAN is only worth its compute if it beats these. Both read `sources.load_splits(config)` — the
same train normals / validation normals / test images as the trained methods, at the model's image
size and channels, scaled to [-1, 1] as the input pipeline scales them — and score the test split in
chunks, so memory stays bounded however large the test set is.

* `pca`: principal components of the training normals; the number kept, k, is the smallest that
  explains `PCA_VARIANCE` (95 %) of the *validation* normals' variance about the training mean.
  Choosing k on held-out normals, not on the training images, keeps it honest: training variance is
  always explained better than new images', and minimising validation reconstruction error instead
  would always pick the largest k, whose components reconstruct anomalies too. Score: mean squared
  residual per image. Map: |x − x̂| averaged over channels (as the trained methods' maps), smoothed
  with `eval.smooth_sigma`, giving pixel AUROC / PRO where ground-truth masks exist.
* `knn`: Euclidean distance on raw pixels to the `KNN_K` (5) nearest training normals, averaged.
  It has no pixel map, so its pixel metrics are n/a.

Large training sets are subsampled, at random with the run's seed, to at most `MAX_TRAIN` images
and at most `MAX_TRAIN_VALUES` floats (10,000 images up to 5,000 values each, e.g. 32×32×3;
fewer for larger images: 254 at 256×256×3), so one fit takes seconds and < 200 MB.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterator, Protocol

import numpy as np
from sklearn import metrics as sk_metrics, neighbors

PCA_VARIANCE = 0.95
KNN_K = 5
MAX_TRAIN = 10_000
MAX_TRAIN_VALUES = 50_000_000
CHUNK = 256  # test images scored at a time


def _to_float(images: np.ndarray) -> np.ndarray:
  """uint8 [n, H, W, C] -> float32 [n, H*W*C] in [-1, 1] (the input pipeline's scaling)."""
  return (images.reshape(len(images), -1).astype(np.float32) / 127.5) - 1.0


def _chunks(source, indices, size: int = CHUNK) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """(uint8 images [n, H, W, C], labels [n]) for `indices` of a record source, `size` at a time."""
  for start in range(0, len(indices), size):
    records = [source[int(i)] for i in indices[start : start + size]]
    yield (
        np.stack([np.asarray(r['image']) for r in records]),
        np.asarray([int(r['label']) for r in records]),
    )


def train_sample(source, seed: int) -> np.ndarray:
  """The training normals as float32 [n, D], subsampled to the caps of the module docstring."""
  if len(source) == 0:
    raise ValueError('baseline: the training split is empty.')
  dim = np.asarray(source[0]['image']).size
  cap = max(1, min(MAX_TRAIN, MAX_TRAIN_VALUES // dim))
  indices = np.arange(len(source))
  if len(indices) > cap:
    indices = np.sort(np.random.default_rng(seed).permutation(len(indices))[:cap])
  return np.concatenate([_to_float(x) for x, _ in _chunks(source, indices)])


def principal_axes(train: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(mean [D], orthonormal components [r, D] by decreasing variance, their variances [r]), r =
  min(n, D).

  An eigendecomposition of the smaller of the two Gram matrices (D×D covariance, or n×n between
  images), in float64: the same axes as an SVD at a fraction of its cost (a full SVD of digits'
  1,300 × 256 training matrix took seconds on the shared 2-core machine; this takes milliseconds).
  """
  x = np.asarray(train, np.float64)
  mean = x.mean(axis=0)
  x = x - mean
  n, d = x.shape
  if d <= n:
    variances, vectors = np.linalg.eigh(x.T @ x)
    components = vectors.T
  else:  # more values than images (large pictures): the n×n Gram matrix has the same spectrum
    variances, vectors = np.linalg.eigh(x @ x.T)
    components = (x.T @ vectors).T / np.sqrt(np.maximum(variances, 1e-12))[:, None]
  order = np.argsort(variances)[::-1]
  variances = np.maximum(variances[order], 0.0) / max(n - 1, 1)
  keep = variances > variances[0] * 1e-10 if variances[0] > 0 else slice(0, 1)
  return mean, components[order][keep], variances[keep]


def choose_components(
    mean: np.ndarray,
    components: np.ndarray,
    variances: np.ndarray,
    val: np.ndarray,
    variance: float = PCA_VARIANCE,
) -> tuple[int, float]:
  """Smallest k whose components explain `variance` of the validation normals (about the training
  mean), and the fraction they explain; all components if none reach it. Without validation images,
  the training spectrum decides."""
  if len(val) == 0:
    ratio = np.cumsum(variances) / max(np.sum(variances), 1e-12)
  else:
    centred = np.asarray(val, np.float64) - mean
    energy = np.sum(centred**2)
    # The components are orthonormal, so the variance the first k explain is the running sum of the
    # squared projections onto them.
    ratio = np.cumsum(np.sum((centred @ components.T) ** 2, axis=0)) / max(energy, 1e-12)
  k = min(int(np.searchsorted(ratio, variance) + 1), len(ratio))
  return k, float(ratio[k - 1])


class PCABaseline:
  """PCA reconstruction error with k chosen on the validation normals."""

  has_maps = True

  def __init__(self, train: np.ndarray, val: np.ndarray, variance: float = PCA_VARIANCE):
    mean, components, variances = principal_axes(train)
    self.k, self.val_explained = choose_components(mean, components, variances, val, variance)
    self.mean = mean.astype(np.float32)
    self.components = components[: self.k].astype(np.float32)

  def reconstruct(self, x: np.ndarray) -> np.ndarray:
    centred = x - self.mean
    return self.mean + (centred @ self.components.T) @ self.components

  def score(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean squared residual per image [n], |x − x̂| per value [n, D])."""
    residual = np.abs(x - self.reconstruct(x))
    return np.mean(residual**2, axis=1), residual

  def info(self) -> dict[str, Any]:
    return {'pca_components': self.k, 'pca_val_explained': round(self.val_explained, 4)}


class KNNBaseline:
  """Mean Euclidean distance to the k nearest training normals, on raw pixels."""

  has_maps = False

  def __init__(self, train: np.ndarray, k: int = KNN_K):
    self.k = min(k, len(train))
    self.index = neighbors.NearestNeighbors(n_neighbors=self.k, algorithm='brute').fit(train)

  def score(self, x: np.ndarray) -> tuple[np.ndarray, None]:
    distances, _ = self.index.kneighbors(x)
    return distances.mean(axis=1), None

  def info(self) -> dict[str, Any]:
    return {'knn_k': self.k}


class Baseline(Protocol):
  """A fitted baseline: per-image scores and, where it has them, per-value residual maps."""

  has_maps: bool

  def score(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    ...

  def info(self) -> dict[str, Any]:
    ...


# name -> fit(train [n, D] floats, validation normals [m, D]) -> Baseline. Suites list a row per entry.
BASELINES: dict[str, Callable[[np.ndarray, np.ndarray], Baseline]] = {
    'pca': PCABaseline,
    'knn': lambda train, val: KNNBaseline(train),
}


def evaluate(kind: str, config, splits=None) -> dict[str, Any]:
  """Fits baseline `kind` ('pca' | 'knn') on the splits of `config` and scores its test split.

  Returns a results dict shaped like a trained run's results.json: `baseline`, `method`, `dataset`,
  `abnormal`, `image_auroc`, `image_ap`, `pixel_auroc` / `pixel_pro` (None without masks or without
  maps), the training sample size and the baseline's own choices (`pca_components`, `knn_k`).
  """
  from ganomaly_jax.evaluation import metrics, pixel_metrics
  from ganomaly_jax.data import sources

  started = time.time()
  splits = splits if splits is not None else sources.load_splits(config)
  train = train_sample(splits.train, config.seed)
  num_train = len(train)
  if kind not in BASELINES:
    raise ValueError(f'Unknown baseline {kind!r}: use {", ".join(BASELINES)}.')
  val = np.zeros((0, train.shape[1]), np.float32)
  if len(splits.val):
    val = np.concatenate([_to_float(x) for x, _ in _chunks(splits.val, np.arange(len(splits.val)))])
  model = BASELINES[kind](train, val)
  del train, val

  test = splits.test
  keep_maps = model.has_maps and hasattr(test, 'ground_truth')
  scores, labels, maps = [], [], []
  for images, y in _chunks(test, np.arange(len(test))):
    s, residual = model.score(_to_float(images))
    scores.append(s)
    labels.append(y)
    if keep_maps:
      maps.append(residual.reshape(images.shape).mean(axis=-1))  # [n, H, W], channel mean
  scores, labels = np.concatenate(scores), np.concatenate(labels)
  if labels.min() == labels.max():
    raise ValueError('Test set has a single class; AUROC is undefined (check dataset.abnormal).')
  results: dict[str, Any] = {
      'baseline': kind,
      'method': kind,
      'dataset': config.dataset.name,
      'abnormal': splits.info.get('abnormal'),
      'seed': config.seed,
      'image_auroc': float(sk_metrics.roc_auc_score(labels, scores)),
      'image_ap': float(sk_metrics.average_precision_score(labels, scores)),
      'pixel_auroc': None,
      'pixel_pro': None,
      'num_test': int(len(labels)),
      'num_test_abnormal': int(labels.sum()),
      'num_train_used': num_train,
      **model.info(),
  }
  if keep_maps:
    smoothed = pixel_metrics.smooth_maps(np.concatenate(maps), config.eval.smooth_sigma)
    results.update(metrics.pixel_results(smoothed, test))
  results['wall_time_s'] = round(time.time() - started, 1)
  return results
