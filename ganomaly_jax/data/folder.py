"""Scanning an MVTec-AD style image folder into a validated file index.

Layout (MVTec-AD, and the car study's undamaged/damaged split):

  root/train/good/*                            normal training images
  root/test/good/*                             normal test images   (label 0)
  root/test/<defect>/*                         anomalous test images (label 1)
  root/ground_truth/<defect>/<stem>_mask.png   optional pixel masks of defect images

Every candidate file is decoded once at scan time, so broken files are skipped and counted up front
(see `data_report`) instead of crashing the loader mid-training. Hidden files (.DS_Store, ._x.png)
and OS thumbnails are ignored entirely; files without an image extension are skipped as
'not_an_image'. Only the files directly inside each class folder are read: nested folders are
ignored, with a warning.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
from typing import Any

import numpy as np
from absl import logging
from PIL import Image

from ganomaly_jax.data import images

GOOD = 'good'
# OS litter that is not hidden by a leading dot.
_IGNORED_NAMES = frozenset({'thumbs.db', 'desktop.ini'})


class FolderDataError(ValueError):
  """The folder cannot provide a usable train/test split; the message names the path."""


@dataclasses.dataclass
class FolderIndex:
  """The usable files of an image folder, in sorted order, plus what was skipped and why.

  Attributes:
    root: the scanned folder.
    channels: channels the files were validated for (1 or 3).
    min_side: smallest accepted image side in pixels.
    train_paths: usable normal training images.
    test_paths: usable test images, ordered by class folder then file name.
    test_labels: 0 for test/good, 1 for any defect folder.
    test_defects: 'good' or the defect folder name, per test image.
    test_mask_paths: ground-truth mask per test image; None for good images, for defect images
      without a mask and for masks that failed to decode (those are listed in `bad_masks`).
    skipped: reason (a `images.REASONS` entry) -> skipped paths; only reasons that occurred.
    num_scanned: candidate files looked at (hidden and OS litter files are not counted).
    converted: conversion label (e.g. 'L->RGB', 'exif_transpose') -> number of usable images.
    bad_masks: mask path -> BadImage reason, for masks that exist but cannot be decoded.
  """

  root: str
  channels: int
  min_side: int
  train_paths: list[str] = dataclasses.field(default_factory=list)
  test_paths: list[str] = dataclasses.field(default_factory=list)
  test_labels: list[int] = dataclasses.field(default_factory=list)
  test_defects: list[str] = dataclasses.field(default_factory=list)
  test_mask_paths: list[str | None] = dataclasses.field(default_factory=list)
  skipped: dict[str, list[str]] = dataclasses.field(default_factory=dict)
  num_scanned: int = 0
  converted: dict[str, int] = dataclasses.field(default_factory=dict)
  bad_masks: dict[str, str] = dataclasses.field(default_factory=dict)


def scan_image_folder(
    root: str | os.PathLike, channels: int, min_side: int = images.DEFAULT_MIN_SIDE
) -> FolderIndex:
  """Indexes `root` (MVTec-AD layout), decoding every candidate file once to validate it.

  Args:
    root: dataset folder holding train/ and test/ (and optionally ground_truth/).
    channels: 1 or 3; files are validated by decoding them exactly as the loader will.
    min_side: images with a side below this many pixels are skipped as 'too_small'.

  Returns:
    A FolderIndex of usable files in deterministic (sorted) order.

  Raises:
    FolderDataError: root, root/train/good or root/test is missing, or train/good or test/ holds no
      usable image.
  """
  root = os.fspath(root)
  if not os.path.isdir(root):
    raise FolderDataError(f'image folder root does not exist or is not a directory: {root}')
  train_dir = os.path.join(root, 'train', GOOD)
  if not os.path.isdir(train_dir):
    raise FolderDataError(f'missing training folder (expected normal images in): {train_dir}')
  test_dir = os.path.join(root, 'test')
  if not os.path.isdir(test_dir):
    raise FolderDataError(f'missing test folder (expected test/good and test/<defect>): {test_dir}')

  index = FolderIndex(root=root, channels=channels, min_side=min_side)
  skipped: dict[str, list[str]] = collections.defaultdict(list)
  converted: collections.Counter[str] = collections.Counter()

  sizes: dict[str, tuple[int, int]] = {}  # (height, width) of every usable image

  def usable(paths: list[str]) -> list[str]:
    kept = []
    for path in paths:
      index.num_scanned += 1
      if not images.has_image_extension(path):
        # Not decoded at all: a CSV that happens to parse as an image is still not training data.
        skipped['not_an_image'].append(path)
        continue
      try:
        array, conversions = images.decode_with_conversion(path, channels, min_side)
      except images.BadImage as e:
        skipped[e.reason].append(path)
        continue
      sizes[path] = array.shape[:2]
      converted.update(conversions)
      kept.append(path)
    return kept

  train_candidates = _list_files(train_dir)
  index.train_paths = usable(train_candidates)
  if not index.train_paths:
    raise FolderDataError(
        f'no usable training image in {train_dir}: '
        f'{_describe_skips(skipped, len(train_candidates))}'
    )

  test_candidates = 0
  stray = 0
  for name in sorted(os.listdir(test_dir)):
    class_dir = os.path.join(test_dir, name)
    if _is_ignored(name):
      continue
    if not os.path.isdir(class_dir):
      stray += 1
      continue
    candidates = _list_files(class_dir)
    test_candidates += len(candidates)
    label = 0 if name == GOOD else 1
    for path in usable(candidates):
      index.test_paths.append(path)
      index.test_labels.append(label)
      index.test_defects.append(name)
      index.test_mask_paths.append(
          None if label == 0 else _find_mask(root, name, path, sizes[path], index)
      )
  if stray:
    logging.warning(
        'Ignored %d file(s) directly inside %s: test images belong in test/good or '
        'test/<defect>.',
        stray,
        test_dir,
    )
  if not index.test_paths:
    test_skips = {
        r: [p for p in ps if p.startswith(test_dir + os.sep)] for r, ps in skipped.items()
    }
    raise FolderDataError(
        f'no usable test image in {test_dir}: {_describe_skips(test_skips, test_candidates)}'
    )
  if len(set(index.test_labels)) < 2:
    logging.warning(
        'Test set of %s holds only %s images: AUC is undefined.',
        root,
        'good' if index.test_labels[0] == 0 else 'defect',
    )

  index.skipped = {reason: sorted(skipped[reason]) for reason in images.REASONS if skipped[reason]}
  index.converted = dict(sorted(converted.items()))
  for reason, paths in index.skipped.items():
    # One line per reason, not per file: a folder of 10k broken files must not flood the log.
    logging.warning('%s: skipped %d file(s) as %s, e.g. %s', root, len(paths), reason, paths[0])
  if index.bad_masks:
    logging.warning(
        '%s: %d ground-truth mask(s) could not be decoded, e.g. %s',
        root,
        len(index.bad_masks),
        next(iter(index.bad_masks)),
    )
  logging.info(
      '%s: %d usable train, %d usable test (%d defect) of %d files scanned.',
      root,
      len(index.train_paths),
      len(index.test_paths),
      sum(index.test_labels),
      index.num_scanned,
  )
  return index


def data_report(index: FolderIndex) -> dict[str, Any]:
  """A JSON-serialisable summary of a scan: what was usable, skipped (and why) and converted.

  Every reason of `images.REASONS` is present under "skipped" (count 0 when it did not occur), so
  the report has the same shape for every dataset.
  """
  by_defect = collections.Counter(index.test_defects)
  masks = [m for m in index.test_mask_paths if m is not None]
  return {
      'root': index.root,
      'channels': index.channels,
      'min_side': index.min_side,
      'scanned': index.num_scanned,
      'usable': {'train': len(index.train_paths), 'test': len(index.test_paths)},
      'test_by_defect': dict(sorted(by_defect.items())),
      'skipped': {
          reason: {
              'count': len(index.skipped.get(reason, [])),
              'paths': list(index.skipped.get(reason, [])),
          }
          for reason in images.REASONS
      },
      'converted': dict(index.converted),
      'masks': {
          'found': len(masks),
          'missing': sum(
              1
              for label, m in zip(index.test_labels, index.test_mask_paths)
              if label == 1 and m is None
          )
          - len(index.bad_masks),
          'bad': dict(index.bad_masks),
      },
  }


def write_data_report(index: FolderIndex, path: str | os.PathLike) -> dict[str, Any]:
  """Writes `data_report(index)` as indented JSON to `path` (parents created) and returns it."""
  report = data_report(index)
  path = os.fspath(path)
  parent = os.path.dirname(path)
  if parent:
    os.makedirs(parent, exist_ok=True)
  # Write-then-rename so a crash never leaves a half-written report behind.
  tmp = f'{path}.tmp{os.getpid()}'
  with open(tmp, 'w', encoding='utf-8') as f:
    json.dump(report, f, indent=2)
    f.write('\n')
  os.replace(tmp, path)
  return report


def load_mask(path: str | os.PathLike, isize: int) -> np.ndarray:
  """Loads a ground-truth mask as float32 [isize, isize] in {0, 1}.

  The mask goes through `images.decode_image` (grey, EXIF-oriented like its image), is resized with
  nearest-neighbour so no in-between values appear, and is thresholded at > 127.

  Raises:
    images.BadImage: the mask is missing, empty or cannot be decoded.
  """
  grey = images.decode_image(path, channels=1, min_side=1)[:, :, 0]
  size = (int(isize), int(isize))
  if grey.shape != size:
    grey = np.asarray(Image.fromarray(grey).resize(size, Image.Resampling.NEAREST))
  return (grey > 127).astype(np.float32)


def _is_ignored(name: str) -> bool:
  return name.startswith('.') or name.lower() in _IGNORED_NAMES


def _list_files(directory: str) -> list[str]:
  """Sorted candidate files directly inside `directory`: everything but folders.

  Dangling or looping links, FIFOs and devices are candidates too, so the decoder reports them
  ('unreadable', 'not_a_file') instead of the scan failing or silently passing them over.
  """
  files = []
  nested = 0
  with os.scandir(directory) as entries:
    for entry in entries:
      if _is_ignored(entry.name):
        continue
      try:
        is_dir = entry.is_dir()
      except OSError:  # a link to itself (ELOOP), a permission problem: not a folder
        is_dir = False
      if is_dir:
        nested += 1
      else:
        files.append(entry.path)
  if nested:
    logging.warning('Ignored %d nested folder(s) inside %s.', nested, directory)
  return sorted(files)


def _find_mask(
    root: str, defect: str, image_path: str, image_size: tuple[int, int], index: FolderIndex
) -> str | None:
  """The decodable ground-truth mask of a defect image, or None (bad ones go to index.bad_masks).

  Raises:
    FolderDataError: the mask's size differs from its image's. Resizing it would score pixels
      against a mask drawn for another picture, so pixel AUROC / PRO would be silently wrong.
  """
  stem = os.path.splitext(os.path.basename(image_path))[0]
  mask_path = os.path.join(root, 'ground_truth', defect, f'{stem}_mask.png')
  if not os.path.lexists(mask_path):
    return None
  try:
    mask = images.decode_image(mask_path, channels=1, min_side=1)
  except images.BadImage as e:
    index.bad_masks[mask_path] = e.reason
    return None
  if mask.shape[:2] != tuple(image_size):
    (mh, mw), (ih, iw) = mask.shape[:2], image_size
    raise FolderDataError(
        f'ground-truth mask {mask_path} is {mw}x{mh} px but its image '
        f"{image_path} is {iw}x{ih}: a mask must have its image's size."
    )
  return mask_path


def _describe_skips(skipped: dict[str, list[str]], num_files: int) -> str:
  reasons = ', '.join(f'{r}: {len(skipped[r])}' for r in images.REASONS if skipped.get(r))
  return f'{num_files} file(s) found, all skipped ({reasons})' if num_files else '0 files found'
