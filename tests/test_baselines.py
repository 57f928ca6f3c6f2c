"""Baselines (PCA reconstruction, k-NN distance) and the generated texture data they run on.

Measured on digits, seed 0, all ten classes: PCA image AUROC 0.563-0.940, mean 0.764 (21-22
components); k-NN 0.969-0.999, mean 0.988. The assertions keep a margin below those and above
chance: PCA mean >= 0.70 (chance + 0.20) and every class > 0.54; k-NN every class >= 0.95.
"""

import os

import numpy as np
import pytest

from ganomaly_jax.config import arguments
from ganomaly_jax.experiments import baselines
from ganomaly_jax.data import sources, textures
from helpers import REPO

GANOMALY = os.path.join(REPO, 'configs', 'ganomaly.py')


def digits_config(abnormal: int, seed: int = 0):
  return arguments.load_config(f'{GANOMALY}:abnormal={abnormal},seed={seed}')


@pytest.mark.slow  # ten one-class splits, PCA and k-NN on each
def test_baselines_beat_chance_on_every_digit():
  pca, knn = [], []
  for digit in range(10):
    config = digits_config(digit)
    splits = sources.load_splits(config)
    pca.append(baselines.evaluate('pca', config, splits))
    knn.append(baselines.evaluate('knn', config, splits))
  pca_auroc = np.array([r['image_auroc'] for r in pca])
  knn_auroc = np.array([r['image_auroc'] for r in knn])
  assert pca_auroc.mean() >= 0.70 and pca_auroc.min() > 0.54, pca_auroc.round(3)
  assert knn_auroc.min() >= 0.95, knn_auroc.round(3)
  for r in pca + knn:  # class-labelled data has no masks: no pixel metrics
    assert r['pixel_auroc'] is None and r['baseline'] in ('pca', 'knn')
    assert r['num_test'] > r['num_test_abnormal'] > 0
  assert all(1 <= r['pca_components'] <= 256 and r['pca_val_explained'] >= 0.95 for r in pca)
  assert all(r['knn_k'] == baselines.KNN_K for r in knn)


def test_components_are_chosen_on_validation_variance():
  rng = np.random.default_rng(0)
  # Training normals vary along 3 axes; validation normals only along the first 2 (with 1 % noise).
  basis = np.linalg.qr(rng.normal(size=(20, 3)))[0].T
  train = rng.normal(size=(200, 3)) * [3.0, 2.0, 1.0] @ basis
  val = rng.normal(size=(50, 2)) * [3.0, 2.0] @ basis[:2] + 0.01 * rng.normal(size=(50, 20))
  model = baselines.PCABaseline(train.astype(np.float32), val.astype(np.float32))
  _, components, variances = baselines.principal_axes(train)
  np.testing.assert_allclose(variances, [9.0, 4.0, 1.0], rtol=0.25)  # 3 axes, rank 3
  assert components.shape == (3, 20)
  assert model.k == 2 and model.val_explained >= 0.95
  # In-span images reconstruct almost exactly; an off-span one leaves a residual.
  scores, residual = model.score(np.stack([val[0], basis[2] * 5]).astype(np.float32))
  assert scores[0] < 1e-3 < scores[1] and residual.shape == (2, 20)


def test_knn_is_the_mean_distance_to_the_k_nearest():
  train = np.array([[0.0], [1.0], [2.0], [10.0]], np.float32)
  model = baselines.KNNBaseline(train, k=2)
  scores, maps = model.score(np.array([[0.0], [5.0]], np.float32))
  np.testing.assert_allclose(scores, [0.5, 3.5])
  assert maps is None and baselines.KNNBaseline(train, k=9).k == 4


def test_training_sample_is_capped(monkeypatch):
  source = sources.ArraySource('x', np.zeros((50, 4, 4, 1), np.uint8), np.zeros(50))
  assert baselines.train_sample(source, 0).shape == (50, 16)
  monkeypatch.setattr(baselines, 'MAX_TRAIN_VALUES', 16 * 7)  # 7 images of 16 values
  sample = baselines.train_sample(source, 0)
  assert sample.shape == (7, 16) and sample.min() == -1.0  # scaled as the input pipeline scales


@pytest.fixture
def small_textures(tmp_path, monkeypatch):
  """One texture (brick), few patches: the generator's layout at a fraction of its size."""
  pytest.importorskip('skimage', reason='scikit-image is in the test extra: pip install -e .[test]')
  monkeypatch.setattr(textures, 'TEXTURES', ('brick',))
  monkeypatch.setattr(textures, 'TRAIN', 40)
  monkeypatch.setattr(textures, 'TEST_GOOD', 10)
  monkeypatch.setattr(textures, 'TEST_DEFECT', 4)
  root = str(tmp_path / 'textures')
  return root, textures.write_textures(root)


def test_textures_are_written_once_in_mvtec_layout(small_textures):
  root, (folder,) = small_textures
  assert sorted(os.listdir(os.path.join(folder, 'test'))) == ['good', 'hole', 'scratch', 'stain']
  assert len(os.listdir(os.path.join(folder, 'train', 'good'))) == 40
  for defect in textures.DEFECTS:
    names = sorted(os.listdir(os.path.join(folder, 'test', defect)))
    masks = sorted(os.listdir(os.path.join(folder, 'ground_truth', defect)))
    assert len(names) == 4 and masks == [n.replace('.png', '_mask.png') for n in names]
  stamp = os.path.getmtime(os.path.join(folder, 'train', 'good', '000.png'))
  assert textures.write_textures(root) == [folder]  # same recipe: nothing rewritten
  assert os.path.getmtime(os.path.join(folder, 'train', 'good', '000.png')) == stamp


@pytest.mark.parametrize('kind', textures.DEFECTS)
def test_defect_mask_is_exactly_the_changed_region(kind):
  rng = np.random.default_rng(1)
  patch = np.full((64, 64), 128, np.uint8)
  defective, mask = textures.add_defect(patch, kind, rng)
  assert 10 < mask.sum() < 64 * 64 * 0.25
  changed = defective != patch
  assert changed[mask].mean() > 0.99 and not changed[~mask & ~_ring(mask)].any()


def _ring(mask: np.ndarray) -> np.ndarray:
  """Pixels next to the mask: a stain's blur fades out there, below the mask's threshold."""
  from scipy import ndimage

  return ndimage.binary_dilation(mask, iterations=6) & ~mask


def test_pca_gives_pixel_metrics_on_folder_masks_knn_does_not(small_textures):
  _, (folder,) = small_textures
  config = arguments.load_config(f'{GANOMALY}:dataset=folder:{folder},isize=32,channels=1')
  pca = baselines.evaluate('pca', config)
  knn = baselines.evaluate('knn', config)
  assert 0 <= pca['pixel_auroc'] <= 1 and pca['pixel_pro'] is not None
  assert pca['num_pixel_gt_defect_images'] == 12
  assert knn['pixel_auroc'] is None and knn['image_auroc'] > 0


def test_textures_without_scikit_image_is_one_clear_line(monkeypatch, tmp_path):
  import sys

  monkeypatch.setitem(sys.modules, 'skimage', None)  # import skimage -> ImportError
  with pytest.raises(textures.TexturesError, match=r'needs scikit-image, a declared dependency'):
    textures.write_textures(str(tmp_path))
