"""eval.readout: synthetic anomalies (deterministic, made from the given normals only, the mask
marks the change), the candidates from the registries, the choice and its record, that the choice
never sees a test label, that the default read-out is the config's own, and the +auto rows."""

import jax
import numpy as np
import pytest
from clu import metric_writers

from ganomaly_jax import losses, programs
from ganomaly_jax import scores as scores_lib
from ganomaly_jax.evaluation import evaluator
from ganomaly_jax.config import checks
from ganomaly_jax.runtime import parallel, rundir
from ganomaly_jax.data import sources, synthetic_anomalies
from ganomaly_jax.evaluation import readout
from helpers import tiny


def textures(n: int, size: int = 16, channels: int = 1, seed: int = 0) -> sources.ArraySource:
  """n smooth random uint8 images (every pixel differs between images)."""
  rng = np.random.default_rng(seed)
  images = rng.integers(40, 215, (n, size, size, channels)).astype(np.uint8)
  return sources.ArraySource('normals', images, np.zeros(n))


class Recording:
  """A source that remembers which records were read."""

  def __init__(self, source):
    self.source, self.read = source, set()

  def __len__(self):
    return len(self.source)

  def __getitem__(self, index):
    self.read.add(int(index))
    return self.source[index]


# ------------------------------------------------------------------ synthetic anomalies


def test_synthetic_set_is_the_normals_then_anomalies_and_deterministic():
  normals = textures(5)
  a = synthetic_anomalies.SyntheticAnomalies(normals, seed=3, min_anomalies=12)
  b = synthetic_anomalies.SyntheticAnomalies(normals, seed=3, min_anomalies=12)
  other = synthetic_anomalies.SyntheticAnomalies(normals, seed=4, min_anomalies=12)
  assert len(a) == 5 + 12 and a.num_anomalies == 12
  assert [int(a[i]['label']) for i in range(len(a))] == [0] * 5 + [1] * 12
  for i in range(5):  # the normals come through unchanged, with empty masks
    np.testing.assert_array_equal(a[i]['image'], normals[i]['image'])
    assert not a.ground_truth(i).any()
  for i in range(5, len(a)):  # the same bytes on every call and every instance
    np.testing.assert_array_equal(a[i]['image'], b[i]['image'])
    np.testing.assert_array_equal(a[i]['image'], a[i]['image'])
    np.testing.assert_array_equal(a.ground_truth(i), b.ground_truth(i))
  assert any(not np.array_equal(a[i]['image'], other[i]['image']) for i in range(5, len(a)))
  # At least one anomaly per normal, however many normals there are.
  assert synthetic_anomalies.SyntheticAnomalies(textures(300), 0).num_anomalies == 300


@pytest.mark.parametrize('channels', [1, 3])
def test_patch_changes_pixels_and_the_mask_marks_exactly_the_paste(channels):
  normals = textures(4, channels=channels)
  synthetic = synthetic_anomalies.SyntheticAnomalies(normals, seed=0, min_anomalies=40)
  for k in range(synthetic.num_anomalies):
    index = synthetic.num_normals + k
    image = synthetic[index]['image'].astype(int)
    target = normals[k % 4]['image'].astype(int)
    mask = synthetic.ground_truth(index)
    assert image.shape == target.shape and mask.shape == target.shape[:2]
    assert set(np.unique(mask)) <= {0.0, 1.0}
    inside = mask > 0
    assert 0 < inside.sum() < inside.size  # a patch, not the whole image
    np.testing.assert_array_equal(image[~inside], target[~inside])  # nothing else changes
    change = np.abs(image - target)[inside].mean()
    assert change >= synthetic_anomalies.MIN_CHANGE  # the patch changes what it covers


def test_patches_come_from_another_given_image_and_nothing_else_is_read():
  # Two flat images: a patch pasted into the dark one can only come from the bright one (scaled by
  # the brightness jitter), so its pixels say where they were cut.
  dark = np.full((16, 16, 1), 50, np.uint8)
  bright = np.full((16, 16, 1), 200, np.uint8)
  normals = Recording(sources.ArraySource('two', np.stack([dark, bright]), np.zeros(2)))
  synthetic = synthetic_anomalies.SyntheticAnomalies(normals, seed=0, min_anomalies=20)
  low, high = synthetic_anomalies.BRIGHTNESS
  for k in range(0, synthetic.num_anomalies, 2):  # even k corrupt the dark image
    index = synthetic.num_normals + k
    pasted = synthetic[index]['image'][synthetic.ground_truth(index) > 0]
    assert pasted.min() >= np.floor(200 * low) and pasted.max() <= min(255, np.ceil(200 * high))
  assert normals.read == {0, 1}


# ------------------------------------------------------------------ candidates and the choice


def test_candidates_come_from_the_registries_facts(tiny_config):
  plain, masked = tiny_config('ganomaly'), tiny_config('masked')
  for config in (plain, masked):
    got = readout.candidates(config)
    scores = {r.score for r in got}
    assert scores == {s for s in scores_lib.SCORES if checks.score_problem(config, s) is None}
    assert len(got) == len(scores) * len(losses.MAPS)  # every fitting score with every map
    assert readout.published(config) in got
  assert 'latent' in {r.score for r in readout.candidates(plain)}  # needs z, ẑ: E-D-E only
  assert 'inpaint' not in {r.score for r in readout.candidates(plain)}  # needs a mask
  assert 'inpaint' in {r.score for r in readout.candidates(masked)}
  assert 'latent' not in {r.score for r in readout.candidates(masked)}


def test_select_best_image_auroc_then_pixel_auroc_then_published():
  row = lambda s, m, image, pixel: {
      'score': s,
      'map': m,
      'image_auroc': image,
      'pixel_auroc': pixel,
  }
  published = readout.Readout('lambda', 'l1')
  rows = [
      row('lambda', 'l1', 0.7, 0.6),
      row('lambda', 'ssim', 0.7, 0.8),
      row('map_max', 'l1', 0.65, 0.6),
  ]
  assert readout.select(rows, published) == ('lambda', 'ssim')  # image tie: better pixel AUROC
  rows += [row('map_mean', 'l1', 0.9, None)]
  assert readout.select(rows, published) == ('map_mean', 'l1')
  tied = [row('reconstruction', 'l1', 0.7, 0.6), row('lambda', 'l1', 0.7, 0.6)]
  assert readout.select(tied, published) == published  # a full tie keeps the published pair
  assert readout.select([row('lambda', 'l1', None, None)], published) == published


def test_with_readout_validates_and_resets_keys_only_other_scores_read(tiny_config):
  config = tiny_config('grid_mask', **{'eval.score': 'map_topk', 'eval.topk_fraction': 0.3})
  chosen = readout.with_readout(config, readout.Readout('inpaint', 'l1'))
  assert (chosen.eval.score, chosen.eval.map, chosen.eval.topk_fraction) == ('inpaint', 'l1', 0.1)
  checks.validate_config(chosen)
  assert config.eval.score == 'map_topk'  # the original is untouched
  recorded = {'readout': {'mode': 'auto', 'score': 'map_mean', 'map': 'ssim'}}
  assert readout.published(readout.recorded_config(config, recorded)) == ('map_mean', 'ssim')
  published_run = {'readout': {'mode': 'published', 'score': 'map_topk', 'map': 'riad'}}
  assert readout.recorded_config(config, published_run) is config


def test_bad_readout_values_fail_with_one_line(tiny_config):
  with pytest.raises(
      checks.ConfigError, match=r"^eval.readout='best': use 'published' or " r"'auto'\.$"
  ):
    checks.validate_config(tiny_config('masked', **{'eval.readout': 'best'}))
  with pytest.raises(checks.ConfigError, match='needs dataset.val_fraction > 0'):
    checks.validate_config(
        tiny_config('masked', **{'eval.readout': 'auto', 'dataset.val_fraction': 0.0})
    )


@pytest.mark.parametrize('method', ['ganomaly', 'skip_ganomaly', 'masked', 'grid_mask'])
def test_default_readout_is_the_published_one(method, tiny_config, build_programs):
  config = tiny_config(method)
  assert config.eval.readout == 'published'
  progs = build_programs(config)  # nothing compiles until called
  chosen = readout.choose(config, None, progs, None, None)  # reads neither state nor data
  assert chosen.config is config and chosen.step_config is progs.step_config
  assert chosen.eval_maps is progs.eval_maps
  assert chosen.record == {'mode': 'published', 'score': config.eval.score, 'map': config.eval.map}


# ------------------------------------------------------------------ end to end, no test labels


class ShuffledLabels:
  """The test split with its labels permuted (images, masks and order unchanged)."""

  def __init__(self, source, seed):
    self.source = source
    self.labels = np.random.default_rng(seed).permutation(
        [int(source[i]['label']) for i in range(len(source))]
    )

  def __len__(self):
    return len(self.source)

  def __getitem__(self, index):
    return {**self.source[index], 'label': np.int32(self.labels[index])}


@pytest.mark.slow  # trains a run, then reads it out every way
def test_auto_choice_is_recorded_and_blind_to_test_labels(tmp_path, tiny_config):
  config = tiny_config(
      'masked',
      **{
          'eval.readout': 'auto',
          'eval.select': 'last',
          'dataset.max_test': 48,
          'eval.batch_size': 16,
      },
  )
  checks.validate_config(config)
  mesh = parallel.make_mesh()
  progs = programs.build(config, mesh)
  state = progs.init(jax.random.key(config.seed))  # untrained: the choice needs no training
  splits = sources.load_splits(config)
  writer = metric_writers.create_default_writer(str(tmp_path), just_logging=True)
  run_info = {'method': config.method, 'steps': 0}

  def final(workdir, test):
    (workdir).mkdir()
    split = sources.Splits(splits.train, splits.val, test, splits.info)
    return evaluator.final_evaluation(
        config, str(workdir), state, None, progs, split, mesh, writer, run_info
    )

  results = final(tmp_path / 'a', splits.test)
  shuffled = ShuffledLabels(splits.test, seed=1)
  assert list(shuffled.labels) != [int(splits.test[i]['label']) for i in range(len(splits.test))]
  again = final(tmp_path / 'b', shuffled)

  # The results (train_and_evaluate writes them to results.json) record the mode, the choice, the
  # published pair and every candidate's AUROCs.
  record = results['readout']
  assert record['mode'] == 'auto' and record['published'] == {'score': 'lambda', 'map': 'l1'}
  pairs = [(c['score'], c['map']) for c in record['candidates']]
  assert pairs == [tuple(r) for r in readout.candidates(config)]
  assert all(
      0.0 <= c['image_auroc'] <= 1.0 and 0.0 <= c['pixel_auroc'] <= 1.0
      for c in record['candidates']
  )
  best = max(c['image_auroc'] for c in record['candidates'])
  assert {'score': record['score'], 'map': record['map']} in [
      {'score': c['score'], 'map': c['map']}
      for c in record['candidates']
      if c['image_auroc'] == best
  ]
  assert record['synthetic']['normals'] == len(splits.val)
  assert results['score'] == record['score']  # the test pass used the choice

  # Shuffling the test labels changes the test metrics but not the read-out or its evidence.
  assert again['readout'] == record
  assert again['image_auroc'] != pytest.approx(results['image_auroc'])
  assert again['score_min'] == results['score_min'] and again['score_max'] == results['score_max']


# ------------------------------------------------------------------ the benchmark's +auto rows


@pytest.mark.slow
def test_auto_row_reevaluates_its_methods_checkpoint_and_the_table_shows_readouts(
    tmp_path, monkeypatch, repo_root
):
  import os

  from ganomaly_jax.experiments import benchmark, suites, tables

  arg = tiny.arg(**tiny.SMALL_DATA)
  methods = [
      m
      for m in suites.standard_methods(arg, os.path.join(repo_root, 'configs'))
      if m.name in ('masked', 'masked+auto')
  ]
  suite = suites.Suite(name='micro', methods=methods, classes=['1'], seeds=[0], steps=2)
  root = str(tmp_path / 'bench')
  records = benchmark.run_benchmark(suite, root)
  assert [(r.run.method.name, r.status) for r in records] == [
      ('masked', 'done'),
      ('masked+auto', 'done'),
  ]
  base, auto = (rundir.read_results(r.run.workdir) for r in records)
  assert base['readout'] == {'mode': 'published', 'score': 'lambda', 'map': 'l1'}
  assert auto['readout']['mode'] == 'auto' and auto['rescored_from'] == records[0].run.workdir
  assert auto['selected_step'] == base['selected_step']  # the same checkpoint, read out again
  rows = tables.read_csv(root)
  assert [r['readout'] for r in rows] == [
      'lambda/l1',
      f'{auto["readout"]["score"]}/{auto["readout"]["map"]}',
  ]
  assert '| masked+auto | 1 |' in rundir.path(root, tables.RESULTS_MD).read_text()

  # A rerun finds both finished: nothing is trained or evaluated again.
  from ganomaly_jax.experiments import rescore

  monkeypatch.setattr(rescore, 'rescore_run', lambda *a: pytest.fail('re-evaluated'))
  again = benchmark.run_benchmark(suite, root, train_fn=lambda *a: pytest.fail('trained'))
  assert [r.status for r in again] == ['skipped', 'skipped']


def test_auto_rows_need_their_method_earlier_in_the_suite():
  from ganomaly_jax.experiments import suites

  with pytest.raises(
      suites.SuiteError, match=r"masked\+auto re-evaluates 'masked', which is not " 'an earlier row'
  ):
    suites.load_suite('digits:methods=masked+auto+pca')
  picked = suites.load_suite('digits:methods=masked+masked+auto+pca')  # '+' inside a row name
  assert [m.name for m in picked.methods] == ['masked', 'masked+auto', 'pca']
  masked = suites.Method('masked', 'configs/masked.py')
  other = suites.Method('x', 'configs/masked.py', {'loss.w_adv': 0.0}, reevaluates='masked')
  assert 'may change only eval.* keys' in suites.reevaluation_problem(other, [masked])
  assert suites.reevaluation_problem(suites.auto_readout(masked), [masked]) is None
