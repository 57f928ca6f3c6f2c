"""End-to-end quick runs on the npz and (mocked) tfds sources, and the one-class protocol."""

import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from ganomaly_jax import train
from ganomaly_jax.config import arguments
from ganomaly_jax.data import sources
from helpers import REPO, tiny


def load(arg):
  return arguments.load_config(os.path.join(REPO, f'configs/ganomaly.py:{arg}'))


def load_tiny(**args):
  """The tiny GANomaly, 2 steps on at most 32 training and 32 test images, with `args` (a dataset
  set here resolves its own channels)."""
  return arguments.load_config(
      tiny.spec(
          steps=2,
          **{'dataset.max_train': 32, 'dataset.max_test': 32, 'eval.batch_size': 16},
          **args,
      )
  )


@pytest.mark.slow
def test_npz_source_end_to_end_and_protocol(tmp_path):
  rng = np.random.default_rng(0)
  path = tmp_path / 'data.npz'
  np.savez(
      path,
      x_train=rng.integers(0, 255, (60, 20, 20), dtype=np.uint8),
      y_train=np.arange(60) % 3,
      x_test=rng.integers(0, 255, (30, 20, 20), dtype=np.uint8),
      y_test=np.arange(30) % 3,
  )
  splits = sources.load_splits(load(f'dataset=npz:{path},abnormal=1,isize=16'))
  # Train/val hold normals only; the test set holds test normals + abnormals of both splits (20 + 10).
  assert splits.info['test_abnormal'] == 30 and splits.info['test'] == 50
  assert not splits.train.labels.any() and not splits.val.labels.any()
  assert splits.train.images.shape[1:] == (16, 16, 1)
  results = train.train_and_evaluate(
      load_tiny(dataset=f'npz:{path}', abnormal=1), str(tmp_path / 'run')
  )
  assert 0.0 <= results['image_auroc'] <= 1.0 and results['abnormal'] == 1


@pytest.mark.slow
@pytest.mark.parametrize('name,channels', [('mnist', 1), ('cifar10', 3)])
def test_tfds_source_end_to_end(name, channels, tmp_path):
  with tfds.testing.mock_data(num_examples=40):
    config = load_tiny(dataset=name, abnormal='cat' if name == 'cifar10' else 3, channels=channels)
    results = train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert 0.0 <= results['image_auroc'] <= 1.0
  assert results['abnormal'] == 3  # 'cat' is CIFAR-10 class 3


@pytest.mark.parametrize('abnormal', ['10', 'dog7', '-1'])
def test_bad_abnormal_class_is_one_clear_error(abnormal):
  with pytest.raises(sources.DataError, match='dataset.abnormal'):
    sources.resolve_abnormal(abnormal, 10, sources.CIFAR10_NAMES)


def test_missing_npz_path_is_one_clear_error():
  with pytest.raises(sources.DataError, match='not found'):
    sources.load_splits(load('dataset=npz:/no/such/file.npz,channels=1'))
  with pytest.raises(
      ValueError, match='npz dataset not found'
  ):  # resolving its channels says so too
    load('dataset=npz:/no/such/file.npz')


@pytest.mark.parametrize('name', ['folder:gs://bucket/images', 'npz:gs://bucket/mnist.npz'])
def test_a_dataset_in_a_bucket_is_one_clear_error(name):
  # Data is read with local file calls; the error says how to get it onto a local disk.
  with pytest.raises(sources.DataError, match='local path, not a URL.*gcloud storage cp'):
    sources.get_dataset(name)
