"""Synthetic anomalies made from normal images only, for choosing a read-out without test labels.

`SyntheticAnomalies(normals, seed)` is a source (as `sources.ArraySource`: `len`, records
`{'image': uint8 [H, W, C], 'label': 0|1}`, plus `ground_truth(i)`) holding the normals themselves
(label 0, empty mask) followed by `max(len(normals), MIN_ANOMALIES)` anomalous copies of them
(label 1, the pasted region as mask). An anomaly is CutPaste-style (Li, Sohn, Yoon, Pfister,
"CutPaste: Self-Supervised Learning for Anomaly Detection and Localization", CVPR 2021): a
rectangle of random size and aspect cut from *another* normal image, rotated by a random angle,
its brightness scaled, and pasted at a random position. Nothing else is drawn: no lines, blobs,
blurred stains or holes, so the synthetic set does not imitate the test defects of any suite
(`data/textures.py` draws scratches, stains and holes).

Every record is a pure function of (seed, index) and the normals: random access, no state, the
same bytes on every call and every process (evaluation streams it through `pipeline.eval_batches`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.ndimage

# Anomalies per synthetic set at least (cycling over the normals): a small validation split (a few
# dozen normals) still gives an AUROC that separates read-outs, at the cost of one eval pass.
MIN_ANOMALIES = 256
# Patch area as a fraction of the image, and its aspect ratio (log-uniform), as CutPaste draws them.
AREA = (0.02, 0.15)
ASPECT = (0.3, 3.3)
# Brightness factor of the pasted patch (CutPaste's colour jitter, brightness only).
BRIGHTNESS = (0.75, 1.25)
# A draw whose pasted pixels differ from the ones they cover by less than this mean (in uint8 units)
# is drawn again (up to MAX_TRIES): a flat patch on a flat region would be an "anomaly" that changes
# nothing, e.g. background pasted on background of a digit.
MIN_CHANGE = 8.0
MAX_TRIES = 20


def _patch_shape(rng: np.random.Generator, size: int) -> tuple[int, int]:
  """(height, width) of a patch: area fraction in AREA, aspect in ASPECT, h + w <= size so that
  any rotation of it fits inside the image."""
  area = rng.uniform(*AREA) * size * size
  aspect = np.exp(rng.uniform(np.log(ASPECT[0]), np.log(ASPECT[1])))
  h = int(np.clip(round(np.sqrt(area / aspect)), 1, size - 1))
  w = int(np.clip(round(np.sqrt(area * aspect)), 1, size - 1))
  scale = min(1.0, (size - 1) / (h + w))
  return max(1, int(h * scale)), max(1, int(w * scale))


def cutpaste(
    target: np.ndarray, donor: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
  """`target` with a rotated, brightness-scaled rectangle of `donor` pasted in: (image, mask).

  Args:
    target: uint8 [H, W, C] (H == W), the normal image to corrupt.
    donor: uint8 [H, W, C], the normal image the patch is cut from.
    rng: the draw's generator (size, positions, angle, brightness).

  Returns:
    (uint8 [H, W, C] image, float32 [H, W] mask in {0, 1}); outside the mask the image equals
    `target`. Draws whose patch barely changes the pixels it covers are repeated (MIN_CHANGE).
  """
  size = target.shape[0]
  image, mask = target, np.zeros(target.shape[:2], np.float32)
  for _ in range(MAX_TRIES):
    h, w = _patch_shape(rng, size)
    top, left = rng.integers(0, size - h + 1), rng.integers(0, size - w + 1)
    patch = donor[top : top + h, left : left + w].astype(np.float32)
    angle = rng.uniform(0.0, 360.0)
    # Bilinear for the pixels, nearest for the footprint, so the mask marks whole pasted pixels.
    patch = scipy.ndimage.rotate(patch, angle, axes=(1, 0), reshape=True, order=1, mode='nearest')
    footprint = (
        scipy.ndimage.rotate(np.ones((h, w), np.float32), angle, axes=(1, 0), reshape=True, order=0)
        > 0.5
    )
    patch = np.clip(patch * rng.uniform(*BRIGHTNESS), 0, 255)
    ph, pw = footprint.shape
    y, x = rng.integers(0, size - ph + 1), rng.integers(0, size - pw + 1)
    image = target.copy()
    region = image[y : y + ph, x : x + pw]
    pasted = np.round(patch).astype(np.uint8)
    region[footprint] = pasted[footprint]
    mask = np.zeros(target.shape[:2], np.float32)
    mask[y : y + ph, x : x + pw] = footprint
    change = np.abs(image.astype(np.float32) - target.astype(np.float32))[mask > 0]
    if change.size and float(change.mean()) >= MIN_CHANGE:
      break
  return image, mask


class SyntheticAnomalies:
  """The normals (label 0) then CutPaste anomalies made from them (label 1), random access.

  Anomaly k (record len(normals) + k) corrupts normal k mod n with a patch of another normal (the
  same one only when n == 1), drawn with the generator seeded by (seed, k).
  """

  def __init__(self, normals, seed: int, min_anomalies: int = MIN_ANOMALIES):
    if len(normals) == 0:
      raise ValueError('synthetic anomalies need at least one normal image')
    self.normals = normals
    self.seed = int(seed)
    self.num_normals = len(normals)
    self.num_anomalies = max(self.num_normals, int(min_anomalies))

  def __len__(self) -> int:
    return self.num_normals + self.num_anomalies

  def _anomaly(self, k: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng((self.seed, k))
    n = self.num_normals
    target = k % n
    donor = target if n == 1 else (target + 1 + int(rng.integers(n - 1))) % n
    return cutpaste(
        np.asarray(self.normals[target]['image']), np.asarray(self.normals[donor]['image']), rng
    )

  def __getitem__(self, index: int) -> dict[str, Any]:
    index = int(index)
    if index < self.num_normals:
      return {'image': np.asarray(self.normals[index]['image']), 'label': np.int32(0)}
    image, _ = self._anomaly(index - self.num_normals)
    return {'image': image, 'label': np.int32(1)}

  def ground_truth(self, index: int) -> np.ndarray:
    """[H, W] mask in {0, 1}: the pasted region (zeros for the normals)."""
    index = int(index)
    if index < self.num_normals:
      return np.zeros(np.shape(self.normals[index]['image'])[:2], np.float32)
    return self._anomaly(index - self.num_normals)[1]

  def __repr__(self) -> str:
    return (
        f'SyntheticAnomalies({self.normals!r}, seed={self.seed}, '
        f'anomalies={self.num_anomalies})'
    )
