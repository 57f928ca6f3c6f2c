"""Generated image folders for tests: MVTec-AD layout with ground-truth masks, and inference folders.

`make_mvtec_folder` writes

  root/train/good/NNN.png                       smooth random textures (normal)
  root/test/good/NNN.png                        more of the same
  root/test/<defect>/NNN.png                    a texture with a bright square (the defect)
  root/ground_truth/<defect>/NNN_mask.png       the square's mask (255 inside, 0 outside)

Everything is derived from one seed, so the same call always writes the same bytes. Images are small
(32x32 by default) so a `quick` run over them takes seconds on a CPU.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import scipy.ndimage
from PIL import Image

from helpers import REPO

DEFECT = 'bright_square'


@dataclasses.dataclass
class FolderInfo:
  """What `make_mvtec_folder` wrote."""

  root: Path
  train: list[Path]
  test_good: list[Path]
  test_defect: list[Path]
  masks: list[Path]

  @property
  def dataset_name(self) -> str:
    """The `dataset.name` config value for this folder."""
    return f'folder:{self.root}'


def texture(rng: np.random.Generator, size: int, channels: int) -> np.ndarray:
  """A smooth random texture, uint8 [size, size, channels], values in a mid-grey band.

  Gaussian-blurred white noise plus a faint random stripe pattern: structured enough that a
  reconstruction error means something, and every image differs.
  """
  noise = rng.normal(size=(size, size, channels))
  noise = scipy.ndimage.gaussian_filter(noise, sigma=(1.5, 1.5, 0))
  noise /= max(float(np.abs(noise).max()), 1e-6)
  yy, xx = np.mgrid[:size, :size]
  angle, freq = rng.uniform(0, np.pi), rng.uniform(0.2, 0.6)
  stripes = np.sin(freq * (np.cos(angle) * xx + np.sin(angle) * yy))[..., None]
  image = 110 + 35 * noise + 15 * stripes
  return np.clip(np.round(image), 0, 255).astype(np.uint8)


def add_square(
    rng: np.random.Generator,
    image: np.ndarray,
    min_side: int | None = None,
    max_side: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
  """Paints a bright square at a random place; returns (defect image, uint8 mask in {0, 255})."""
  size = image.shape[0]
  lo = min_side or max(2, size // 6)
  hi = max_side or max(lo + 1, size // 3)
  side = int(rng.integers(lo, hi + 1))
  top, left = rng.integers(0, size - side + 1, size=2)
  out = image.copy()
  out[top : top + side, left : left + side] = 245
  mask = np.zeros(image.shape[:2], np.uint8)
  mask[top : top + side, left : left + side] = 255
  return out, mask


def _save(array: np.ndarray, path: Path) -> Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  if array.ndim == 3 and array.shape[-1] == 1:
    array = array[..., 0]
  Image.fromarray(array).save(path)
  return path


def make_mvtec_folder(
    root: str | os.PathLike,
    *,
    size: int = 32,
    channels: int = 3,
    num_train: int = 24,
    num_test_good: int = 8,
    num_test_defect: int = 8,
    seed: int = 0,
) -> FolderInfo:
  """Writes a small MVTec-AD style dataset with ground-truth masks under `root`.

  Args:
    root: dataset folder (created).
    size: image side in pixels.
    channels: 1 (grey PNGs) or 3 (RGB PNGs).
    num_train: normal training images (the run holds out `dataset.val_fraction` of them).
    num_test_good: normal test images.
    num_test_defect: defect test images, each with a mask in ground_truth/.
    seed: everything is derived from it.

  Returns:
    A FolderInfo with the written paths.
  """
  root = Path(root)
  rng = np.random.default_rng(seed)
  info = FolderInfo(root, [], [], [], [])
  for i in range(num_train):
    info.train.append(_save(texture(rng, size, channels), root / 'train' / 'good' / f'{i:03d}.png'))
  for i in range(num_test_good):
    path = root / 'test' / 'good' / f'{i:03d}.png'
    info.test_good.append(_save(texture(rng, size, channels), path))
  for i in range(num_test_defect):
    image, mask = add_square(rng, texture(rng, size, channels))
    info.test_defect.append(_save(image, root / 'test' / DEFECT / f'{i:03d}.png'))
    info.masks.append(_save(mask, root / 'ground_truth' / DEFECT / f'{i:03d}_mask.png'))
  return info


@dataclasses.dataclass
class InferFolderInfo:
  """What `make_infer_folder` wrote: decodable images and the files inference must skip."""

  root: Path
  decodable: list[Path]
  corrupt: Path
  not_an_image: Path
  grayscale: Path


def make_infer_folder(
    root: str | os.PathLike, source: FolderInfo, *, seed: int = 1
) -> InferFolderInfo:
  """Writes an inference folder: a few test images in nested folders, plus the awkward cases.

  Holds RGB test images copied from `source` (one in a nested subfolder), a grayscale image of another
  size, a non-square image, a corrupt .png (truncated PNG bytes), a text file, and a hidden file that
  must be ignored entirely.
  """
  root = Path(root)
  rng = np.random.default_rng(seed)
  decodable = []
  for i, path in enumerate(source.test_good[:2] + source.test_defect[:2]):
    sub = root / ('nested/deeper' if i == 3 else '')
    target = sub / f'img_{i}.png'
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(path.read_bytes())
    decodable.append(target)
  grey = texture(rng, 48, 1)
  decodable.append(_save(grey, root / 'grey.png'))
  wide = texture(rng, 40, 3)
  wide = np.concatenate([wide, wide[:, :20]], axis=1)  # 40 x 60: any size is accepted
  decodable.append(_save(wide, root / 'nested' / 'wide.jpg'))
  png = (root / 'grey.png').read_bytes()
  corrupt = root / 'corrupt.png'
  corrupt.write_bytes(png[: len(png) // 3])
  notes = root / 'notes.txt'
  notes.write_text('not an image\n')
  (root / '.hidden.png').write_bytes(png)
  return InferFolderInfo(root, sorted(decodable), corrupt, notes, root / 'grey.png')


# --- A trained quick run over a generated folder (shared by the evaluation and inference tests). ----

# configs/masked.py:quick at 2 steps, RGB, with dropout so MC-dropout runs, FID asked for without
# weights (must give null, not a crash) and smoothed maps.
QUICK_MASKED = (
    'configs/masked.py:quick,steps=2,channels=3,model.dropout=0.2,eval.mc_samples=2,'
    'eval.fid=True,eval.smooth_sigma=1.0'
)


@dataclasses.dataclass
class TrainedRun:
  """A finished run: its workdir, the dataset it was trained on and its results.json."""

  workdir: Path
  data: FolderInfo
  results: dict


def quick_masked_config(dataset_name: str, spec: str = QUICK_MASKED, **overrides):
  """The quick masked config on `dataset_name`, with dotted-key overrides ('eval.fid'=...),
  finished (`checks.finished`) as an entry point finishes it."""
  # Lazy: keeps `import synthetic` light for data-only users.
  from ganomaly_jax.config import arguments, checks
  from ganomaly_jax.experiments import sweep

  return checks.finished(
      sweep.apply_overrides(
          arguments.load_config(f'{REPO / spec},dataset={dataset_name}'), overrides
      )
  )


def train_quick_masked_run(root: str | os.PathLike, **overrides) -> TrainedRun:
  """Generates a folder dataset under root/data and trains `QUICK_MASKED` on it in root/run."""
  from ganomaly_jax import train  # lazy: imports TensorFlow through clu

  root = Path(root)
  data = make_mvtec_folder(root / 'data')
  config = quick_masked_config(data.dataset_name, **overrides)
  results = train.train_and_evaluate(config, str(root / 'run'))
  return TrainedRun(root / 'run', data, results)


if __name__ == '__main__':
  # `python tests/synthetic.py DIR [DIR_FOR_INFERENCE]`: writes the MVTec-style folder (and optionally
  # an inference folder with the awkward cases) for manual runs.
  import sys

  if len(sys.argv) not in (2, 3):
    sys.exit('usage: python tests/synthetic.py DATASET_DIR [INFER_DIR]')
  written = make_mvtec_folder(sys.argv[1])
  print(
      f'dataset: {written.dataset_name} ({len(written.train)} train, {len(written.test_good)} good '
      f'+ {len(written.test_defect)} defect test images, {len(written.masks)} masks)'
  )
  if len(sys.argv) == 3:
    extra = make_infer_folder(sys.argv[2], written)
    print(
        f'inference folder: {extra.root} ({len(extra.decodable)} decodable images, 1 corrupt, '
        '1 text file, 1 hidden file)'
    )
