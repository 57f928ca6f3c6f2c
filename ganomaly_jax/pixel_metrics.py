"""Pixel-level anomaly metrics: map smoothing, pixel AUROC and PRO (per-region overlap).

Conventions: an anomaly map is float [H, W] (higher = more anomalous); a ground-truth mask is [H, W]
in {0, 1} (1 = defect pixel). Metrics take stacks of maps and masks of the images whose mask is known;
a normal image's mask is all zeros.

PRO follows the MVTec AD evaluation code (Bergmann et al., "The MVTec Anomaly Detection Dataset",
IJCV 2021): for every threshold t, each connected ground-truth region R (8-connectivity) has overlap
|R ∩ {map >= t}| / |R|; PRO(t) is the mean overlap over all regions of all images, and FPR(t) the
fraction of defect-free pixels at or above t. The PRO-vs-FPR curve is integrated over FPR in
[0, max_fpr] (0.3 by default) and divided by max_fpr, so a perfect map scores 1 and a map that ranks
every normal pixel above every defect pixel scores 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.ndimage
from sklearn import metrics as sk_metrics

DEFAULT_MAX_FPR = 0.3
# MVTec AD's reference code labels regions with a full 3x3 structuring element (8-connectivity):
# pixels that touch diagonally belong to the same defect.
_STRUCTURE = np.ones((3, 3), dtype=int)


def smooth_maps(maps: np.ndarray, sigma: float) -> np.ndarray:
  """Gaussian-smooths each anomaly map on its own (never across the batch axis).

  Args:
    maps: float [N, H, W] (or a single [H, W]) anomaly maps.
    sigma: standard deviation in pixels; <= 0 returns the maps unchanged (as float32).

  Returns:
    float32 maps of the input shape.
  """
  maps = np.asarray(maps, np.float32)
  if sigma <= 0:
    return maps
  if maps.ndim == 2:
    return scipy.ndimage.gaussian_filter(maps, sigma=float(sigma)).astype(np.float32)
  # sigma 0 on the batch axis: one filter per map, so neighbouring images never bleed into each other.
  return scipy.ndimage.gaussian_filter(maps, sigma=(0.0,) + (float(sigma),) * (maps.ndim - 1)
                                       ).astype(np.float32)


def _stack(maps: Sequence[np.ndarray] | np.ndarray,
           masks: Sequence[np.ndarray] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  maps = np.asarray(maps, np.float32)
  masks = np.asarray(masks)
  if maps.ndim == 2:
    maps, masks = maps[None], masks[None]
  if maps.shape != masks.shape or maps.ndim != 3:
    raise ValueError(f'maps {maps.shape} and masks {masks.shape} must both be [N, H, W]')
  return maps, masks > 0.5


def pixel_auroc(maps: Sequence[np.ndarray] | np.ndarray,
                masks: Sequence[np.ndarray] | np.ndarray) -> float | None:
  """AUROC over all pixels of all given images (defect pixels positive).

  Returns:
    The AUROC, or None when the pixels hold a single class (no defect pixel, or no normal pixel) or
    a map is not finite (a diverged model), since sklearn would reject them.
  """
  maps, masks = _stack(maps, masks)
  n_pos = int(masks.sum())
  if n_pos == 0 or n_pos == masks.size or not np.all(np.isfinite(maps)):
    return None
  return float(sk_metrics.roc_auc_score(masks.ravel(), maps.ravel()))


def pro_curve(maps: Sequence[np.ndarray] | np.ndarray,
              masks: Sequence[np.ndarray] | np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
  """The PRO-vs-FPR curve at every distinct threshold (MVTec AD's exact, sort-based computation).

  Instead of looping over thresholds, pixels are sorted by decreasing score once: lowering the
  threshold past a defect-free pixel adds 1/num_normal_pixels to the FPR, and past a pixel of region
  R adds 1/(|R| * num_regions) to the PRO. Only the last pixel of each run of equal scores is kept,
  because a threshold cannot separate tied pixels.

  Returns:
    (fpr, pro), both ascending, starting at (0, 0) and ending at (1, 1); None when there is no
    defect region or no defect-free pixel.
  """
  maps, masks = _stack(maps, masks)
  fp_change = np.zeros(maps.shape, np.float64)
  pro_change = np.zeros(maps.shape, np.float64)
  num_normal, num_regions = 0, 0
  for i, mask in enumerate(masks):
    labelled, n = scipy.ndimage.label(mask, structure=_STRUCTURE)
    normal = labelled == 0
    num_normal += int(normal.sum())
    num_regions += int(n)
    fp_change[i][normal] = 1.0
    if n:
      sizes = np.bincount(labelled.ravel(), minlength=n + 1).astype(np.float64)
      pro_change[i][~normal] = 1.0 / sizes[labelled[~normal]]
  if num_regions == 0 or num_normal == 0:
    return None
  scores = maps.ravel()
  order = np.argsort(-scores, kind='stable')
  scores = scores[order]
  fpr = np.cumsum(fp_change.ravel()[order]) / num_normal
  pro = np.cumsum(pro_change.ravel()[order]) / num_regions
  keep = np.append(scores[1:] != scores[:-1], True)
  fpr, pro = np.clip(fpr[keep], 0.0, 1.0), np.clip(pro[keep], 0.0, 1.0)
  return np.concatenate([[0.0], fpr, [1.0]]), np.concatenate([[0.0], pro, [1.0]])


def integrate_to(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
  """Trapezoidal area under y(x) for x in [0, x_max]; x ascending, y interpolated at x_max.

  A vertical step (repeated x) adds no area of its own, so step curves integrate exactly.
  """
  x = np.asarray(x, np.float64)
  y = np.asarray(y, np.float64)
  inside = x <= x_max
  xs, ys = x[inside], y[inside]
  area = float(np.sum(0.5 * (ys[1:] + ys[:-1]) * np.diff(xs)))
  if xs[-1] < x_max:
    # The curve crosses x_max between the last point inside and the first one beyond: close the area
    # with the linearly interpolated value there.
    nxt = int(np.searchsorted(x, x_max, side='right'))
    x0, y0, x1, y1 = xs[-1], ys[-1], x[nxt], y[nxt]
    y_at = y0 + (y1 - y0) * (x_max - x0) / (x1 - x0)
    area += 0.5 * (y0 + y_at) * (x_max - x0)
  return area


def pixel_pro(maps: Sequence[np.ndarray] | np.ndarray,
              masks: Sequence[np.ndarray] | np.ndarray,
              max_fpr: float = DEFAULT_MAX_FPR) -> float | None:
  """Normalised area under the PRO curve for FPR in [0, max_fpr] (1 = perfect, ~0 = inverted).

  Returns:
    The normalised area, or None when undefined (no defect region, no defect-free pixel, or
    non-finite maps).
  """
  if not 0.0 < max_fpr <= 1.0:
    raise ValueError(f'max_fpr must be in (0, 1], got {max_fpr}')
  maps, masks = _stack(maps, masks)
  if not np.all(np.isfinite(maps)):
    return None
  curve = pro_curve(maps, masks)
  if curve is None:
    return None
  fpr, pro = curve
  return integrate_to(fpr, pro, max_fpr) / max_fpr
