"""Final evaluation: a quick masked run over a generated folder with ground-truth masks, MC-dropout and
FID without weights; plus unit tests of the evaluation helpers.

The run itself is the session fixture `masked_run` (tests/conftest.py), shared with test_infer.
"""

from __future__ import annotations

import json
import shutil

import jax
import numpy as np
from PIL import Image
import pytest

import synthetic
from ganomaly_jax import step as step_lib
from ganomaly_jax.config import frozen
from ganomaly_jax.evaluation import metrics, passes, uncertainty
from ganomaly_jax.inference import finished_run
from ganomaly_jax.data import sources

PICTURES = (
    'loss_curves.png',
    'roc_pr.png',
    'score_histogram.png',
    'extremes.png',
    'extremes_uncertainty.png',
)


def _unit_interval(value) -> bool:
  return isinstance(value, float) and 0.0 <= value <= 1.0


@pytest.mark.slow
def test_results_hold_image_pixel_and_mc_metrics(masked_run):
  results = json.loads((masked_run.workdir / 'results.json').read_text())
  assert results == json.loads(
      json.dumps(masked_run.results)
  )  # what was returned is what was written
  assert results['method'] == 'masked' and results['steps'] == 2
  n_good, n_defect = len(masked_run.data.test_good), len(masked_run.data.test_defect)
  assert results['num_test'] == n_good + n_defect
  assert results['num_test_abnormal'] == n_defect
  for key in ('image_auroc', 'image_ap', 'pixel_auroc', 'pixel_pro', 'mc_auroc'):
    assert _unit_interval(results[key]), (key, results[key])
  # Every test image has a known mask: good ones are all-zero, every defect has its mask file.
  assert results['num_pixel_gt_images'] == n_good + n_defect
  assert results['num_pixel_gt_defect_images'] == n_defect
  assert results['score_min'] < results['score_max']
  assert results['pixel_map_max'] > 0
  assert results['smooth_sigma'] == 1.0 and results['mc_samples'] == 2
  # The operating point: a raw-score threshold from the validation normals, and its test metrics.
  assert results['threshold_quantile'] == 0.95 and results['num_val'] > 0
  assert isinstance(results['threshold'], float)
  for key in ('image_f1', 'image_precision', 'image_recall', 'image_fpr', 'image_f1_oracle'):
    assert _unit_interval(results[key]), (key, results[key])
  assert results['image_f1'] <= results['image_f1_oracle'] + 1e-12  # the oracle is an upper bound


@pytest.mark.slow
def test_fid_without_weights_is_null_not_a_crash(masked_run):
  results = masked_run.results
  assert results['fid_normal'] is None and results['fid_abnormal'] is None
  assert 'fid_error' not in results
  assert results['fid_normal_samples'] == len(masked_run.data.test_good)
  assert results['fid_abnormal_samples'] == len(masked_run.data.test_defect)


@pytest.mark.slow
def test_pictures_and_tensorboard_grid_written(masked_run):
  for name in PICTURES:
    path = masked_run.workdir / name
    assert path.is_file(), name
    with Image.open(path) as im:
      assert im.format == 'PNG' and im.size[0] > 100 and im.size[1] > 100
  events = b''.join(p.read_bytes() for p in masked_run.workdir.glob('events.out.tfevents.*'))
  assert b'test/final_input_recon_map' in events
  assert b'test/pixel_pro' in events


@pytest.mark.slow
def test_mode_eval_reevaluates_the_selected_checkpoint(masked_run, tmp_path):
  """--config.mode=eval on a finished workdir evaluates its selected checkpoint again: same image and
  pixel metrics, pictures rewritten; eval options may differ (here: no MC-dropout, no FID)."""
  from ganomaly_jax import train

  workdir = tmp_path / 'run'
  shutil.copytree(masked_run.workdir, workdir)
  for name in PICTURES:
    (workdir / name).unlink()
  config = synthetic.quick_masked_config(
      masked_run.data.dataset_name, mode='eval', **{'eval.mc_samples': 0, 'eval.fid': False}
  )
  results = train.train_and_evaluate(config, str(workdir))
  for key in (
      'image_auroc',
      'image_ap',
      'pixel_auroc',
      'pixel_pro',
      'score_min',
      'score_max',
      'pixel_map_max',
      'selected_step',
  ):
    assert results[key] == pytest.approx(masked_run.results[key]), key
  assert 'mc_auroc' not in results and 'fid_normal' not in results
  for name in PICTURES[:-1]:
    assert (workdir / name).is_file(), name
  assert not (workdir / PICTURES[-1]).exists()


def test_pixel_results_without_ground_truth_are_null():
  source = sources.ArraySource('arrays', np.zeros((4, 16, 16, 1), np.uint8), np.array([0, 0, 1, 1]))
  results = metrics.pixel_results(np.random.default_rng(0).uniform(size=(4, 16, 16)), source)
  assert results['pixel_auroc'] is None and results['pixel_pro'] is None
  assert results['num_pixel_gt_images'] == 0


def test_pixel_results_leave_out_defects_without_mask(tmp_path):
  data = synthetic.make_mvtec_folder(tmp_path, num_train=2, num_test_good=3, num_test_defect=3)
  data.masks[0].unlink()  # defect 0 has no mask now: it must not count as an all-normal image
  paths = data.test_good + data.test_defect
  masks = [None] * 3 + [None] + [str(p) for p in data.masks[1:]]
  source = sources.FileSource('t', [str(p) for p in paths], [0] * 3 + [1] * 3, 32, 3, masks)
  gts = [source.ground_truth(i) for i in range(6)]
  maps = np.stack([np.zeros((32, 32)) if g is None else g for g in gts]).astype(np.float32)
  results = metrics.pixel_results(maps, source)
  assert results['num_pixel_gt_images'] == 5 and results['num_pixel_gt_defect_images'] == 2
  assert results['pixel_auroc'] == pytest.approx(1.0) and results['pixel_pro'] == pytest.approx(1.0)


class _SquaresSource(sources.ArraySource):
  """Grey images holding a bright square on abnormal ones; the square is the ground truth."""

  def __init__(self, n: int = 6, size: int = 16):
    images = np.full((n, size, size, 1), 64, np.uint8)
    labels = np.arange(n) % 2
    images[labels == 1, 4:9, 5:10] = 255
    super().__init__('squares', images, labels)

  def ground_truth(self, index: int) -> np.ndarray:
    return (self.images[index, ..., 0] == 255).astype(np.float32)


def _map_above_two(images: np.ndarray) -> np.ndarray:
  """A map like 'ssim_msgms' can give (up to 3): 2.2 on normal pixels, 2.6 on the squares."""
  return 2.2 + 0.4 * (np.asarray(images)[..., 0] > 0.5)


def test_maps_above_the_old_range_are_not_clipped():
  # The histogram used to span [0, 2] whatever the map: every pixel of these maps fell into the
  # top bin, a tie, so pixel AUROC came out 0.5 instead of 1.
  from ganomaly_jax import losses
  from ganomaly_jax.runtime import parallel
  from ganomaly_jax.data import pipeline

  source = _SquaresSource()
  images = np.stack([pipeline.to_float(source[i]['image']) for i in range(len(source))])
  results = metrics.pixel_results(_map_above_two(images), source)
  assert results['pixel_auroc'] == pytest.approx(1.0) and results['pixel_pro'] == pytest.approx(1.0)

  # The streaming pass of the final evaluation spans the range of the map in use.
  def eval_maps(state, batch):
    x = np.asarray(batch['image'])
    return {
        'score': x.mean(axis=(1, 2, 3)),
        'l1': x.mean(axis=(1, 2, 3)),
        'map': jax.numpy.asarray(_map_above_two(x)),
    }

  outputs = passes.collect_test_outputs(
      eval_maps,
      None,
      source,
      parallel.make_mesh(jax.devices()[:1]),
      4,
      map_max_value=losses.MAPS['ssim_msgms'].max_value,
  )
  assert outputs.pixel.max_value == 3.0 and outputs.pixel.clipped == 0
  assert outputs.pixel.auroc() == pytest.approx(1.0)
  assert outputs.map_max == pytest.approx(2.6)


def test_fid_results_with_invalid_weights_record_the_error(tmp_path):
  weights = tmp_path / 'bogus.npz'
  weights.write_bytes(b'not a zip file')
  images = np.zeros((3, 16, 16, 3), np.float32)
  results = metrics.fid_results(str(weights), {0: (images, images), 1: (images, images)})
  assert results['fid_normal'] is None and results['fid_abnormal'] is None
  assert 'bogus.npz' in results['fid_error']
  # Too few images for a covariance: skipped with a warning, still no crash.
  results = metrics.fid_results('', {0: (images[:1], images[:1])})
  assert results['fid_normal'] is None and results['fid_abnormal_samples'] == 0


@pytest.mark.slow
def test_mc_dropout_variance_matches_sample_loop(masked_run):
  """uncertainty.mc_dropout's running variance equals the variance of N separate reconstructions."""
  config, _ = finished_run.load_run(str(masked_run.workdir))
  components, state, _, _ = finished_run.restore_state(config, str(masked_run.workdir))
  step_config = frozen.StepConfig.from_config(config)
  x = jax.random.uniform(jax.random.key(1), (2, 16, 16, 3), minval=-1, maxval=1)
  rng = jax.random.key(2)
  keys = jax.vmap(lambda i: jax.random.fold_in(rng, i))(np.arange(3))

  @jax.jit
  def both(state, x):  # one compilation: the scan under test and N independent reconstructions
    one = lambda k: step_lib.reconstruct_for_eval(
        components, step_config, state, x, rng=k, stochastic=True
    )['recon']
    mc = uncertainty.mc_dropout(
        state, x, rng, components=components, step_config=step_config, num_samples=3
    )
    return mc, jax.vmap(one)(keys)

  out, samples = both(state, x)
  samples = np.asarray(samples, np.float64)
  expected = samples.var(axis=0).mean(axis=-1)
  np.testing.assert_allclose(np.asarray(out['uncertainty']), expected, rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(np.asarray(out['mc_score']), expected.mean(axis=(1, 2)), rtol=1e-4)
  np.testing.assert_allclose(np.asarray(out['mc_mean']), samples.mean(axis=0), atol=1e-5)
  assert float(np.min(out['mc_score'])) > 0  # dropout really perturbs the reconstructions
  with pytest.raises(ValueError, match='at least 2'):
    uncertainty.mc_dropout(
        state, x, rng, components=components, step_config=step_config, num_samples=1
    )


# --- Image metrics: the deployable threshold and the oracle F1, against scikit-learn ---------------

# Hand-made raw scores: 6 normals, 4 abnormals.
LABELS = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 1])
SCORES = np.array([0.10, 0.20, 0.30, 0.40, 0.55, 0.90, 0.50, 0.60, 0.80, 0.95])


def test_validation_threshold_is_the_quantile_of_raw_validation_scores():
  val = np.arange(101, dtype=np.float64) / 100  # 0.00, 0.01, ..., 1.00
  assert metrics.validation_threshold(val, 0.95) == pytest.approx(0.95)
  assert metrics.validation_threshold(np.r_[val, np.nan], 0.95) == pytest.approx(0.95)
  assert metrics.validation_threshold(np.zeros(0), 0.95) is None


@pytest.mark.parametrize('threshold', [0.45, 0.52, 0.85, 0.05, 2.0])
def test_metrics_at_the_threshold_match_sklearn(threshold):
  from sklearn import metrics as skm

  got = metrics.image_metrics(LABELS, SCORES, threshold)
  predicted = (SCORES > threshold).astype(int)
  tn, fp, fn, tp = skm.confusion_matrix(LABELS, predicted, labels=[0, 1]).ravel()
  assert got['threshold'] == threshold
  assert got['image_f1'] == pytest.approx(skm.f1_score(LABELS, predicted, zero_division=0))
  assert got['image_precision'] == pytest.approx(
      skm.precision_score(LABELS, predicted, zero_division=0)
  )
  assert got['image_recall'] == pytest.approx(skm.recall_score(LABELS, predicted, zero_division=0))
  assert got['image_fpr'] == pytest.approx(fp / (fp + tn))


def test_metrics_at_the_threshold_by_hand():
  # Above 0.45: normals 0.55, 0.90 (2 of 6 false alarms); abnormals 0.50, 0.60, 0.80, 0.95 (all 4).
  got = metrics.image_metrics(LABELS, SCORES, 0.45)
  assert got['image_precision'] == pytest.approx(4 / 6) and got['image_recall'] == 1.0
  assert got['image_fpr'] == pytest.approx(2 / 6)
  assert got['image_f1'] == pytest.approx(2 * (4 / 6) / (4 / 6 + 1))


def test_threshold_applies_to_raw_scores_not_normalised_ones():
  # Test scores far above the validation range: every test image is flagged, whatever the
  # min-max normalisation over the test set (used for AUROC) would make of them.
  raw = SCORES + 10.0
  got = metrics.image_metrics(LABELS, raw, threshold=1.0)
  assert got['image_fpr'] == 1.0 and got['image_recall'] == 1.0
  assert got['image_auroc'] == metrics.image_metrics(LABELS, SCORES)['image_auroc']


def test_oracle_f1_is_the_best_over_every_threshold():
  from sklearn import metrics as skm

  got = metrics.image_metrics(LABELS, SCORES)
  best = max(skm.f1_score(LABELS, (SCORES >= t).astype(int)) for t in SCORES)
  assert got['image_f1_oracle'] == pytest.approx(best)
  # Hand check: flagging >= 0.50 catches all 4 abnormals with 2 false alarms: F1 = 0.8.
  assert best == pytest.approx(0.8)
  # threshold_oracle is on the raw scale: flagging scores >= it reproduces the oracle F1.
  flagged = (SCORES >= got['threshold_oracle']).astype(int)
  assert skm.f1_score(LABELS, flagged) == pytest.approx(got['image_f1_oracle'])
  # Without a validation threshold there is no operating point, and nothing is passed off as one.
  assert got['threshold'] is None and got['image_f1'] is None and got['image_fpr'] is None


def test_eval_batches_each_process_decodes_only_its_slice():
  """Two processes' slices of every batch put together are the one-process batch; no record is read
  by both."""
  from ganomaly_jax.data import pipeline

  class Counting:

    def __init__(self, n):
      self.images = np.arange(n * 4, dtype=np.uint8).reshape(n, 2, 2, 1)
      self.reads = []

    def __len__(self):
      return len(self.images)

    def __getitem__(self, i):
      self.reads.append(i)
      return {'image': self.images[i], 'label': i % 2}

  whole = list(pipeline.eval_batches(Counting(10), 4))
  sources = [Counting(10) for _ in range(2)]
  parts = [
      list(pipeline.eval_batches(sources[p], 4, process_index=p, process_count=2)) for p in range(2)
  ]
  assert len(whole) == len(parts[0]) == len(parts[1]) == 3
  for b, batch in enumerate(whole):
    for key in ('image', 'label', 'valid'):
      np.testing.assert_array_equal(
          np.concatenate([parts[0][b][key], parts[1][b][key]]), batch[key], err_msg=key
      )
    np.testing.assert_array_equal(
        np.concatenate([parts[0][b]['index'], parts[1][b]['index']]),
        np.where(batch['valid'], np.arange(4) + 4 * b, -1),
    )
  # Process 0 holds rows 8-9 of the last batch, process 1 only padding (one read for its shape).
  assert set(sources[0].reads) == {0, 1, 4, 5, 8, 9}
  assert set(sources[1].reads) - {0} == {2, 3, 6, 7}
