"""Random-access data sources and the one-class protocol.

Every dataset becomes three splits of records `{'image': uint8 [isize, isize, C], 'label': 0|1}`:
  train — normal images only, minus the validation hold-out;
  val   — held-out normal images, used only to select checkpoints;
  test  — normal test images and abnormal images, used only for the final report.
Class-labelled data (digits, mnist, fashion_mnist, cifar10, npz) follows the GANomaly paper's
protocol (docs/methods.md#data-protocol): one class is abnormal; the test set holds the test-split normals and the
abnormal images of both splits. With `pool_normals`, the normals of both splits are pooled and split
80/20 with the seed, as the reference code does when given a seed.

What is slow to read is read once per process while it is among the last few datasets used
(`DECODED_CACHE_SIZE`): class-labelled arrays decoded and resized to the model's size, and an image
folder's index of usable files (file names only: folder images are decoded when a run reads them).
The runs of a benchmark suite, which differ in class, seed and method, then share one decoding;
the one-class split of each run is made afresh from it.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import threading
from typing import Any, Callable
import zipfile

import numpy as np

from ganomaly_jax.data import folder as folder_lib
from ganomaly_jax.data import images as images_lib

CIFAR10_NAMES = ('plane', 'car', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck')
TFDS_DATASETS = ('mnist', 'fashion_mnist', 'cifar10')


class DataError(ValueError):
  """A dataset that cannot be used as configured; the message is one line naming the problem."""


class ArraySource:
  """Random-access source over in-memory uint8 images and 0/1 labels (grain-compatible)."""

  def __init__(self, name: str, images: np.ndarray, labels: np.ndarray):
    self.name = name
    self.images = images
    self.labels = labels.astype(np.int32)

  def __len__(self) -> int:
    return len(self.images)

  def __getitem__(self, index: int) -> dict[str, Any]:
    return {'image': self.images[index], 'label': self.labels[index]}

  def __repr__(self) -> str:
    # grain compares repr(source) when restoring an iterator: keep it stable and data-dependent.
    return f'ArraySource({self.name!r}, n={len(self)}, shape={self.images.shape[1:]})'


class FileSource:
  """Random-access source over image files, decoded and resized on access (grain-compatible).

  Files were fully decoded once when the folder was scanned, so only readable images are listed.
  """

  def __init__(
      self,
      name: str,
      paths: list[str],
      labels: list[int],
      isize: int,
      channels: int,
      mask_paths: list[str | None] | None = None,
  ):
    self.name = name
    self.paths = list(paths)
    self.labels = np.asarray(labels, np.int32)
    self.isize = isize
    self.channels = channels
    self.mask_paths = list(mask_paths) if mask_paths is not None else [None] * len(self.paths)

  def __len__(self) -> int:
    return len(self.paths)

  def __getitem__(self, index: int) -> dict[str, Any]:
    image = images_lib.decode_image(self.paths[index], self.channels)
    return {'image': images_lib.resize_image(image, self.isize), 'label': self.labels[index]}

  def ground_truth(self, index: int) -> np.ndarray | None:
    """Pixel mask [isize, isize] in {0, 1}; zeros for normal images; None if unknown."""
    if self.labels[index] == 0:
      return np.zeros((self.isize, self.isize), np.float32)
    path = self.mask_paths[index]
    return None if path is None else folder_lib.load_mask(path, self.isize)

  def __repr__(self) -> str:
    return f'FileSource({self.name!r}, n={len(self)}, isize={self.isize}, channels={self.channels})'


@dataclasses.dataclass
class Splits:
  train: Any
  val: Any
  test: Any
  info: dict[str, Any]
  report: dict[str, Any] | None = None  # folder data: what was skipped and why


def _resize_array(images: np.ndarray, isize: int, channels: int) -> np.ndarray:
  """uint8 [N, H, W(, C)] -> uint8 [N, isize, isize, channels] (bilinear, channels converted)."""
  if images.ndim == 3:
    images = images[..., None]
  if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
    raise DataError(
        f'Images must be N×H×W or N×H×W×C with C in (1, 3, 4), got shape {images.shape}.'
    )
  images = images[..., :3] if images.shape[-1] == 4 else images
  if images.shape[-1] == 3 and channels == 1:
    images = (images.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
    images = np.clip(np.round(images), 0, 255).astype(np.uint8)
  elif images.shape[-1] == 1 and channels == 3:
    images = np.repeat(images, 3, axis=-1)
  if images.shape[1:3] != (isize, isize):
    images = np.stack([images_lib.resize_image(im, isize) for im in images])
  return images.astype(np.uint8)


def resolve_abnormal(abnormal: str, num_classes: int, class_names: tuple[str, ...] = ()) -> int:
  """Class index of `dataset.abnormal`: an index or, for CIFAR-10, a class name."""
  key = str(abnormal).strip().lower()
  if key in class_names:
    return class_names.index(key)
  try:
    index = int(key)
  except ValueError:
    names = f' or one of {", ".join(class_names)}' if class_names else ''
    raise DataError(f'dataset.abnormal={abnormal!r} is not a class index{names}.') from None
  if not 0 <= index < num_classes:
    raise DataError(f'dataset.abnormal={index} does not exist: classes are 0..{num_classes - 1}.')
  return index


def one_class_splits(
    name: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    abnormal: int,
    *,
    seed: int,
    pool_normals: bool,
    val_fraction: float,
    max_train: int = 0,
    max_test: int = 0,
) -> Splits:
  """Applies the one-class protocol to class-labelled arrays (images already at the model size)."""
  rng = np.random.default_rng(seed)
  tr_norm, te_norm = x_train[y_train != abnormal], x_test[y_test != abnormal]
  abn = np.concatenate([x_train[y_train == abnormal], x_test[y_test == abnormal]])
  if len(abn) == 0:
    raise DataError(f'dataset.abnormal={abnormal}: no image of that class in {name}.')
  if pool_normals:
    pooled = np.concatenate([tr_norm, te_norm])
    pooled = pooled[rng.permutation(len(pooled))]
    cut = int(0.8 * len(pooled))
    tr_norm, te_norm = pooled[:cut], pooled[cut:]
  tr_norm = tr_norm[rng.permutation(len(tr_norm))]
  n_val = max(1, int(round(val_fraction * len(tr_norm)))) if val_fraction > 0 else 0
  val, train = tr_norm[:n_val], tr_norm[n_val:]
  if max_train:
    train = train[:max_train]
    val = val[: max(1, max_train // 4)] if n_val else val
  test_x = np.concatenate([te_norm, abn])
  test_y = np.concatenate([np.zeros(len(te_norm)), np.ones(len(abn))])
  if max_test and len(test_x) > max_test:
    # Keep both classes in proportion so the AUROC stays defined on capped quick runs.
    keep = np.sort(rng.permutation(len(test_x))[:max_test])
    test_x, test_y = test_x[keep], test_y[keep]
  if len(train) == 0:
    raise DataError(f'{name}: no normal training images left for abnormal={abnormal}.')
  info = {
      'name': name,
      'abnormal': int(abnormal),
      'train': len(train),
      'val': len(val),
      'test': len(test_x),
      'test_abnormal': int(test_y.sum()),
  }
  return Splits(
      ArraySource(f'{name}/train', train, np.zeros(len(train))),
      ArraySource(f'{name}/val', val, np.zeros(len(val))),
      ArraySource(f'{name}/test', test_x, test_y),
      info,
  )


# Decoded datasets kept by this process (see the module docstring), newest last.
DECODED_CACHE_SIZE = 2
_decoded: collections.OrderedDict[tuple, Any] = collections.OrderedDict()
_decoded_lock = threading.Lock()


def decoded(key: tuple, make: Callable[[], Any]) -> Any:
  """`make()`, or what it returned for an equal `key` while still kept (read-only arrays).

  Callers must not modify what they get: it is shared with the next run that asks.
  """
  with _decoded_lock:
    if key in _decoded:
      _decoded.move_to_end(key)
      return _decoded[key]
  value = make()
  for leaf in value if isinstance(value, tuple) else ():
    if isinstance(leaf, np.ndarray):
      leaf.flags.writeable = False
  with _decoded_lock:
    _decoded[key] = value
    while len(_decoded) > DECODED_CACHE_SIZE:
      _decoded.popitem(last=False)
  return value


def clear_decoded() -> None:
  """Forgets every kept dataset."""
  with _decoded_lock:
    _decoded.clear()


def _digits_splits(config, arg: str) -> Splits:
  """scikit-learn's bundled 8x8 handwritten digits (no download), split 80/20 with the run's seed."""
  del arg
  m = config.model

  def load() -> tuple[np.ndarray, np.ndarray]:
    from sklearn import datasets as sk_datasets  # imported lazily: only this source needs it

    digits = sk_datasets.load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    return _resize_array(images, m.isize, m.channels), np.asarray(digits.target)

  images, target = decoded(('digits', m.isize, m.channels), load)
  order = np.random.default_rng(config.seed).permutation(len(images))
  cut = int(0.8 * len(images))
  tr, te = order[:cut], order[cut:]
  return _class_splits(config, 'digits', (images[tr], target[tr], images[te], target[te]), 10)


def _npz(path: str) -> tuple[np.ndarray, ...]:
  if not os.path.isfile(path):
    raise DataError(f'npz dataset not found: {path}')
  try:
    with np.load(path) as data:
      missing = [k for k in ('x_train', 'y_train', 'x_test', 'y_test') if k not in data]
      if missing:
        raise DataError(
            f'npz dataset {path} lacks arrays {missing} (needs x_train, y_train, x_test, y_test).'
        )
      arrays = tuple(np.asarray(data[k]) for k in ('x_train', 'y_train', 'x_test', 'y_test'))
  except (OSError, ValueError) as e:
    if isinstance(e, DataError):
      raise
    raise DataError(f'npz dataset {path} cannot be read: {e}') from None
  if arrays[0].dtype != np.uint8:
    raise DataError(f'npz dataset {path}: x_train must be uint8, got {arrays[0].dtype}.')
  return arrays


def _tfds(name: str, data_dir: str) -> tuple[np.ndarray, ...]:
  import tensorflow_datasets as tfds  # imported lazily: heavy, and only these sources need it

  from ganomaly_jax.runtime import startup

  startup.keep_tensorflow_off_accelerators()  # tfds runs TensorFlow ops

  out = []
  for split in ('train', 'test'):
    try:
      source = tfds.data_source(name, split=split, data_dir=data_dir or None)
    except Exception as e:  # tfds raises many types for a dataset that isn't prepared
      raise DataError(
          f'tfds dataset {name!r} ({split}) is not available: {str(e).splitlines()[0]}'
      ) from None
    records = [source[i] for i in range(len(source))]
    out.append(np.stack([r['image'] for r in records]).astype(np.uint8))
    out.append(np.asarray([r['label'] for r in records]))
  return tuple(out)


def _class_splits(
    config,
    name: str,
    arrays: tuple[np.ndarray, ...],
    num_classes: int,
    class_names: tuple[str, ...] = (),
) -> Splits:
  """One-class splits of class-labelled arrays (x_train, y_train, x_test, y_test) at the model's size."""
  d, m = config.dataset, config.model
  abnormal = resolve_abnormal(d.abnormal, num_classes, class_names)
  x_tr, y_tr, x_te, y_te = arrays
  x_tr, x_te = _resize_array(x_tr, m.isize, m.channels), _resize_array(x_te, m.isize, m.channels)
  return one_class_splits(
      name,
      x_tr,
      np.asarray(y_tr),
      x_te,
      np.asarray(y_te),
      abnormal,
      seed=config.seed,
      pool_normals=d.pool_normals,
      val_fraction=d.val_fraction,
      max_train=d.max_train,
      max_test=d.max_test,
  )


def _resized(
    config, key: tuple, read: Callable[[], tuple[np.ndarray, ...]]
) -> tuple[np.ndarray, ...]:
  """(x_train, y_train, x_test, y_test) of `read()` at the model's size, decoded once (`decoded`)."""
  m = config.model

  def load() -> tuple[np.ndarray, ...]:
    x_tr, y_tr, x_te, y_te = read()
    return (
        _resize_array(x_tr, m.isize, m.channels),
        np.asarray(y_tr),
        _resize_array(x_te, m.isize, m.channels),
        np.asarray(y_te),
    )

  return decoded(key + (m.isize, m.channels), load)


def _npz_splits(config, path: str) -> Splits:
  arrays = _resized(config, ('npz', os.path.abspath(path)), lambda: _npz(path))
  return _class_splits(config, 'npz', arrays, int(max(arrays[1].max(), arrays[3].max())) + 1)


def _tfds_splits(name: str) -> Callable[[Any, str], Splits]:
  def load(config, arg: str) -> Splits:
    del arg
    data_dir = config.dataset.data_dir
    arrays = _resized(config, ('tfds', name, data_dir), lambda: _tfds(name, data_dir))
    return _class_splits(config, name, arrays, 10, CIFAR10_NAMES if name == 'cifar10' else ())

  return load


def load_splits(config) -> Splits:
  """Builds train/val/test sources for `config.dataset` at `config.model.isize`/`channels`."""
  dataset, arg = get_dataset(config.dataset.name)
  return dataset.load(config, arg)


def _folder_splits(config, root: str) -> Splits:
  d, m = config.dataset, config.model
  try:
    index = decoded(
        ('folder', os.path.abspath(root), m.channels),
        lambda: folder_lib.scan_image_folder(root, m.channels),
    )
  except folder_lib.FolderDataError as e:
    raise DataError(str(e)) from None
  rng = np.random.default_rng(config.seed)
  train = np.asarray(index.train_paths)[rng.permutation(len(index.train_paths))].tolist()
  n_val = (
      max(1, int(round(d.val_fraction * len(train))))
      if d.val_fraction > 0 and len(train) > 1
      else 0
  )
  val, train = train[:n_val], train[n_val:]
  if d.max_train:
    train = train[: d.max_train]
  test_idx = np.arange(len(index.test_paths))
  if d.max_test and len(test_idx) > d.max_test:
    test_idx = np.sort(rng.permutation(len(test_idx))[: d.max_test])
  test = FileSource(
      'folder/test',
      [index.test_paths[i] for i in test_idx],
      [index.test_labels[i] for i in test_idx],
      m.isize,
      m.channels,
      [index.test_mask_paths[i] for i in test_idx],
  )
  info = {
      'name': 'folder',
      'root': root,
      'abnormal': 'defects',
      'train': len(train),
      'val': len(val),
      'test': len(test),
      'test_abnormal': int(test.labels.sum()),
      'has_ground_truth': any(p is not None for p in test.mask_paths),
  }
  return Splits(
      FileSource('folder/train', train, [0] * len(train), m.isize, m.channels),
      FileSource('folder/val', val, [0] * len(val), m.isize, m.channels),
      test,
      info,
      report=folder_lib.data_report(index),
  )


# ---------------------------------------------------------------------------------------------
# The dataset registry: `dataset.name` is NAME or NAME:ARG (npz:PATH, folder:PATH).
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Dataset:
  """What `dataset.name` selects.

  Attributes:
    load: (config, ARG) -> Splits at config.model.isize / channels, following the one-class protocol.
    channels: ARG -> the channels the model reads by default (the data's own, so RGB stays RGB).
    small: the AUTO keys take the embedded digits' smaller widths and run length
      (schema.resolve) instead of the study's.
    takes_arg: the name is NAME:ARG (a path); otherwise NAME alone.
  """

  load: Callable[[Any, str], Splits]
  channels: Callable[[str], int]
  small: bool = False
  takes_arg: bool = False


DATASETS: dict[str, Dataset] = {}


def register_dataset(name: str, dataset: Dataset) -> None:
  """Makes `dataset.name=NAME` (or NAME:ARG when dataset.takes_arg) select `dataset`."""
  if ':' in name:
    raise ValueError(f'dataset name {name!r} must not contain ":" (ARG follows it).')
  DATASETS[name] = dataset


def _usage() -> str:
  return ', '.join(f'{n}:PATH' if d.takes_arg else n for n, d in DATASETS.items())


def get_dataset(full_name: str) -> tuple[Dataset, str]:
  """(Dataset, ARG) for `dataset.name`; DataError (one line) for a name no entry matches."""
  name, sep, arg = full_name.partition(':')
  dataset = DATASETS.get(name)
  if dataset is None or dataset.takes_arg != bool(sep) or (sep and not arg):
    raise DataError(f'dataset.name={full_name!r} is not a dataset: use {_usage()}.')
  if dataset.takes_arg and '://' in arg:
    # Image folders and npz files are read with local file calls (and decoded by several workers):
    # a bucket is copied or mounted first. Run directories are the ones that may be URLs.
    raise DataError(
        f'dataset.name={full_name!r}: datasets are read from a local path, not a URL; copy the data '
        f'to a local disk first (gcloud storage cp -r {arg} DIR) or mount the bucket (gcsfuse).'
    )
  return dataset, arg


def npz_channels(path: str) -> int:
  """1 or 3: the channels of `x_train` in an npz file, read from its header (no array is loaded)."""
  if not os.path.isfile(path):
    raise DataError(
        f'npz dataset not found: {path} (set model.channels to resolve the config ' 'without it).'
    )
  try:
    with zipfile.ZipFile(path) as z, z.open('x_train.npy') as f:
      version = np.lib.format.read_magic(f)
      shape = (
          np.lib.format.read_array_header_1_0(f)
          if version == (1, 0)
          else np.lib.format.read_array_header_2_0(f)
      )[0]
  except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
    raise DataError(
        f'npz dataset {path}: cannot read x_train to choose model.channels ({e}); '
        'set model.channels explicitly.'
    ) from None
  return 3 if len(shape) == 4 and shape[-1] in (3, 4) else 1


register_dataset('digits', Dataset(load=_digits_splits, channels=lambda arg: 1, small=True))
for _name, _channels in (('mnist', 1), ('fashion_mnist', 1), ('cifar10', 3)):
  register_dataset(_name, Dataset(load=_tfds_splits(_name), channels=lambda arg, c=_channels: c))
register_dataset('npz', Dataset(load=_npz_splits, channels=npz_channels, takes_arg=True))
# Folder data is read as RGB: photographs, and a grey folder costs only the first layer's width.
register_dataset(
    'folder',
    Dataset(
        load=lambda config, root: _folder_splits(config, root),
        channels=lambda arg: 3,
        takes_arg=True,
    ),
)
