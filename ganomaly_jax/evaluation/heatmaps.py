"""Anomaly maps as pictures: uint8 [H, W, 3] arrays (a coloured heatmap, its overlay on the input
image, a grid of images and maps) that go straight to TensorBoard (`writer.write_images`) or PIL.

The figures that write PNGs are in plots.py. Float images are in [-1, 1] (the generator's tanh
range); uint8 images are in [0, 255].
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib
import numpy as np

# The colour map of every anomaly heatmap (the inference outputs' PNGs too).
DEFAULT_CMAP = 'jet'


def to_rgb_uint8(image: np.ndarray) -> np.ndarray:
  """Converts an image to uint8 [H, W, 3].

  Args:
    image: [H, W], [H, W, 1], [H, W, 3] or [H, W, 4] array; uint8 in [0, 255] or float in [-1, 1]
      (values outside are clipped). Grayscale is replicated to RGB; an alpha channel is dropped.

  Returns:
    uint8 array of shape [H, W, 3].
  """
  image = np.asarray(image)
  if image.ndim == 2:
    image = image[..., None]
  if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
    raise ValueError(f'expected an image of shape [H, W], [H, W, 1|3|4], got {image.shape}')
  if image.dtype != np.uint8:
    # Generator outputs are tanh in [-1, 1]; NaNs (a diverged run) become mid-gray rather than garbage.
    image = np.nan_to_num(image.astype(np.float32), nan=0.0, posinf=1.0, neginf=-1.0)
    image = np.round((np.clip(image, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)
  if image.shape[-1] == 1:
    image = np.repeat(image, 3, axis=-1)
  elif image.shape[-1] == 4:
    image = image[..., :3]
  return np.ascontiguousarray(image)


def anomaly_heatmap(
    amap: np.ndarray, vmin: float | None = None, vmax: float | None = None, cmap: str = DEFAULT_CMAP
) -> np.ndarray:
  """Colours an anomaly map.

  Args:
    amap: float [H, W] map (a trailing singleton channel is accepted); higher means more anomalous.
    vmin: value mapped to the bottom of the colormap; defaults to the map's finite minimum. Pass a
      fixed range to make maps of different images comparable.
    vmax: value mapped to the top of the colormap; defaults to the map's finite maximum.
    cmap: matplotlib colormap name.

  Returns:
    uint8 [H, W, 3]. A constant map (vmax <= vmin) is drawn at the bottom colour, and non-finite pixels
    are drawn at the bottom colour too, so a diverged model shows as "nothing" rather than crashing.
  """
  amap = np.asarray(amap, dtype=np.float32)
  if amap.ndim == 3 and amap.shape[-1] == 1:
    amap = amap[..., 0]
  if amap.ndim != 2:
    raise ValueError(f'expected an anomaly map of shape [H, W], got {amap.shape}')
  finite = np.isfinite(amap)
  if vmin is None:
    vmin = float(amap[finite].min()) if finite.any() else 0.0
  if vmax is None:
    vmax = float(amap[finite].max()) if finite.any() else 0.0
  if vmax > vmin:
    norm = (amap - vmin) / (vmax - vmin)
  else:
    norm = np.zeros_like(amap)
  norm = np.clip(np.where(finite, norm, 0.0), 0.0, 1.0)
  rgba = matplotlib.colormaps[cmap](norm)
  return np.round(rgba[..., :3] * 255.0).astype(np.uint8)


def overlay(
    image: np.ndarray,
    amap: np.ndarray,
    alpha: float = 0.5,
    vmin: float | None = None,
    vmax: float | None = None,
    cmap: str = DEFAULT_CMAP,
) -> np.ndarray:
  """Blends an anomaly heatmap over an image.

  Args:
    image: [H, W, C] (C in 1, 3, 4) or [H, W] image, float in [-1, 1] or uint8.
    amap: [H, W] anomaly map of the same spatial size.
    alpha: weight of the heatmap; 0 gives the image, 1 the heatmap.
    vmin: passed to `anomaly_heatmap`.
    vmax: passed to `anomaly_heatmap`.
    cmap: passed to `anomaly_heatmap`.

  Returns:
    uint8 [H, W, 3].
  """
  rgb = to_rgb_uint8(image).astype(np.float32)
  heat = anomaly_heatmap(amap, vmin=vmin, vmax=vmax, cmap=cmap).astype(np.float32)
  if rgb.shape[:2] != heat.shape[:2]:
    raise ValueError(f'image {rgb.shape[:2]} and anomaly map {heat.shape[:2]} differ in size')
  alpha = float(np.clip(alpha, 0.0, 1.0))
  return np.round((1.0 - alpha) * rgb + alpha * heat).astype(np.uint8)


def _cell_to_rgb(cell: np.ndarray) -> np.ndarray:
  """Grid cell -> uint8 RGB: 2-D float arrays are anomaly maps, everything else an image."""
  cell = np.asarray(cell)
  if cell.ndim == 2 and cell.dtype != np.uint8:
    return anomaly_heatmap(cell)
  return to_rgb_uint8(cell)


def image_grid(
    rows: Sequence[Sequence[np.ndarray]], pad: int = 2, pad_value: int = 255
) -> np.ndarray:
  """Tiles equal-size images into one picture, e.g. rows of (input | reconstruction | anomaly map).

  Args:
    rows: rows of cells. Each cell is an image ([H, W, 1|3|4], float in [-1, 1] or uint8, or a uint8
      [H, W] grayscale image) or a 2-D float anomaly map, which is coloured with `anomaly_heatmap`
      (normalised per map). All cells must share H and W. Short rows are filled with `pad_value`.
    pad: pixels of separator between cells and around the border.
    pad_value: grey level of the separator (white by default, so dark images stay distinguishable).

  Returns:
    uint8 [rows * H + (rows + 1) * pad, cols * W + (cols + 1) * pad, 3].

  Raises:
    ValueError: if there are no cells or the cells differ in size.
  """
  cells = [[_cell_to_rgb(c) for c in row] for row in rows]
  shapes = {c.shape[:2] for row in cells for c in row}
  if not shapes:
    raise ValueError('image_grid needs at least one image')
  if len(shapes) > 1:
    raise ValueError(f'image_grid needs equal-size images, got sizes {sorted(shapes)}')
  ((h, w),) = shapes
  pad = max(int(pad), 0)
  n_rows, n_cols = len(cells), max(len(row) for row in cells)
  grid = np.full(
      (n_rows * h + (n_rows + 1) * pad, n_cols * w + (n_cols + 1) * pad, 3),
      pad_value,
      dtype=np.uint8,
  )
  for r, row in enumerate(cells):
    for c, cell in enumerate(row):
      y, x = pad + r * (h + pad), pad + c * (w + pad)
      grid[y : y + h, x : x + w] = cell
  return grid
