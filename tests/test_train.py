"""The training loop's pieces without training: the finished rule, divergence naming, rollback."""

import os

import numpy as np
import pytest

from ganomaly_jax import train
from ganomaly_jax.runtime import divergence, rundir
from ganomaly_jax.data import sources
from helpers.tiny import tiny_config


def test_finished_run_returns_its_results_without_loading_data(tmp_path, monkeypatch):
  workdir = str(tmp_path / 'run')
  os.makedirs(workdir)
  rundir.write_json(rundir.path(workdir, rundir.RESULTS), {'steps': 4, 'image_auroc': 0.75})

  def no_data(config):
    raise AssertionError('a finished run loaded its data')

  monkeypatch.setattr(sources, 'load_splits', no_data)
  assert train.train_and_evaluate(tiny_config(**{'train.num_steps': 4}), workdir) == {
      'steps': 4,
      'image_auroc': 0.75,
  }
  # Asking for more steps is not finished: it goes on to load the data.
  with pytest.raises(AssertionError, match='loaded its data'):
    train.train_and_evaluate(tiny_config(**{'train.num_steps': 5}), workdir)


def test_divergence_names_the_terms():
  nan, ok = float('nan'), {'nonfinite': 1.0, 'd_reinit': 0.0}
  assert divergence.divergence({**ok, 'g_loss': nan, 'g_adv': nan, 'd_loss': 1.0}, 1e6) == (
      'non-finite g_adv, g_loss'
  )
  assert divergence.divergence({**ok, 'g_loss': 1.0, 'd_loss': -3e6}, 1e6) == (
      'd_loss beyond train.loss_limit=1e+06'
  )
  assert divergence.divergence({**ok, 'g_loss': 1.0, 'd_loss': 1.0}, 1e6) == 'non-finite gradients'
  assert divergence.divergence({**ok, 'g_loss': 5e6, 'd_loss': 1.0}, 0) == 'non-finite gradients'


class _Store:
  """The three CheckpointStore calls Rollback makes; holds at most one checkpoint."""

  def __init__(self, checkpoint=None):
    self.checkpoint = checkpoint

  def wait(self):
    pass

  def latest_step(self):
    return None if self.checkpoint is None else self.checkpoint[1]

  def restore_latest(self, state_like, data_iter, set_aside=True):
    return self.checkpoint


class _State:

  def __init__(self, step):
    self.step = np.int32(step)


def _bad(step, **terms):
  return (step, {'nonfinite': 1.0, 'd_reinit': 0.0, 'g_loss': float('nan'), 'd_loss': 1.0, **terms})


def _good(step):
  return (step, {'nonfinite': 0.0, 'd_reinit': 0.0, 'g_loss': 1.0, 'd_loss': 1.0})


def test_stop_raises_with_step_terms_and_last_checkpoint():
  t = tiny_config(**{'train.on_nonfinite': 'stop'}).train
  rollback = divergence.Rollback(t, _Store((_State(2), 2)), restart=None)
  with pytest.raises(
      rundir.TrainingError, match=r'Divergence at step 3 \(non-finite g_loss\); stopping\. .*step 2'
  ):
    rollback([_good(2), _bad(3), _bad(4)], _State(4), 'iter')


def test_rollback_restores_marks_the_bad_steps_and_keeps_a_budget():
  t = tiny_config(**{'train.on_nonfinite': 'rollback', 'train.max_rollbacks': 1}).train
  rollback = divergence.Rollback(t, _Store((_State(2), 2)), restart=None)
  state, data = rollback([_good(3), _bad(4), _bad(5)], _State(5), 'iter')
  assert int(state.step) == 2 and data == 'iter'
  assert rollback.count == 1 and rollback.skip_batches == {4, 5}
  with pytest.raises(rundir.TrainingError, match='stopping after 1 rollbacks'):
    rollback([_bad(4)], _State(4), 'iter')


def test_rollback_without_a_checkpoint_restarts_from_the_initial_state():
  t = tiny_config(**{'train.on_nonfinite': 'rollback'}).train
  rollback = divergence.Rollback(t, _Store(None), restart=lambda: (_State(0), 'fresh iter'))
  state, data = rollback([_bad(1)], _State(1), 'iter')
  assert int(state.step) == 0 and data == 'fresh iter' and rollback.skip_batches == {1}


def test_hparams_are_the_configs_scalar_leaves():
  flat = train.hparams(tiny_config())
  assert flat['train.num_steps'] == 4 and flat['method'] == 'ganomaly'
  assert all(isinstance(v, (int, float, str, bool)) for v in flat.values())


@pytest.mark.slow
def test_quick_run_on_gs_writes_the_run_directory_through_epath(gs_root, tmp_path, monkeypatch):
  # gs:// is fsspec's in-memory file system (tests/fake_gcs.py). Orbax's arrays (tensorstore's own
  # GCS driver) and TensorBoard (tf.io.gfile) cannot reach it, so those two go to a local folder;
  # everything else the run writes and reads (config, curves, results, pictures, the finished rule,
  # restart) goes to gs://.
  from clu import metric_writers

  from ganomaly_jax.runtime import checkpoint

  local = str(tmp_path / 'local')
  store, writer = checkpoint.CheckpointStore, metric_writers.create_default_writer
  monkeypatch.setattr(checkpoint, 'CheckpointStore', lambda workdir, keep=2: store(local, keep))
  monkeypatch.setattr(
      metric_writers, 'create_default_writer', lambda logdir, **kw: writer(local, **kw)
  )
  monkeypatch.chdir(tmp_path)
  config = tiny_config(
      **{
          'train.num_steps': 2,
          'train.log_every': 1,
          'dataset.max_train': 64,
          'dataset.max_test': 32,
          'eval.batch_size': 16,
          'eval.pictures': True,
          'train.tensorboard': True,
      }
  )
  results = train.train_and_evaluate(config, gs_root)
  names = {p.name for p in rundir.path(gs_root).iterdir()}
  assert {
      rundir.RESULTS,
      rundir.CONFIG,
      rundir.CURVES,
      'loss_curves.png',
      'roc_pr.png',
      'score_histogram.png',
      'extremes.png',
  } <= names, names
  assert rundir.read_results(gs_root) == results and results['steps'] == 2
  assert [s for s, _ in rundir.read_curves(gs_root)['g_loss']] == [1, 2]
  assert sorted(os.listdir(tmp_path)) == ['local']  # nothing landed in a local 'gs:' folder
  # The finished rule reads gs://; a restart moves the run aside there.
  assert train.train_and_evaluate(config, gs_root) == results
  rundir.move_aside(gs_root, stamp='x')
  assert rundir.read_results(gs_root) is None
  assert rundir.read_json(rundir.path(gs_root, 'old_x', rundir.RESULTS)) == results
