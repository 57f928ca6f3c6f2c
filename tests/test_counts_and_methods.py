"""Parameter counts equal the study's tables (no compile), and every method trains + evaluates."""

import dataclasses
import json
import os

import jax
import numpy as np
import pytest

from ganomaly_jax import masks, state as state_lib, step as step_lib, train
from ganomaly_jax.config import arguments, param_count, schema
from ganomaly_jax.models import unet
from helpers import REPO


def counts(spec):
  return param_count.count_parameters(arguments.load_config(os.path.join(REPO, spec)))


@pytest.mark.parametrize(
    'spec,g,d',
    [
        (
            'configs/ganomaly.py:dataset=mnist,channels=3',
            (3_208_960, 3_206_528, 2_432),
            (664_064, 663_296, 768),
        ),
        (
            'configs/ganomaly.py:dataset=mnist,channels=1',
            (3_202_816, 3_200_384, 2_432),
            (662_016, 661_248, 768),
        ),
        (
            'configs/ganomaly.py:cars256',
            (143_974_144, 143_950_208, 23_936),
            (44_747_264, 44_739_328, 7_936),
        ),
        (
            'configs/ganomaly_modified.py:cars256',
            (64_842_880, 64_831_232, 11_648),
            (17_428_672, 17_424_832, 3_840),
        ),
        (
            'configs/skip_ganomaly.py:cars256',
            (54_423_811, 54_413_955, 9_856),
            (47_992_896, 47_984_960, 7_936),
        ),
    ],
)
def test_parameter_counts_match_the_study(spec, g, d):
  c = counts(spec)
  assert (
      c['generator']['total'],
      c['generator']['trainable'],
      c['generator']['non_trainable'],
  ) == g
  assert (
      c['discriminator']['total'],
      c['discriminator']['trainable'],
      c['discriminator']['non_trainable'],
  ) == d


def test_spectral_norm_adds_only_non_trainable_state():
  plain, sn = counts('configs/ganomaly_modified.py:cars256'), counts(
      'configs/ganomaly_sn.py:cars256'
  )
  assert sn['generator'] == plain['generator']
  assert sn['discriminator']['trainable'] == plain['discriminator']['trainable']
  assert sn['discriminator']['non_trainable'] > plain['discriminator']['non_trainable']


def test_riad_is_a_plain_unet_without_a_discriminator():
  # docs/methods.md#riad: 3x3 double convs, 64 ... 512 channels at the study's width, the first
  # block at full resolution, no discriminator (nothing to count).
  config = arguments.load_config(os.path.join(REPO, 'configs/riad.py:cars256'))
  c = param_count.count_parameters(config)
  assert c['discriminator'] == {'total': 0, 'trainable': 0, 'non_trainable': 0}
  components = state_lib.build_components(config)
  shape = state_lib.image_shape(config)
  params, stats = jax.eval_shape(
      lambda: state_lib.init_generator(components, jax.random.key(0), shape)
  )
  kernels = {n: s for n, s in _leaves(params).items() if n.endswith('kernel')}
  assert kernels['down_0_conv0/kernel'] == (3, 3, 3, 64)
  assert {s[-1] for n, s in kernels.items() if n.startswith('down_')} == {64, 128, 256, 512}
  assert kernels['out/kernel'] == (1, 1, 64, 3)
  out = jax.eval_shape(
      lambda p, s: components.generator.apply(
          {'params': p, 'batch_stats': s}, np.zeros(shape, np.float32), train=False
      )['recon'],
      params,
      stats,
  )
  assert out.shape == shape


class TrainingSpy:
  """Records what the training step's masking did, from inside the compiled step.

  Wraps `step.reconstruct_for_training` (marks the trace as training, so evaluation's own masking is
  not counted) and, while it traces, every mask kind's `train_holes` in the registry (`masks.KINDS`)
  and `masks.combine_inpaintings`, adding `jax.debug.callback`s that report the actual hole fractions
  of every executed step.
  """

  def __init__(self, monkeypatch):
    self.tracing_train = False
    self.hole_fractions: list[np.ndarray] = []  # per image, square/stain holes, one entry per step
    self.grid_coverage: list[np.ndarray] = []  # sum over the K grid masks, per pixel

    def reconstruct_for_training(*args, **kwargs):
      self.tracing_train = True
      try:
        return real_reconstruct(*args, **kwargs)
      finally:
        self.tracing_train = False

    def spy_on(real_train_holes):
      def train_holes(*args, **kwargs):
        holes = real_train_holes(*args, **kwargs)
        if self.tracing_train and holes.ndim == 4:  # one hole per image (a grid's K masks: 5-D)
          jax.debug.callback(
              lambda h: self.hole_fractions.append(np.asarray(h).mean(axis=(1, 2, 3))), holes
          )
        return holes

      return train_holes

    def combine_inpaintings(reconstruct, x, grid, fill):
      if self.tracing_train:
        jax.debug.callback(lambda g: self.grid_coverage.append(np.asarray(g).sum(axis=0)), grid)
      return real_combine(reconstruct, x, grid, fill)

    real_reconstruct, real_combine = step_lib.reconstruct_for_training, masks.combine_inpaintings
    monkeypatch.setattr(step_lib, 'reconstruct_for_training', reconstruct_for_training)
    monkeypatch.setattr(masks, 'combine_inpaintings', combine_inpaintings)
    for name, kind in list(masks.KINDS.items()):
      if kind.train_holes is not None:
        monkeypatch.setitem(
            masks.KINDS, name, dataclasses.replace(kind, train_holes=spy_on(kind.train_holes))
        )


def _leaves(tree) -> dict[str, tuple[int, ...]]:
  """'path/to/leaf' -> shape for every array in a params or batch_stats tree."""
  return {
      '/'.join(str(getattr(k, 'key', k)) for k in path): np.shape(v)
      for path, v in jax.tree_util.tree_leaves_with_path(tree)
  }


def _kernel_sides(tree) -> set[int]:
  return {
      shape[0]
      for name, shape in _leaves(tree).items()
      if name.endswith('kernel') and len(shape) == 4
  }


@pytest.mark.slow
@pytest.mark.parametrize('method', schema.METHODS)
def test_every_method_quick_run_writes_results(method, tmp_path, monkeypatch, tiny_config):
  from test_reliability import latest_state

  config = tiny_config(
      method,
      **{
          'train.num_steps': 2,
          'dataset.max_train': 32,
          'dataset.max_test': 32,
          'eval.batch_size': 16,
          'eval.pictures': True,
      },
  )
  spy = TrainingSpy(monkeypatch)
  results = train.train_and_evaluate(config, str(tmp_path))
  jax.effects_barrier()  # the debug callbacks of the last step have run
  with open(tmp_path / 'results.json') as f:
    assert json.load(f) == json.loads(json.dumps(results))
  assert results['method'] == method and results['steps'] == 2
  assert 0.0 <= results['image_auroc'] <= 1.0
  assert os.path.isdir(tmp_path / 'checkpoints' / '2')
  for picture in ('loss_curves.png', 'roc_pr.png', 'score_histogram.png', 'extremes.png'):
    assert os.path.getsize(tmp_path / picture) > 0, picture  # the method's maps drew its pictures
  assert not list(tmp_path.glob('events.out.tfevents.*'))  # train.tensorboard=False (tiny configs)

  # The method's switches were active in what was trained (read back from the checkpoint).
  state, _ = latest_state(str(tmp_path), config)
  d_stats = _leaves(state.d_stats)
  spectral = {n for n in d_stats if n.endswith(('/u', '/sigma'))}
  is_unet = isinstance(state_lib.build_components(config).generator, unet.UNetGenerator)
  if method == 'ganomaly_sn':
    assert spectral and any(n.endswith('/sigma') for n in spectral), sorted(d_stats)
  else:
    assert not spectral, spectral
  if method in ('skip_ganomaly', 'masked', 'grid_mask'):
    assert is_unet  # and the checkpoint restored into its parameter tree
  else:
    assert not is_unet
  if method == 'riad':  # a plain U-Net autoencoder, no discriminator
    assert isinstance(state_lib.build_components(config).generator, unet.PlainUNet)
    assert not jax.tree.leaves(state.d_params) and _kernel_sides(state.g_params) == {1, 2, 3}
  # Modified GANomaly (and SN, built on it): 5x5 stride-2 kernels; plain GANomaly: 4x4 only.
  if method in ('ganomaly_modified', 'ganomaly_sn'):
    assert 5 in _kernel_sides(state.g_params) and 5 in _kernel_sides(state.d_params)
  elif method == 'ganomaly':
    assert _kernel_sides(state.g_params) == _kernel_sides(state.d_params) == {4}

  # Masking: each executed training step masked a quarter of every image (square hole of side
  # isize/2), or combined complementary grid inpaintings; the other methods never masked.
  if method == 'masked':
    assert len(spy.hole_fractions) == 2 and not spy.grid_coverage
    np.testing.assert_allclose(np.concatenate(spy.hole_fractions), 0.25)
  elif method in ('grid_mask', 'riad'):
    assert len(spy.grid_coverage) == 2 and not spy.hole_fractions
    for coverage in spy.grid_coverage:
      np.testing.assert_array_equal(coverage, 1.0)  # the holes tile the image exactly once
  else:
    assert not spy.hole_fractions and not spy.grid_coverage
