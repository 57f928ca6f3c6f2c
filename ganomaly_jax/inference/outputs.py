"""What one inference call writes: scores.csv, map PNGs over the images, and the staging folder.

Everything is written into a staging folder inside OUT (`Outputs`, one batch at a time) and moved
into place by `move_into` only once complete; `remove_dead_staging` clears what a killed call left.
"""

from __future__ import annotations

import csv
import functools
import os
import shutil

from absl import logging
import matplotlib
import numpy as np
from PIL import Image

from ganomaly_jax.evaluation import heatmaps, metrics, pixel_metrics
from ganomaly_jax.runtime import rundir

# scores.csv columns; `_csv_row` writes one image's row. Another column is one more name here and one
# more value there.
CSV_COLUMNS = ('path', 'score', 'anomalous')


def _csv_row(path: str, score: float, anomalous: int | None) -> list[str]:
  return [path, f'{score:.6g}', '' if anomalous is None else str(anomalous)]


def _write_csv(path: str, rows) -> None:
  with open(path, 'w', newline='') as f:
    writer = csv.writer(f)
    writer.writerow(CSV_COLUMNS)
    writer.writerows(rows)


def _write_png(array: np.ndarray, path: str) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array).save(path, format='PNG')


def move_into(staging: str, out_dir: str, skip_prefix: str | None = None) -> None:
  """Moves every file of `staging` to the same relative place in `out_dir` (os.replace: atomic each).

  scores.csv and index.html go last, so they never point at maps that are not there yet. Top-level
  entries starting with `skip_prefix` stay (what --overwrite moved out of the way).
  """
  files = []
  for dirpath, dirnames, filenames in os.walk(staging):
    if skip_prefix and dirpath == staging:
      dirnames[:] = [d for d in dirnames if not d.startswith(skip_prefix)]
      filenames = [f for f in filenames if not f.startswith(skip_prefix)]
    files.extend(os.path.relpath(os.path.join(dirpath, f), staging) for f in filenames)
  last = ('scores.csv', 'index.html')
  for rel in sorted(files, key=lambda r: (r in last, r)):
    target = os.path.join(out_dir, rel)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    os.replace(os.path.join(staging, rel), target)


@functools.lru_cache(maxsize=4)
def _colour_table(cmap: str) -> np.ndarray:
  """The colormap at 256 levels, float32 [256, 3] in 0..255."""
  return (matplotlib.colormaps[cmap](np.linspace(0.0, 1.0, 256))[:, :3] * 255.0).astype(np.float32)


def overlay_batch(
    images: np.ndarray, maps: np.ndarray, vmax: float, alpha: float = 0.5
) -> np.ndarray:
  """`heatmaps.overlay(image, map, vmin=0, vmax=vmax)` for a whole batch, the map at 256 colour levels.

  One table lookup per pixel instead of one colormap call per image: at 64x64 the per-image call
  cost more host time than scoring the image. Non-finite map values take the bottom colour, as there.
  """
  rgb = np.stack([heatmaps.to_rgb_uint8(im) for im in images]).astype(np.float32)
  norm = np.asarray(maps, np.float32) / vmax if vmax > 0 else np.zeros(maps.shape, np.float32)
  norm = np.clip(np.where(np.isfinite(norm), norm, 0.0), 0.0, 1.0)
  heat = _colour_table(heatmaps.DEFAULT_CMAP)[np.rint(norm * 255.0).astype(np.int32)]
  return np.rint((1.0 - alpha) * rgb + alpha * heat).astype(np.uint8)


class Outputs:
  """Writes one finished batch at a time into the staging folder; keeps O(1) per image.

  Per image it keeps only (path, map name, raw score). Map PNGs need the shared colour scale: with the
  run's `pixel_map_max` they are written at once; without it the batch's images (uint8) and maps
  (float16) are spooled to disk and drawn in `finish`, once the largest map value is known.
  """

  def __init__(
      self,
      staging: str,
      map_name: dict[str, str],
      score_range: tuple[float, float] | None,
      vmax: float | None,
      sigma: float,
      threshold: float | None,
  ):
    self.staging, self.map_name = staging, map_name
    self.score_range, self.vmax, self.sigma = score_range, vmax, sigma
    self.threshold = threshold
    self.paths: list[str] = []
    self.names: list[str] = []
    self.raw: list[float] = []
    self.flags: list[int | None] = []
    self.map_max = -np.inf  # largest finite map value so far (the fallback colour scale)
    self.spool: list[str] = []
    self.csv_path = os.path.join(staging, 'scores.csv')
    self._csv = open(self.csv_path, 'w', newline='')
    self._writer = csv.writer(self._csv)
    self._writer.writerow(CSV_COLUMNS)

  def scale(self, raw: np.ndarray) -> np.ndarray:
    """Raw -> reported scores with the run's test range (raw scores until the fallback rewrite)."""
    if self.score_range is None:
      return raw
    lo, hi = self.score_range
    return (raw - lo) / (hi - lo)

  def add(
      self, paths: list[str], images: list[np.ndarray], raw: np.ndarray, maps: np.ndarray
  ) -> None:
    """Writes one batch's CSV rows and map PNGs (or spools them until the colour scale is known)."""
    names = [self.map_name[p] for p in paths]
    maps = pixel_metrics.smooth_maps(maps, self.sigma)
    finite = maps[np.isfinite(maps)]
    if finite.size:
      self.map_max = max(self.map_max, float(finite.max()))
    # The run's operating point is on the raw score scale, like the threshold itself.
    flags = [None if self.threshold is None else int(r > self.threshold) for r in raw]
    self._writer.writerows(_csv_row(p, s, a) for p, s, a in zip(paths, self.scale(raw), flags))
    self._csv.flush()
    if self.vmax is not None:
      self._draw_batch(names, np.stack(images), maps, self.vmax)
    else:
      spool = os.path.join(self.staging, '.spool', f'{len(self.spool):06d}.npz')
      os.makedirs(os.path.dirname(spool), exist_ok=True)
      np.savez(spool, images=np.stack(images), maps=maps.astype(np.float16))
      self.spool.append(spool)
    self.paths.extend(paths)
    self.names.extend(names)
    self.raw.extend(float(r) for r in raw)
    self.flags.extend(flags)

  def _draw_batch(
      self, names: list[str], images: np.ndarray, maps: np.ndarray, vmax: float
  ) -> None:
    for name, overlay in zip(names, overlay_batch(images, maps, vmax)):
      _write_png(overlay, os.path.join(self.staging, 'maps', f'{name}.png'))

  def finish(self) -> tuple[np.ndarray, float]:
    """Draws spooled maps and rewrites the CSV if normalised over the scored images: (scores, vmax)."""
    self._csv.close()
    vmax = self.vmax
    if vmax is None:
      vmax = self.map_max if np.isfinite(self.map_max) and self.map_max > 0 else 1.0
      done = 0
      for spool in self.spool:
        with np.load(spool) as batch:
          images, maps = batch['images'], batch['maps'].astype(np.float32)
        self._draw_batch(self.names[done : done + len(images)], images, maps, vmax)
        done += len(images)
        os.remove(spool)
      shutil.rmtree(os.path.join(self.staging, '.spool'), ignore_errors=True)
    raw = np.asarray(self.raw, np.float64)
    if self.score_range is None:
      scores = metrics.normalise(raw)  # needs every score: rewrite the small CSV once
      _write_csv(
          self.csv_path, (_csv_row(p, s, a) for p, s, a in zip(self.paths, scores, self.flags))
      )
    else:
      scores = self.scale(raw)
    return scores, vmax

  def close(self) -> None:
    """Closes the CSV file (idempotent; `finish` closes it too)."""
    self._csv.close()


# What one call writes into OUT: an earlier call's result is these.
RESULT_NAMES = ('scores.csv', 'index.html', 'maps')
# Staging folders are named .infer-<pid>-<random>: a later call can tell one whose call died.
STAGING_PREFIX = '.infer-'


def earlier_result(out_dir: str) -> list[str]:
  """The names of RESULT_NAMES that `out_dir` already holds (an earlier call's result)."""
  return [n for n in RESULT_NAMES if os.path.lexists(os.path.join(out_dir, n))]


def remove_dead_staging(out_dir: str) -> None:
  """Removes staging folders of calls on this host that died without cleaning up (SIGKILL)."""
  if not os.path.isdir(out_dir):
    return
  for name in os.listdir(out_dir):
    if not name.startswith(STAGING_PREFIX):
      continue
    pid = name[len(STAGING_PREFIX) :].split('-', 1)[0]
    if pid.isdigit() and not rundir.pid_alive(int(pid)):
      shutil.rmtree(os.path.join(out_dir, name), ignore_errors=True)
      logging.info('Removed %s, left by an earlier call that was killed.', name)
