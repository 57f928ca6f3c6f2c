"""Tests for ganomaly_jax.evaluation.fid: distance maths, network layout, weight files and the torch name mapping.

Only one test runs the full 299x299 network, on a single image; everything else uses jax.eval_shape or
numpy, so the module stays fast on 2 CPU cores. No real weights are needed (or downloaded).
"""

from __future__ import annotations

import importlib.util
import pathlib
from unittest import mock

import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from ganomaly_jax.evaluation import fid, inception

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]

# (in, out, kh, kw) of every BasicConv2d of torchvision's Inception-v3 trunk (pytorch-fid's FID variant
# has the same layers; only pooling differs), written out independently of fid.py.
_A = lambda i, p: [
    (i, 64, 1, 1),
    (i, 48, 1, 1),
    (48, 64, 5, 5),
    (i, 64, 1, 1),
    (64, 96, 3, 3),
    (96, 96, 3, 3),
    (i, p, 1, 1),
]
_B = lambda i: [(i, 384, 3, 3), (i, 64, 1, 1), (64, 96, 3, 3), (96, 96, 3, 3)]
_C = lambda i, c: [
    (i, 192, 1, 1),
    (i, c, 1, 1),
    (c, c, 1, 7),
    (c, 192, 7, 1),
    (i, c, 1, 1),
    (c, c, 7, 1),
    (c, c, 1, 7),
    (c, c, 7, 1),
    (c, 192, 1, 7),
    (i, 192, 1, 1),
]
_D = lambda i: [
    (i, 192, 1, 1),
    (192, 320, 3, 3),
    (i, 192, 1, 1),
    (192, 192, 1, 7),
    (192, 192, 7, 1),
    (192, 192, 3, 3),
]
_E = lambda i: [
    (i, 320, 1, 1),
    (i, 384, 1, 1),
    (384, 384, 1, 3),
    (384, 384, 3, 1),
    (i, 448, 1, 1),
    (448, 384, 3, 3),
    (384, 384, 1, 3),
    (384, 384, 3, 1),
    (i, 192, 1, 1),
]
TRUNK_CONVS = (
    [(3, 32, 3, 3), (32, 32, 3, 3), (32, 64, 3, 3), (64, 80, 1, 1), (80, 192, 3, 3)]
    + _A(192, 32)
    + _A(256, 64)
    + _A(288, 64)
    + _B(288)
    + _C(768, 128)
    + _C(768, 160)
    + _C(768, 160)
    + _C(768, 192)
    + _D(768)
    + _E(1280)
    + _E(2048)
)

# torchvision inception_v3 reports 27,161,264 parameters. Minus AuxLogits (conv0 768->128 1x1 + BN,
# conv1 128->768 5x5 + BN, fc 768->1000: 3,326,696) and the 1000-way fc (2048*1000 + 1000 = 2,049,000)
# leaves 21,785,568 trainable conv-kernel + BN scale/bias parameters, the `params` count of the FID
# network. BN running mean/var add 2 * 17,216 = 34,432 non-trainable entries (`batch_stats`).
FID_INCEPTION_PARAMS = 27_161_264 - 3_326_696 - 2_049_000
FID_INCEPTION_BN_CHANNELS = 17_216


def _flat_expected() -> dict[str, tuple[int, ...]]:
  return dict(fid.expected_shapes())


def _random_flat(seed: int = 0) -> dict[str, np.ndarray]:
  """Variables with He-scaled kernels and identity BN, so activations stay finite through 94 layers."""
  rng = np.random.default_rng(seed)
  flat = {}
  for key, shape in _flat_expected().items():
    if key.endswith('kernel'):
      flat[key] = (
          rng.standard_normal(shape, np.float32) * np.sqrt(2.0 / np.prod(shape[:-1]))
      ).astype(np.float32)
    elif key.endswith(('scale', 'var')):
      flat[key] = np.ones(shape, np.float32)
    else:
      flat[key] = rng.standard_normal(shape, np.float32) * 0.01
  return flat


def _flax_to_torch(flat: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Inverse of the mapping under test, written independently: a fake pytorch-fid state_dict."""
  leaves = {
      ('params', 'kernel'): 'weight',
      ('params', 'scale'): 'weight',
      ('params', 'bias'): 'bias',
      ('batch_stats', 'mean'): 'running_mean',
      ('batch_stats', 'var'): 'running_var',
  }
  sd = {}
  for key, value in flat.items():
    collection, *modules, leaf = key.split('/')
    if leaf == 'kernel':
      value = value.transpose(3, 2, 0, 1)  # HWIO -> OIHW
    sd['.'.join(modules + [leaves[(collection, leaf)]])] = value
    if modules[-1] == 'bn' and leaf == 'mean':
      sd['.'.join(modules + ['num_batches_tracked'])] = np.array(0, np.int64)
  # The real checkpoint also carries the 1008-way classifier, which the pool3 network drops.
  sd['fc.weight'] = np.zeros((1008, 2048), np.float32)
  sd['fc.bias'] = np.zeros((1008,), np.float32)
  return sd


@pytest.fixture(scope='module')
def random_flat() -> dict[str, np.ndarray]:
  return _random_flat()


# ----------------------------------------------------------------------------------------------------
# Fréchet distance.


def test_frechet_distance_diagonal_closed_form():
  rng = np.random.default_rng(0)
  d = 16
  mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
  s1, s2 = rng.uniform(0.1, 3.0, d), rng.uniform(0.1, 3.0, d)
  expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2.0 * np.sqrt(s1 * s2))
  got = fid.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2))
  assert isinstance(got, float)
  np.testing.assert_allclose(got, expected, rtol=1e-10)


def test_frechet_distance_identical_full_covariance_is_zero():
  rng = np.random.default_rng(1)
  a = rng.normal(size=(8, 8))
  sigma = a @ a.T + 0.1 * np.eye(8)
  mu = rng.normal(size=8)
  assert abs(fid.frechet_distance(mu, sigma, mu, sigma)) < 1e-8


def test_frechet_distance_singular_covariances_stay_finite():
  # Rank-1 covariances (fewer samples than dimensions) make sqrtm singular; the eps offset handles it.
  v = np.arange(1.0, 5.0)
  sigma = np.outer(v, v)
  got = fid.frechet_distance(np.zeros(4), sigma, np.ones(4), np.zeros((4, 4)))
  assert np.isfinite(got)
  np.testing.assert_allclose(got, 4.0 + np.trace(sigma), rtol=1e-4)


def test_fid_from_features_shifted_set():
  # Shifting every feature by c keeps the covariance, so FID = D * c^2 exactly.
  f1 = np.random.default_rng(2).normal(size=(200, 12))
  assert abs(fid.fid_from_features(f1, f1)) < 1e-8
  np.testing.assert_allclose(fid.fid_from_features(f1, f1 + 0.5), 12 * 0.25, rtol=1e-8)


def test_fid_from_features_rejects_single_sample():
  with pytest.raises(ValueError, match='at least 2'):
    fid.fid_from_features(np.zeros((1, 4)), np.zeros((5, 4)))


# ----------------------------------------------------------------------------------------------------
# Network layout (eval_shape only).


def test_parameter_count_matches_fid_inception():
  shapes = _flat_expected()
  count = lambda prefix: sum(int(np.prod(s)) for k, s in shapes.items() if k.startswith(prefix))
  table_params = sum(i * o * h * w + 2 * o for i, o, h, w in TRUNK_CONVS)
  assert table_params == FID_INCEPTION_PARAMS == 21_785_568
  assert sum(o for _, o, _, _ in TRUNK_CONVS) == FID_INCEPTION_BN_CHANNELS
  assert count('params/') == FID_INCEPTION_PARAMS
  assert count('batch_stats/') == 2 * FID_INCEPTION_BN_CHANNELS
  kernels = sorted(s for k, s in shapes.items() if k.endswith('/kernel'))
  assert kernels == sorted((h, w, i, o) for i, o, h, w in TRUNK_CONVS)


def test_avg_pool_branch_excludes_padding():
  # count_include_pad=False: a constant map stays constant at the borders (True would give 4/9 in corners).
  pooled = inception._avg_pool_3x3_same(jnp.ones((1, 5, 5, 2)))
  np.testing.assert_allclose(np.asarray(pooled), 1.0, rtol=1e-6)


# ----------------------------------------------------------------------------------------------------
# Forward pass (the one real 299x299 run) and batching.


def test_forward_shape_and_extract_features(random_flat):
  variables = traverse_util.unflatten_dict(random_flat, sep='/')
  fn = fid.make_feature_fn(variables)
  # A small grayscale image exercises the channel tiling and the resize to 299 in one forward.
  image = np.random.default_rng(3).uniform(-1, 1, (1, 32, 32, 1)).astype(np.float32)
  feats = np.asarray(fn(image))
  assert feats.shape == (1, inception.FEATURE_DIM) and feats.dtype == np.float32
  assert np.isfinite(feats).all() and (feats >= 0).all()  # means of ReLU outputs
  assert feats.std() > 0
  # Same shape again, so this reuses the compiled program.
  np.testing.assert_allclose(fid.extract_features(fn, image, batch_size=1), feats, rtol=1e-5)


def test_extract_features_pads_last_batch_to_fixed_size():
  seen = []

  def fake_fn(batch):
    seen.append(batch.shape)
    return np.repeat(batch.reshape(len(batch), -1)[:, :1], 3, axis=1)

  images = np.arange(7, dtype=np.float32).reshape(7, 1, 1, 1)
  feats = fid.extract_features(fake_fn, images, batch_size=3)
  assert seen == [(3, 1, 1, 1)] * 3
  assert feats.shape == (7, 3) and feats.dtype == np.float32
  np.testing.assert_array_equal(feats[:, 0], np.arange(7))


# ----------------------------------------------------------------------------------------------------
# Torch name mapping and the converter script.


def test_torch_mapping_round_trip(random_flat):
  sd = _flax_to_torch(random_flat)
  # Spot-check the fake state_dict against torchvision's OIHW layout, so the inverse is not just a mirror.
  assert sd['Conv2d_1a_3x3.conv.weight'].shape == (32, 3, 3, 3)
  assert sd['Mixed_6b.branch7x7_2.conv.weight'].shape == (128, 128, 1, 7)
  assert sd['Mixed_7c.branch3x3_2b.conv.weight'].shape == (384, 384, 3, 1)
  assert sd['Mixed_7b.branch_pool.bn.running_var'].shape == (192,)
  flat = fid.torch_state_dict_to_flax(sd)
  assert set(flat) == set(random_flat)
  for key, value in flat.items():
    assert value.dtype == np.float32
    np.testing.assert_array_equal(value, random_flat[key], err_msg=key)
  fid.validate_inception_params(flat)


def test_torch_mapping_rejects_foreign_key():
  with pytest.raises(fid.FidWeightsError, match='layer4.0.conv1.weight'):
    fid.torch_state_dict_to_flax({'layer4.0.conv1.weight': np.zeros((1, 1, 1, 1))})


def _load_converter_module():
  path = REPO_ROOT / 'scripts' / 'convert_fid_weights.py'
  spec = importlib.util.spec_from_file_location('convert_fid_weights', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_converter_writes_loadable_npz(tmp_path, random_flat):
  converter = _load_converter_module()
  sd = _flax_to_torch(random_flat)
  out = str(tmp_path / 'fid_inception.npz')
  # read_torch_state_dict is the only torch-dependent step; everything after it runs for real.
  with mock.patch.object(converter, 'read_torch_state_dict', return_value=sd):
    assert converter.convert('fake.pth', out) == len(random_flat)
  variables = fid.load_inception_params(out)
  assert set(variables) == {'params', 'batch_stats'}
  loaded = traverse_util.flatten_dict(variables, sep='/')
  assert set(loaded) == set(random_flat)
  key = 'params/Mixed_6e/branch7x7dbl_5/conv/kernel'
  np.testing.assert_array_equal(np.asarray(loaded[key]), random_flat[key])


# ----------------------------------------------------------------------------------------------------
# Weight-file validation.


def test_load_wrong_shape_names_key(tmp_path):
  flat = {k: np.zeros(s, np.float32) for k, s in _flat_expected().items()}
  key = 'params/Mixed_5b/branch5x5_2/conv/kernel'
  flat[key] = np.zeros((3, 3, 48, 64), np.float32)
  path = str(tmp_path / 'bad.npz')
  np.savez(path, **flat)
  with pytest.raises(fid.FidWeightsError) as err:
    fid.load_inception_params(path)
  message = str(err.value)
  assert isinstance(err.value, ValueError)
  assert key in message and '(3, 3, 48, 64)' in message and '(5, 5, 48, 64)' in message
  assert path in message and '\n' not in message


def test_validate_missing_and_extra_keys():
  flat = {k: np.empty(s, np.float32) for k, s in _flat_expected().items()}
  missing = 'batch_stats/Mixed_7c/branch_pool/bn/mean'
  del flat[missing]
  with pytest.raises(fid.FidWeightsError, match=f'{missing}.*missing.*\\(192,\\)'):
    fid.validate_inception_params(flat)
  flat[missing] = np.empty((192,), np.float32)
  flat['params/fc/kernel'] = np.empty((2048, 1008), np.float32)
  with pytest.raises(fid.FidWeightsError, match='params/fc/kernel'):
    fid.validate_inception_params(flat)


def test_load_missing_file_raises(tmp_path):
  with pytest.raises(fid.FidWeightsError, match='not found'):
    fid.load_inception_params(str(tmp_path / 'nope.npz'))


def test_compute_fid_without_weights_returns_none_and_warns_once(tmp_path):
  images = np.zeros((2, 8, 8, 3), np.float32)
  for path in ('', str(tmp_path / 'missing.npz')):
    with mock.patch.object(fid.logging, 'warning') as warning:
      assert fid.compute_fid(path, images, images) is None
    warning.assert_called_once()
    line = warning.call_args.args[0] % warning.call_args.args[1:]
    assert 'convert_fid_weights.py' in line and '\n' not in line
