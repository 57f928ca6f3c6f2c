"""A small texture-defect dataset made from scikit-image's bundled photographs, in MVTec AD layout.

No download: `skimage.data` ships the images. For each source image (512×512 grayscale; `TEXTURES`)
one category folder is written:

  <root>/<texture>/train/good/NNN.png                  TRAIN patches
  <root>/<texture>/test/good/NNN.png                   TEST_GOOD patches
  <root>/<texture>/test/<defect>/NNN.png               TEST_DEFECT patches per defect kind
  <root>/<texture>/ground_truth/<defect>/NNN_mask.png  255 on defect pixels, 0 elsewhere

Patches are PATCH×PATCH crops at random positions (seeded). Training patches come from the top
three quarters of the photograph and test patches from the bottom quarter, so no test pixel was
ever seen in training. Defects are drawn on a test patch (PATCH = 64 px; sizes below are in those
pixels), each at a random place, and the mask is exactly the changed pixels:
  scratch — a straight line 24–48 px long at a random angle, 2 px wide (PIL's line), set to 255
            (or 0 where the patch is brighter than mid-grey on average, so it always contrasts);
  stain   — an ellipse with semi-axes 6–14 px at a random angle, blurred (Gaussian σ = 2 px) into a
            soft alpha a; pixels become (1 − 0.6a)·x, darker by up to 60 %; the mask is a ≥ 0.25
            (where the darkening is at least 15 %);
  hole    — a filled disc of radius 4–9 px set to 0 (black).
A `.complete` file holding this recipe's parameters is written last; a folder that has one with
the same parameters is reused as it is ("written once"), any other is rewritten.
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
from PIL import Image, ImageDraw

TEXTURES = ('brick', 'grass', 'gravel', 'camera')
DEFECTS = ('scratch', 'stain', 'hole')
PATCH = 64
TRAIN = 400
TEST_GOOD = 60
TEST_DEFECT = 20
MARKER = '.complete'


class TexturesError(ValueError):
  """The texture data cannot be made (scikit-image missing from a broken install); one line."""


def _photograph(name: str) -> np.ndarray:
  try:
    from skimage import data as sk_data  # imported here: only this suite needs it
  except ImportError:
    raise TexturesError(
        'The textures suite needs scikit-image, a declared dependency: reinstall '
        'the package (pip install -e .).'
    ) from None
  image = np.asarray(getattr(sk_data, name)())
  if image.ndim == 3:  # an RGB photograph: the luma, as the folder loader would convert it
    image = np.round(image[..., :3] @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)
  return image.astype(np.uint8)


def _crops(
    image: np.ndarray, rows: tuple[int, int], n: int, rng: np.random.Generator
) -> list[np.ndarray]:
  top = rng.integers(rows[0], rows[1] - PATCH + 1, size=n)
  left = rng.integers(0, image.shape[1] - PATCH + 1, size=n)
  return [image[t : t + PATCH, l : l + PATCH].copy() for t, l in zip(top, left)]


def add_defect(
    patch: np.ndarray, kind: str, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
  """(defective uint8 patch, bool mask of the changed pixels) for one defect kind (module doc)."""
  from scipy import ndimage

  size = patch.shape[0]
  out = patch.astype(np.float32)
  if kind == 'scratch':
    length, angle = rng.uniform(24, 48), rng.uniform(0, np.pi)
    cy, cx = rng.uniform(size * 0.25, size * 0.75, size=2)
    dy, dx = np.sin(angle) * length / 2, np.cos(angle) * length / 2
    canvas = Image.new('L', (size, size), 0)
    ImageDraw.Draw(canvas).line([(cx - dx, cy - dy), (cx + dx, cy + dy)], fill=255, width=2)
    mask = np.asarray(canvas) > 0
    out[mask] = 0.0 if patch.mean() > 127.5 else 255.0
  elif kind == 'stain':
    a, b = rng.uniform(6, 14, size=2)
    angle = rng.uniform(0, np.pi)
    cy, cx = rng.uniform(16, size - 16, size=2)
    yy, xx = np.mgrid[:size, :size].astype(np.float32)
    u = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
    v = -(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)
    alpha = ndimage.gaussian_filter(((u / a) ** 2 + (v / b) ** 2 <= 1).astype(np.float32), 2.0)
    out *= 1.0 - 0.6 * alpha
    mask = alpha >= 0.25
  elif kind == 'hole':
    radius = rng.uniform(4, 9)
    cy, cx = rng.uniform(12, size - 12, size=2)
    yy, xx = np.mgrid[:size, :size]
    mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
    out[mask] = 0.0
  else:
    raise ValueError(f'Unknown defect {kind!r}: use one of {", ".join(DEFECTS)}.')
  return np.clip(np.round(out), 0, 255).astype(np.uint8), mask


def _recipe(seed: int) -> dict:
  return {
      'textures': list(TEXTURES),
      'defects': list(DEFECTS),
      'patch': PATCH,
      'train': TRAIN,
      'test_good': TEST_GOOD,
      'test_defect': TEST_DEFECT,
      'seed': seed,
      'version': 1,
  }


def _save(path: str, array: np.ndarray) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array).save(path)


def write_textures(root: str, seed: int = 0) -> list[str]:
  """Writes (once) one MVTec-style category folder per texture under `root`; returns their paths."""
  recipe = _recipe(seed)
  marker = os.path.join(root, MARKER)
  folders = [os.path.join(root, name) for name in TEXTURES]
  if os.path.exists(marker):
    with open(marker) as f:
      if json.load(f) == recipe:
        return folders
  for folder in folders:  # another recipe's files must not mix with this one's
    shutil.rmtree(folder, ignore_errors=True)
  for index, name in enumerate(TEXTURES):
    image = _photograph(name)
    rng = np.random.default_rng([seed, index])
    cut = image.shape[0] * 3 // 4
    folder = folders[index]
    for i, patch in enumerate(_crops(image, (0, cut), TRAIN, rng)):
      _save(os.path.join(folder, 'train', 'good', f'{i:03d}.png'), patch)
    for i, patch in enumerate(_crops(image, (cut, image.shape[0]), TEST_GOOD, rng)):
      _save(os.path.join(folder, 'test', 'good', f'{i:03d}.png'), patch)
    for kind in DEFECTS:
      for i, patch in enumerate(_crops(image, (cut, image.shape[0]), TEST_DEFECT, rng)):
        defective, mask = add_defect(patch, kind, rng)
        _save(os.path.join(folder, 'test', kind, f'{i:03d}.png'), defective)
        _save(
            os.path.join(folder, 'ground_truth', kind, f'{i:03d}_mask.png'),
            mask.astype(np.uint8) * 255,
        )
  with open(marker, 'w') as f:
    json.dump(recipe, f, indent=2)
  return folders
