"""Issue 30: the ganomaly_paper / skip_ganomaly_paper suites, published values, RIAD's small
sizes and map filter."""

import dataclasses

import numpy as np
import pytest
import tensorflow_datasets as tfds

from ganomaly_jax import masks
from ganomaly_jax.masks import grid
from ganomaly_jax.experiments import benchmark, published, suites, tables

ROWS = ['masked', 'grid_mask', 'riad', 'riad_literal', 'pca', 'knn']


def _by_method(runs):
  return {r.method.name: r for r in runs}


def test_ganomaly_paper_expands_to_the_official_mnist_runs(tmp_path):
  data = tmp_path / 'mnist.npz'
  np.savez(
      data,
      x_train=np.zeros((4, 28, 28), np.uint8),
      y_train=np.arange(4),
      x_test=np.zeros((4, 28, 28), np.uint8),
      y_test=np.arange(4),
  )
  suite = suites.load_suite(f'ganomaly_paper:npz:{data}')
  assert [m.name for m in suite.methods] == ['ganomaly', 'ganomaly_mnist_norm'] + ROWS
  assert suite.classes == [str(d) for d in range(10)] and suite.seeds == [0, 1, 2]
  assert suite.epochs == 15 and suite.published('3') == {}  # MNIST: a figure only
  runs = suites.expand(suite, str(tmp_path / 'bench'))
  assert len(runs) == 8 * 10 * 3
  row = _by_method(runs[:8])
  g = row['ganomaly'].config
  assert (g.dataset.name, g.dataset.pool_normals, g.model.isize, g.model.channels) == (
      f'npz:{data}',
      True,
      32,
      1,
  )
  assert (g.train.epochs, g.train.num_steps, g.train.batch_size, g.eval.protocol) == (
      15,
      0,
      64,
      'reference',
  )
  assert (g.optim.g_lr, g.optim.b1, g.loss.w_adv, g.loss.w_con, g.loss.w_enc) == (
      2e-4,
      0.5,
      1.0,
      50.0,
      1.0,
  )
  assert (g.model.latent_dim, g.model.ngf, g.model.ndf, g.train.d_reinit_threshold) == (
      100,
      64,
      64,
      1e-5,
  )
  norm = row['ganomaly_mnist_norm'].config
  assert norm.dataset.normalization == 'mnist_reference' and norm.eval.protocol == 'reference'
  assert g.dataset.normalization == 'tanh'
  for name in ('masked', 'grid_mask', 'riad', 'pca'):
    c = row[name].config
    assert c.dataset.pool_normals and c.eval.protocol == 'honest'
  riad, literal = row['riad'].config, row['riad_literal'].config
  assert riad.mask.cells == (16, 8, 4) and literal.mask.cells == (128, 64, 32, 16)
  assert riad.eval.map_filter == 11 and literal.eval.map_filter == 0
  assert riad.train.epochs == literal.train.epochs == 150
  assert riad.train.early_stop_patience == 5 and riad.optim.g_lr == 1e-4  # RIAD's own optimiser

  small = suites.load_suite(f'ganomaly_paper:npz:{data},seeds=0,epochs=1,classes=1+7')
  runs = suites.expand(small, str(tmp_path / 'small'))
  assert len(runs) == 8 * 2 and _by_method(runs)['ganomaly'].config.train.epochs == 1
  assert _by_method(runs)['riad'].config.train.epochs == 10


def test_skip_ganomaly_paper_rows_and_published_values(tmp_path):
  suite = suites.load_suite('skip_ganomaly_paper:epochs=25,seeds=0')
  assert [m.name for m in suite.methods] == ['ganomaly', 'skip_ganomaly'] + ROWS
  assert suite.classes == list(published.CIFAR10) and suite.epochs == 25
  runs = _by_method(suites.expand(suite, str(tmp_path))[:8])
  skip = runs['skip_ganomaly'].config
  assert skip.model.channels == 3 and skip.model.classifier_kernel == 3
  assert skip.eval.protocol == 'reference' and skip.train.epochs == 25
  bird = suite.published('bird')
  assert bird['ganomaly'].value == 0.510 and bird['skip_ganomaly'].value == 0.448
  assert bird['ganomaly'].kind == 'table' and 'not yet confirmed' in bird['ganomaly'].source
  assert published.lookup('cifar10', '1', 'skip_ganomaly').value == 0.953  # car, by index
  rows = benchmark.published_rows(suite)
  assert len(rows) == 20 and rows[0]['status'] == tables.PUBLISHED


@pytest.mark.parametrize(
    'spec, match',
    [
        ('ganomaly_paper:epochs=0', 'epochs=0 must be >= 1'),
        ('ganomaly_paper:steps=10', 'counts its budget in epochs'),
        ('ganomaly_paper:mnist', 'the only positional argument is npz:PATH'),
    ],
)
def test_bad_paper_suite_options_fail_with_one_line(spec, match):
  with pytest.raises(suites.SuiteError, match=match):
    suites.load_suite(spec)


def test_riad_small_size_rule():
  # RIAD's 2-16 px at 256 px; 2, 4, 8 px at 16 and 32 px, where the literal rule leaves only 2 px.
  assert grid.grid_cell_sizes(256, grid.riad_cells(256)) == (2, 4, 8, 16)
  assert grid.grid_cell_sizes(32, grid.riad_cells(32)) == (2, 4, 8)
  assert grid.grid_cell_sizes(16, grid.riad_cells(16)) == (2, 4, 8)
  assert grid.grid_cell_sizes(32, (128, 64, 32, 16)) == (2,)
  # The map filter: about the largest cell (RIAD: 21 px over 16 px cells).
  assert [grid.riad_filter(s) for s in (16, 32, 256)] == [11, 11, 21]
  for isize in (16, 32, 256):
    masks.validate_mask_config(
        'grid',
        isize,
        dataclasses.make_dataclass(
            'M',
            [
                ('cells', tuple, grid.riad_cells(isize)),
                ('sets', int, 3),
                ('partition', str, 'random'),
                ('draw', str, 'batch'),
                ('fill', float, 0.0),
                ('size', float, 0.5),
            ],
        )(),
    )


@pytest.mark.slow
def test_cifar_paper_suite_runs_on_tfds_mock_data(tmp_path):
  suite = suites.load_suite(
      'skip_ganomaly_paper:classes=bird,seeds=0,epochs=1,methods=ganomaly+skip_ganomaly+pca'
  )
  # Tiny widths and batches: the mock split holds a few dozen images.
  tiny = {
      'model.ngf': 4,
      'model.ndf': 4,
      'model.latent_dim': 8,
      'train.batch_size': 8,
      'eval.batch_size': 8,
      'train.log_every': 1,
      'dataset.max_test': 48,
  }
  suite.methods = [dataclasses.replace(m, overrides={**m.overrides, **tiny}) for m in suite.methods]
  root = str(tmp_path / 'bench')
  with tfds.testing.mock_data(num_examples=60):
    records = benchmark.run_benchmark(suite, root)
  assert [(r.run.method.name, r.status) for r in records] == [
      ('ganomaly', 'done'),
      ('skip_ganomaly', 'done'),
      ('pca', 'done'),
  ]
  rows = {r['method']: r for r in tables.read_csv(root)}
  for name in ('ganomaly', 'skip_ganomaly'):
    assert 0.0 <= float(rows[name][tables.REFERENCE]) <= 1.0
    assert 0.0 <= float(rows[name]['image_auroc']) <= 1.0
  assert rows['pca'][tables.REFERENCE] == ''
  assert float(rows['ganomaly (published: table)']['image_auroc']) == 0.510
  text = (tmp_path / 'bench' / tables.RESULTS_MD).read_text()
  assert 'reference (test-selected)' in text and 'skip_ganomaly (published: table)' in text


def test_map_filter_sets_the_msgms_mean_filter():
  import jax

  from ganomaly_jax import losses, similarity
  from ganomaly_jax.config import arguments, checks

  x, y = jax.random.uniform(jax.random.key(0), (2, 2, 32, 32, 1), minval=-1.0, maxval=1.0)
  raw = 1.0 - similarity.msgms_map(x, y)
  np.testing.assert_allclose(
      losses.anomaly_map(x, {'recon': y}, 'msgms', 11), similarity.mean_filter(raw, 11), rtol=1e-6
  )
  np.testing.assert_allclose(
      losses.anomaly_map(x, {'recon': y}, 'msgms'), similarity.mean_filter(raw, 3), rtol=1e-6
  )  # the scaled rule at 32 px
  with pytest.raises(checks.ConfigError, match='eval.map_filter=5 is not used by eval.map=l1'):
    checks.validate_config(arguments.load_config('configs/ganomaly.py:quick,eval.map_filter=5'))
  with pytest.raises(checks.ConfigError, match='an odd side'):
    checks.validate_config(arguments.load_config('configs/riad.py:quick,eval.map_filter=4'))
