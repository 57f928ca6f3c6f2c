"""Checkpoint selection on validation normals, and train / validation / test splits that never overlap."""

import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

import synthetic
from ganomaly_jax import train
from ganomaly_jax.config import arguments, schema
from ganomaly_jax.runtime import checkpoint
from ganomaly_jax.data import sources
from helpers import tiny

# The training tests here run one tiny config: they share its programs (tests/conftest.py).
SHARE_PROGRAMS = True


def _config(**args):
  """The tiny GANomaly, 6 steps on at most 32 training and 32 test images, with `args` (argument
  string keys: a dataset set here resolves its own channels)."""
  return arguments.load_config(
      tiny.spec(
          steps=6,
          **{'dataset.max_train': 32, 'dataset.max_test': 32, 'eval.batch_size': 16},
          **args,
      )
  )


class OfferedBest:
  """Spy on CheckpointStore.save_best: records (step, real val loss), offers a scripted loss instead.

  The scripted losses put the minimum in the middle of the run, where neither 'last' nor 'first'
  would land; the real ones are kept to check that training computed a finite validation loss.
  """

  def __init__(self, monkeypatch, scripted: dict[int, float]):
    self.real: dict[int, float] = {}
    real_save_best = checkpoint.CheckpointStore.save_best

    def save_best(store, step, state, val_loss):
      self.real[step] = val_loss
      return real_save_best(store, step, state, scripted.get(step, val_loss))

    monkeypatch.setattr(checkpoint.CheckpointStore, 'save_best', save_best)


@pytest.mark.slow
def test_selected_step_has_the_lowest_validation_loss(tmp_path, monkeypatch):
  spy = OfferedBest(monkeypatch, {2: 0.30, 4: 0.10, 6: 0.20})
  results = train.train_and_evaluate(_config(), str(tmp_path))
  assert sorted(spy.real) == [2, 4, 6]  # three candidates (eval every 2 steps)
  assert all(np.isfinite(v) and v > 0 for v in spy.real.values()), spy.real
  assert results['steps'] == 6 and results['selected_step'] == 4


@pytest.mark.slow
def test_selected_step_follows_the_real_validation_losses(tmp_path, monkeypatch):
  spy = OfferedBest(monkeypatch, {})
  results = train.train_and_evaluate(_config(), str(tmp_path))
  assert sorted(spy.real) == [2, 4, 6]
  assert results['selected_step'] == min(spy.real, key=spy.real.get)


@pytest.mark.slow
def test_select_last_picks_the_last_step(tmp_path, monkeypatch):
  spy = OfferedBest(monkeypatch, {})
  results = train.train_and_evaluate(_config(**{'eval.select': 'last'}), str(tmp_path))
  assert spy.real == {}  # no best-checkpoint candidates at all
  assert results['steps'] == 6 and results['selected_step'] == 6


# --- Splits -------------------------------------------------------------------------------------------


def _fingerprints(source) -> list[bytes]:
  return [np.asarray(source[i]['image']).tobytes() for i in range(len(source))]


def _assert_disjoint(splits: sources.Splits) -> None:
  train, val, test = (_fingerprints(s) for s in (splits.train, splits.val, splits.test))
  assert train and val and test
  assert not set(train) & set(val), 'train and validation share images'
  assert not set(train) & set(test), 'train and test share images'
  assert not set(val) & set(test), 'validation and test share images'
  assert not np.asarray(splits.train.labels).any() and not np.asarray(splits.val.labels).any()


def _unique_images(n: int, offset: int) -> np.ndarray:
  """n distinct 20x20 images: each encodes its index (offset + i) in its first two pixels."""
  images = np.random.default_rng(offset).integers(0, 255, (n, 20, 20), dtype=np.uint8)
  ids = offset + np.arange(n)
  images[:, 0, 0], images[:, 0, 1] = ids // 256, ids % 256
  return images


def _distinct_within(source) -> bool:
  prints = _fingerprints(source)
  return len(set(prints)) == len(prints)


@pytest.mark.parametrize('pool', [False, True])
def test_digit_splits_are_disjoint(pool, repo_root):
  config = arguments.load_config(os.path.join(repo_root, 'configs/ganomaly.py'))
  with config.unlocked():
    config.dataset.pool_normals = pool
  splits = sources.load_splits(config)
  _assert_disjoint(splits)


@pytest.mark.parametrize('pool', [False, True])
def test_npz_splits_are_disjoint(tmp_path, pool, repo_root):
  path = tmp_path / 'data.npz'
  np.savez(
      path,
      x_train=_unique_images(60, 0),
      y_train=np.arange(60) % 3,
      x_test=_unique_images(30, 60),
      y_test=np.arange(30) % 3,
  )
  arg = f'dataset=npz:{path},abnormal=1,isize=20'
  # Only the data splits are under test: 20 px keeps the images unresized (no model is built).
  config = arguments.load_config(
      os.path.join(repo_root, f'configs/ganomaly.py:{arg}'), finish=False
  )
  with config.unlocked():
    config.dataset.pool_normals = pool
  splits = sources.load_splits(schema.resolve(config))
  assert _distinct_within(splits.test)
  _assert_disjoint(splits)
  assert len(splits.train) + len(splits.val) + splits.info['test'] == 90  # nothing dropped


def test_folder_splits_are_disjoint(tmp_path):
  data = synthetic.make_mvtec_folder(tmp_path / 'data', num_train=20)
  splits = sources.load_splits(_config(dataset=data.dataset_name, channels=3))
  paths = [set(s.paths) for s in (splits.train, splits.val, splits.test)]
  assert all(paths) and not (paths[0] & paths[1] or paths[0] & paths[2] or paths[1] & paths[2])
  _assert_disjoint(splits)


@pytest.mark.parametrize('name,shape', [('mnist', (28, 28, 1)), ('cifar10', (32, 32, 3))])
def test_tfds_splits_are_disjoint(name, shape, repo_root):
  # tfds's default mock repeats the same random examples in every split, so each split here gets its
  # own distinct images (tfds.testing.mock_data's as_data_source_fn replaces `tfds.data_source`).
  def data_source(builder, split, **kwargs):
    del builder, kwargs
    offset = {'train': 0, 'test': 1000}[split]
    images = _unique_images(60, offset)[..., None].repeat(shape[-1], -1)
    images = np.pad(images, ((0, 0), (0, shape[0] - 20), (0, shape[1] - 20), (0, 0)))
    return [{'image': im, 'label': i % 10} for i, im in enumerate(images)]

  with tfds.testing.mock_data(as_data_source_fn=data_source):
    config = arguments.load_config(
        os.path.join(repo_root, f'configs/ganomaly.py:dataset={name},abnormal=3')
    )
    splits = sources.load_splits(config)
  assert _distinct_within(splits.train) and _distinct_within(splits.test)
  _assert_disjoint(splits)
  assert len(splits.train) + len(splits.val) + splits.info['test'] == 120
