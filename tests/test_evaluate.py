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
from ganomaly_jax import evaluate, infer, step as step_lib, uncertainty
from ganomaly_jax.data import sources

PICTURES = ('loss_curves.png', 'roc_pr.png', 'score_histogram.png', 'extremes.png',
            'extremes_uncertainty.png')


def _unit_interval(value) -> bool:
  return isinstance(value, float) and 0.0 <= value <= 1.0


@pytest.mark.slow
def test_results_hold_image_pixel_and_mc_metrics(masked_run):
  results = json.loads((masked_run.workdir / 'results.json').read_text())
  assert results == json.loads(json.dumps(masked_run.results))  # what was returned is what was written
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
  config = synthetic.quick_masked_config(masked_run.data.dataset_name, mode='eval',
                                         **{'eval.mc_samples': 0, 'eval.fid': False})
  results = train.train_and_evaluate(config, str(workdir))
  for key in ('image_auroc', 'image_ap', 'pixel_auroc', 'pixel_pro', 'score_min', 'score_max',
              'pixel_map_max', 'selected_step'):
    assert results[key] == pytest.approx(masked_run.results[key]), key
  assert 'mc_auroc' not in results and 'fid_normal' not in results
  for name in PICTURES[:-1]:
    assert (workdir / name).is_file(), name
  assert not (workdir / PICTURES[-1]).exists()


def test_pixel_results_without_ground_truth_are_null():
  source = sources.ArraySource('arrays', np.zeros((4, 16, 16, 1), np.uint8), np.array([0, 0, 1, 1]))
  results = evaluate.pixel_results(np.random.default_rng(0).uniform(size=(4, 16, 16)), source)
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
  results = evaluate.pixel_results(maps, source)
  assert results['num_pixel_gt_images'] == 5 and results['num_pixel_gt_defect_images'] == 2
  assert results['pixel_auroc'] == pytest.approx(1.0) and results['pixel_pro'] == pytest.approx(1.0)


def test_fid_results_with_invalid_weights_record_the_error(tmp_path):
  weights = tmp_path / 'bogus.npz'
  weights.write_bytes(b'not a zip file')
  images = np.zeros((3, 16, 16, 3), np.float32)
  results = evaluate.fid_results(str(weights), {0: (images, images), 1: (images, images)})
  assert results['fid_normal'] is None and results['fid_abnormal'] is None
  assert 'bogus.npz' in results['fid_error']
  # Too few images for a covariance: skipped with a warning, still no crash.
  results = evaluate.fid_results('', {0: (images[:1], images[:1])})
  assert results['fid_normal'] is None and results['fid_abnormal_samples'] == 0


def test_extremes_never_repeat_and_rank_nan_lowest():
  scores = np.array([0.5, np.nan, 0.9, 0.1, 0.7])
  chosen = evaluate._extremes(scores, 2)
  assert chosen == [2, 4, 1, 3]
  assert evaluate._extremes(scores[:3], 2) == [2, 0, 1]


@pytest.mark.slow
def test_mc_dropout_variance_matches_sample_loop(masked_run):
  """uncertainty.mc_dropout's running variance equals the variance of N separate reconstructions."""
  config, _ = infer.load_run(str(masked_run.workdir))
  components, state, _, _ = infer.restore_state(config, str(masked_run.workdir))
  hp = step_lib.StepConfig.from_config(config)
  x = jax.random.uniform(jax.random.key(1), (2, 16, 16, 3), minval=-1, maxval=1)
  rng = jax.random.key(2)
  keys = jax.vmap(lambda i: jax.random.fold_in(rng, i))(np.arange(3))

  @jax.jit
  def both(state, x):  # one compilation: the scan under test and N independent reconstructions
    one = lambda k: step_lib.reconstruct_for_eval(components, hp, state, x, rng=k,
                                                  stochastic=True)['recon']
    mc = uncertainty.mc_dropout(state, x, rng, components=components, hp=hp, num_samples=3)
    return mc, jax.vmap(one)(keys)

  out, samples = both(state, x)
  samples = np.asarray(samples, np.float64)
  expected = samples.var(axis=0).mean(axis=-1)
  np.testing.assert_allclose(np.asarray(out['uncertainty']), expected, rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(np.asarray(out['mc_score']), expected.mean(axis=(1, 2)), rtol=1e-4)
  np.testing.assert_allclose(np.asarray(out['mc_mean']), samples.mean(axis=0), atol=1e-5)
  assert float(np.min(out['mc_score'])) > 0  # dropout really perturbs the reconstructions
  with pytest.raises(ValueError, match='at least 2'):
    uncertainty.mc_dropout(state, x, rng, components=components, hp=hp, num_samples=1)
