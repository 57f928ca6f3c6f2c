"""Issue 30: budgets in epochs, the reference protocol beside the honest one, early stopping."""

import importlib.util
import json

import numpy as np
import pytest
from helpers import REPO, tiny

from ganomaly_jax import schedule, train
from ganomaly_jax.config import arguments, checks, schema
from ganomaly_jax.evaluation import reference
from ganomaly_jax.runtime import rundir

# Keys of results.json that may differ between two runs of the same config (clocks).
_CLOCKS = ('phase_seconds', 'train_wall_time_s')


def _config(method='ganomaly', **args):
  """The tiny method on 32 training images (4 steps of 8 per epoch) and 32 test images."""
  return arguments.load_config(
      tiny.spec(
          method,
          **{
              'dataset.max_train': 32,
              'dataset.max_test': 32,
              'eval.batch_size': 16,
              'train.num_steps': 0,
              'train.epochs': 2,
              **args,
          },
      )
  )


def test_epochs_to_steps():
  assert schedule.steps_per_epoch(100, 16) == 6  # the last partial batch is dropped
  assert schedule.steps_per_epoch(64, 64) == 1
  # Two processes, 8 each per global batch of 16: the smaller shard (50) sets the count.
  assert schedule.steps_per_epoch(101, 16, process_count=2) == 6
  with pytest.raises(schedule.ScheduleError, match='no full batch'):
    schedule.steps_per_epoch(10, 16)

  config = _config()
  assert config.train.num_steps == 0  # left for the epoch length
  filled = schedule.with_epoch_steps(config, 36)
  assert filled.train.num_steps == 2 * 4 and filled.train.epochs == 0
  checks.validate_config(filled)  # a finished config validates as it is (config.json)
  # quick sets eval_every / checkpoint_every to 2 steps: explicit values stay.
  assert filled.train.eval_every == 2 and filled.train.checkpoint_every == 2
  per_epoch = schedule.with_epoch_steps(
      _config(**{'train.eval_every': 0, 'train.checkpoint_every': 0}), 36
  )
  assert per_epoch.train.eval_every == per_epoch.train.checkpoint_every == 4
  steps_config = arguments.load_config(tiny.spec(steps=5))
  assert schedule.with_epoch_steps(steps_config, 36) is steps_config  # no epochs: unchanged


def test_early_stop_counts_evaluations_without_improvement():
  stop = schedule.EarlyStop(2)
  assert [stop.update(v) for v in (3.0, 2.0, 2.5, 1.0, 1.5, float('nan'))] == [
      False,
      False,
      False,
      False,
      False,
      True,
  ]
  assert not any(schedule.EarlyStop(0).update(v) for v in (1.0, 2.0, 3.0))


@pytest.mark.parametrize(
    'args, match',
    [
        ({'train.num_steps': 5}, r'train.epochs=2 and train.num_steps=5 are both set'),
        ({'eval.protocol': 'official'}, r"eval.protocol='official': use 'honest' or 'reference'"),
        ({'train.epochs': -1}, r'train.epochs=-1 must be an integer >= 0'),
        ({'dataset.normalization': 'zscore'}, r"dataset.normalization='zscore'"),
    ],
)
def test_bad_values_give_one_line(args, match):
  with pytest.raises(checks.ConfigError, match=match) as error:
    checks.validate_config(_config(**args))
  assert '\n' not in str(error.value)


def test_reference_protocol_needs_an_unmasked_model():
  with pytest.raises(checks.ConfigError, match='needs mask.kind=none'):
    checks.validate_config(_config('masked', **{'eval.protocol': 'reference'}))


def test_official_auc_is_sklearns_on_min_max_scaled_scores():
  labels = np.array([0, 0, 1, 1, 0, 1])
  scores = np.array([0.1, 0.4, 0.35, 0.8, 0.2, 0.9])
  assert reference.official_auc(labels, scores) == pytest.approx(8 / 9)
  points = [
      {'epoch': 1, 'step': 4, 'image_auroc': 0.6},
      {'epoch': 2, 'step': 8, 'image_auroc': 0.7},
      {'epoch': 3, 'step': 12, 'image_auroc': 0.65},
  ]
  entry = reference.summary(points)
  assert (entry['image_auroc'], entry['epoch'], entry['last_image_auroc']) == (0.7, 2, 0.65)
  assert entry['curve'] == [0.6, 0.7, 0.65] and entry['selection'].startswith('test')


@pytest.mark.slow
@pytest.mark.parametrize('method', ['ganomaly', 'skip_ganomaly'])
def test_reference_readout_beside_bit_identical_honest_results(tmp_path, method):
  honest = train.train_and_evaluate(_config(method), str(tmp_path / 'honest'))
  both = train.train_and_evaluate(
      _config(method, **{'eval.protocol': 'reference'}), str(tmp_path / 'reference')
  )
  assert honest['steps'] == both['steps'] == 8 and both['epochs'] == 2
  ref = both.pop('reference')
  assert 'reference' not in honest
  assert len(ref['curve']) == 2 and ref['epoch'] in (1, 2)
  assert ref['image_auroc'] == max(ref['curve']) and ref['last_image_auroc'] == ref['curve'][-1]
  assert all(0.0 <= v <= 1.0 for v in ref['curve'])
  for key in _CLOCKS:
    honest.pop(key, None), both.pop(key, None)
  assert both == honest  # every honest number bit for bit
  saved = rundir.read_results(str(tmp_path / 'reference'))
  assert saved['reference']['curve'] == ref['curve']
  curve = json.loads(rundir.path(str(tmp_path / 'reference'), reference.CURVE_FILE).read_text())
  assert [p['step'] for p in curve['curve']] == [4, 8]
  # What config.json records counts in steps and loads again (mode=eval, rescore).
  saved_config = schema.from_saved(
      rundir.read_json(rundir.path(str(tmp_path / 'reference'), rundir.CONFIG))['config']
  )
  assert (saved_config.train.num_steps, saved_config.train.epochs) == (8, 0)
  checks.validate_config(saved_config)


def test_mnist_reference_normalization_is_the_official_one():
  import jax.numpy as jnp

  from ganomaly_jax import programs
  from ganomaly_jax.data import normalization, pipeline
  from ganomaly_jax.runtime import parallel

  pixels = np.array([0, 128, 255], np.uint8)
  ours = np.asarray(
      normalization.from_tanh(jnp.asarray(pipeline.to_float(pixels)), 'mnist_reference')
  )
  np.testing.assert_allclose(ours, (pixels / 255.0 - 0.1307) / 0.3081, atol=1e-5)
  assert normalization.from_tanh(jnp.ones(2), 'tanh') is not None
  # The steps read it: configs that differ in it do not share programs.
  mesh = parallel.make_mesh()
  plain = _config()
  official = _config(**{'dataset.normalization': 'mnist_reference'})
  assert programs.program_key(plain, mesh) != programs.program_key(official, mesh)
  assert programs.program_key(plain, mesh) == programs.program_key(_config(abnormal=3), mesh)


@pytest.mark.slow  # a whole run, stopped early
def test_early_stop_ends_the_run_and_it_counts_as_finished(tmp_path, monkeypatch):
  losses = iter([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
  monkeypatch.setattr(train, '_validate', lambda *args: next(losses))
  config = _config(**{'train.epochs': 3, 'train.early_stop_patience': 1})
  results = train.train_and_evaluate(config, str(tmp_path))
  # Validation every 2 steps (quick): the loss rises at step 4, patience 1 stops there.
  assert results['steps'] == 4 and results['early_stopped'] and results['epochs'] == 3
  assert rundir.is_finished(results, 12)


@pytest.mark.slow
def test_reference_diagnosis_reads_one_checkpoint_three_ways(tmp_path):
  # One epoch: the latest checkpoint is the one both read-outs of the run used.
  workdir = str(tmp_path / 'run')
  results = train.train_and_evaluate(
      _config('ganomaly', **{'eval.protocol': 'reference', 'train.epochs': 1}), workdir
  )
  assert results['selected_step'] == results['steps'] == 4
  spec = importlib.util.spec_from_file_location(
      'reference_diagnosis', REPO / 'scripts' / 'reference_diagnosis.py'
  )
  script = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(script)
  found = script.diagnose(workdir, seed=0)
  assert found['step'] == 4 and found['num_test'] == results['num_test']
  # The official order reproduces the run's own reference point; inference-mode BatchNorm its
  # honest AUROC (min-max scaling keeps the ranking); the shuffled order is a third, valid AUROC.
  assert found['official_order'] == results['reference']['last_image_auroc']
  assert found['inference_mode'] == pytest.approx(results['image_auroc'], abs=1e-9)
  assert 0.0 <= found['shuffled_order'] <= 1.0
