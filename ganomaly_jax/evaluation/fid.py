"""Fréchet Inception Distance (FID) with the standard FID Inception-v3: its weights (validated,
loaded, converted from pytorch-fid's checkpoint), its pool3 features and the Fréchet distance. The
network itself is `inception.InceptionV3`.

Variables layout (documented because weight files are validated against it): conv kernels and BatchNorm
scale/bias live in the `params` collection, BatchNorm running mean/var in the `batch_stats` collection,
under the torchvision module names, e.g. `params/Mixed_5b/branch1x1/conv/kernel` and
`batch_stats/Mixed_5b/branch1x1/bn/var`. Weight files (.npz or .pkl) hold exactly these '/'-joined paths.
`scripts/convert_fid_weights.py` writes such a file from pytorch-fid's checkpoint; nothing here downloads.
"""

from __future__ import annotations

import functools
import os
import pickle
import warnings
from collections.abc import Callable, Mapping
from typing import Any

from absl import logging
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg

from ganomaly_jax.evaluation import inception

# Name of pytorch-fid's checkpoint, quoted in messages so users know what to look for.
TORCH_CHECKPOINT_NAME = 'pt_inception-2015-12-05-6726825d.pth'
TORCH_CHECKPOINT_URL = (
    'https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/' + TORCH_CHECKPOINT_NAME
)

_WEIGHTS_HINT = (
    f'download {TORCH_CHECKPOINT_NAME} from the pytorch-fid GitHub releases ({TORCH_CHECKPOINT_URL}) and '
    'convert it with `python scripts/convert_fid_weights.py --input <pth> --output <npz>`'
)


class FidWeightsError(ValueError):
  """A FID Inception weights file is absent or does not match the network."""


# ----------------------------------------------------------------------------------------------------
# Weights.


def _dummy_input() -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct(
      (1, inception.INCEPTION_SIZE, inception.INCEPTION_SIZE, 3), jnp.float32
  )


def abstract_variables() -> dict[str, Any]:
  """The variables tree of `inception.InceptionV3` as ShapeDtypeStructs (traced only, nothing is
  computed)."""
  return jax.eval_shape(inception.InceptionV3().init, jax.random.key(0), _dummy_input())


@functools.lru_cache(maxsize=1)
def expected_shapes() -> dict[str, tuple[int, ...]]:
  """'/'-joined variable path (collection first) -> shape, the contract every weights file must meet."""
  flat = traverse_util.flatten_dict(abstract_variables(), sep='/')
  return {k: tuple(v.shape) for k, v in flat.items()}


def validate_inception_params(flat: Mapping[str, Any], source: str = 'weights') -> None:
  """Checks a flat '/'-joined dict of arrays against `expected_shapes()`.

  Args:
    flat: path -> array (anything with `.shape`).
    source: what to call the weights in the error (usually the file path).

  Raises:
    FidWeightsError: on the first wrong shape, missing key or extra key (in that order), as one line
      that also says how many further problems there are.
  """
  expected = expected_shapes()
  problems = []
  for key in sorted(set(flat) & set(expected)):
    got = tuple(np.shape(flat[key]))
    if got != expected[key]:
      problems.append(f'key {key!r} has shape {got}, expected {expected[key]}')
  for key in sorted(set(expected) - set(flat)):
    problems.append(f'key {key!r} is missing (expected shape {expected[key]})')
  for key in sorted(set(flat) - set(expected)):
    problems.append(
        f'key {key!r} (shape {tuple(np.shape(flat[key]))}) is not a FID InceptionV3 variable'
    )
  if problems:
    more = f' (+{len(problems) - 1} more problem(s))' if len(problems) > 1 else ''
    raise FidWeightsError(f'FID Inception {source}: {problems[0]}{more}.')


def _read_flat(path: str) -> dict[str, np.ndarray]:
  """Reads a .npz or .pkl weights file into a flat '/'-joined dict."""
  if path.endswith('.npz'):
    with np.load(path, allow_pickle=False) as data:
      return {k: data[k] for k in data.files}
  if path.endswith(('.pkl', '.pickle')):
    with open(path, 'rb') as f:
      # Only load .pkl files you made yourself (pickle can run code); .npz is the safe default.
      obj = pickle.load(f)
    if not isinstance(obj, Mapping):
      raise FidWeightsError(
          f'FID Inception weights {path!r}: expected a dict, got {type(obj).__name__}.'
      )
    # Accept both the flat layout and a nested variables tree.
    if any(isinstance(v, Mapping) for v in obj.values()):
      obj = traverse_util.flatten_dict(obj, sep='/')
    return {str(k): np.asarray(v) for k, v in obj.items()}
  raise FidWeightsError(
      f'FID Inception weights {path!r}: unsupported extension (use .npz or .pkl).'
  )


def load_inception_params(path: str) -> dict[str, Any]:
  """Loads and validates FID Inception weights written by `scripts/convert_fid_weights.py`.

  Args:
    path: a .npz (or .pkl) file whose keys are '/'-joined variable paths such as
      'params/Mixed_5b/branch1x1/conv/kernel' and 'batch_stats/Mixed_5b/branch1x1/bn/mean'.

  Returns:
    The nested variables dict ({'params': ..., 'batch_stats': ...}) of float32 jax arrays, ready for
    `inception.InceptionV3().apply`.

  Raises:
    FidWeightsError: the file is missing or unreadable, or a key is missing, extra or of the wrong shape.
  """
  if not path or not os.path.isfile(path):
    raise FidWeightsError(f'FID Inception weights file not found: {path!r}; {_WEIGHTS_HINT}.')
  try:
    flat = _read_flat(path)
  except FidWeightsError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    # Corrupt zips and pickles raise many different types; surface them as one weights error.
    raise FidWeightsError(f'FID Inception weights {path!r} could not be read: {e!r}.') from e
  validate_inception_params(flat, source=f'weights {path!r}')
  flat = {k: jnp.asarray(v, jnp.float32) for k, v in flat.items()}
  return traverse_util.unflatten_dict(flat, sep='/')


# pytorch-fid checkpoint entries that the pool3 network does not use.
_TORCH_DROPPED_PREFIXES = ('fc.', 'AuxLogits.')
# (torch module, torch leaf) -> (flax collection, flax leaf).
_TORCH_LEAVES = {
    ('conv', 'weight'): ('params', 'kernel'),
    ('bn', 'weight'): ('params', 'scale'),
    ('bn', 'bias'): ('params', 'bias'),
    ('bn', 'running_mean'): ('batch_stats', 'mean'),
    ('bn', 'running_var'): ('batch_stats', 'var'),
}


def torch_state_dict_to_flax(sd: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Maps pytorch-fid's Inception state_dict (as numpy arrays) to flat '/'-joined flax variables.

  `Mixed_5b.branch1x1.conv.weight` (OIHW) becomes `params/Mixed_5b/branch1x1/conv/kernel` (HWIO);
  `bn.weight/bias` become `params/.../bn/scale|bias` and `bn.running_mean/var` become
  `batch_stats/.../bn/mean|var`. The classifier (`fc.*`), any `AuxLogits.*` and BatchNorm's
  `num_batches_tracked` counters are dropped. Pure numpy, so it is testable without torch.

  Args:
    sd: torch parameter name -> numpy array.

  Returns:
    '/'-joined flax path -> float32 numpy array. Shapes are not checked here; see
    `validate_inception_params`.

  Raises:
    FidWeightsError: a name that is neither mapped nor known to be droppable (e.g. a checkpoint of a
      different network), or a conv weight that is not 4-d.
  """
  out = {}
  for name, value in sd.items():
    if name.startswith(_TORCH_DROPPED_PREFIXES) or name.endswith('.num_batches_tracked'):
      continue
    parts = name.split('.')
    if len(parts) < 3 or (parts[-2], parts[-1]) not in _TORCH_LEAVES:
      raise FidWeightsError(
          f'torch state_dict key {name!r} does not belong to the FID InceptionV3.'
      )
    collection, leaf = _TORCH_LEAVES[(parts[-2], parts[-1])]
    array = np.asarray(value, dtype=np.float32)
    if leaf == 'kernel':
      if array.ndim != 4:
        raise FidWeightsError(
            f'torch conv weight {name!r} has shape {array.shape}, expected 4-d OIHW.'
        )
      array = np.ascontiguousarray(array.transpose(2, 3, 1, 0))  # OIHW -> HWIO
    out['/'.join([collection, *parts[:-1], leaf])] = array
  return out


# ----------------------------------------------------------------------------------------------------
# Features.


def make_feature_fn(variables: Mapping[str, Any]) -> Callable[[Any], jax.Array]:
  """Returns `fn(images NHWC in [-1, 1]) -> [N, 2048] float32` pool3 features, jitted.

  The variables are passed to the jitted apply as an argument rather than closed over, so the ~87 MB of
  weights are not baked into the compiled program as constants.
  """
  apply = jax.jit(inception.InceptionV3().apply)

  def feature_fn(images: Any) -> jax.Array:
    return apply(variables, jnp.asarray(images, jnp.float32))

  return feature_fn


def extract_features(fn: Callable[[Any], Any], images: np.ndarray, batch_size: int) -> np.ndarray:
  """Runs `fn` over `images` in batches of exactly `batch_size` and returns [N, D] float32 features.

  The last batch is zero-padded up to `batch_size` (padding rows are discarded), so a jitted `fn`
  compiles once per image shape.
  """
  if batch_size <= 0:
    raise ValueError(f'batch_size must be positive, got {batch_size}.')
  images = np.asarray(images, dtype=np.float32)
  if images.ndim != 4:
    raise ValueError(f'extract_features expects NHWC images, got shape {images.shape}.')
  chunks = []
  for start in range(0, len(images), batch_size):
    batch = images[start : start + batch_size]
    n = len(batch)
    if n < batch_size:
      batch = np.concatenate([batch, np.zeros((batch_size - n,) + batch.shape[1:], np.float32)])
    chunks.append(np.asarray(fn(batch), dtype=np.float32)[:n])
  if not chunks:
    return np.zeros((0, inception.FEATURE_DIM), np.float32)
  return np.concatenate(chunks)


# ----------------------------------------------------------------------------------------------------
# Distance.


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
  """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2).

  d² = |mu1 - mu2|² + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^{1/2}), computed in float64.

  Args:
    mu1, mu2: means, shape [D].
    sigma1, sigma2: covariances, shape [D, D].
    eps: added to both diagonals when sigma1 @ sigma2 is too singular for a finite square root (as
      pytorch-fid / TTUR do).

  Returns:
    The squared Fréchet distance as a Python float (what is called "FID").
  """
  mu1 = np.atleast_1d(np.asarray(mu1, np.float64))
  mu2 = np.atleast_1d(np.asarray(mu2, np.float64))
  sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
  sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
  if mu1.shape != mu2.shape or mu1.ndim != 1:
    raise ValueError(f'Means must be equal-length vectors, got {mu1.shape} and {mu2.shape}.')
  d = mu1.shape[0]
  if sigma1.shape != (d, d) or sigma2.shape != (d, d):
    raise ValueError(f'Covariances must be {(d, d)}, got {sigma1.shape} and {sigma2.shape}.')

  def sqrtm(a: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
      # A singular product is expected with few samples; a non-finite result is handled below.
      warnings.simplefilter('ignore', scipy.linalg.LinAlgWarning)
      return scipy.linalg.sqrtm(a)

  covmean = sqrtm(sigma1 @ sigma2)
  if not np.isfinite(covmean).all():
    logging.warning('FID: sigma1 @ sigma2 is singular; adding %g to the covariance diagonals.', eps)
    offset = np.eye(d) * eps
    covmean = sqrtm((sigma1 + offset) @ (sigma2 + offset))
  if np.iscomplexobj(covmean):
    # Round-off gives tiny imaginary parts; a large one means the covariances are not PSD.
    max_imag = float(np.max(np.abs(np.diagonal(covmean).imag)))
    if max_imag > 1e-3:
      logging.warning(
          'FID: sqrtm has an imaginary component up to %g; keeping the real part.', max_imag
      )
    covmean = covmean.real
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def fid_from_features(f1: np.ndarray, f2: np.ndarray) -> float:
  """FID between two feature sets [N1, D] and [N2, D] (each needs at least 2 rows for a covariance)."""
  f1 = np.asarray(f1, np.float64)
  f2 = np.asarray(f2, np.float64)
  if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1]:
    raise ValueError(f'Features must be [N, D] with equal D, got {f1.shape} and {f2.shape}.')
  if len(f1) < 2 or len(f2) < 2:
    raise ValueError(f'FID needs at least 2 samples per set, got {len(f1)} and {len(f2)}.')
  return frechet_distance(
      f1.mean(axis=0), np.cov(f1, rowvar=False), f2.mean(axis=0), np.cov(f2, rowvar=False)
  )


@functools.lru_cache(maxsize=1)
def _cached_feature_fn(path: str, mtime_ns: int, size: int) -> Callable[[Any], jax.Array]:
  # Keyed on mtime/size too so a rewritten weights file is picked up; maxsize=1 keeps one copy in memory.
  del mtime_ns, size
  return make_feature_fn(load_inception_params(path))


def compute_fid(
    weights_path: str | None, images_a: np.ndarray, images_b: np.ndarray, batch_size: int = 50
) -> float | None:
  """FID between two image sets (NHWC, values in [-1, 1], any size; resized to 299 inside).

  Returns:
    The FID, or None (with one warning line explaining how to get the weights) when `weights_path` is
    empty or does not exist, so training and evaluation keep running without the weights.

  Raises:
    FidWeightsError: the file exists but does not hold valid FID Inception weights.
  """
  if not weights_path or not os.path.isfile(weights_path):
    where = f'not found at {weights_path!r}' if weights_path else 'path not set'
    logging.warning('FID skipped: Inception weights %s; to enable it, %s.', where, _WEIGHTS_HINT)
    return None
  stat = os.stat(weights_path)
  fn = _cached_feature_fn(os.path.abspath(weights_path), stat.st_mtime_ns, stat.st_size)
  features_a = extract_features(fn, images_a, batch_size)
  features_b = extract_features(fn, images_b, batch_size)
  return fid_from_features(features_a, features_b)
