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

`pixel_auroc` and `pixel_pro` are exact but sort all N*H*W pixels (about 40 bytes per pixel at once).
`PixelHistogram` computes both in one streaming pass with O(bins) memory, whatever the number of
images: it is exact for maps quantised to its bin grid (`max_value / bins` wide; 2**16 bins over the
[0, 2] range of |x - x̂| maps of [-1, 1] images: 3.1e-5), and differs from the exact figures only
through pixels whose scores fall in the same bin, which it ranks as ties. Its range is the bound of
the map in use (`losses.MAPS[eval.map].max_value`, passed by the evaluator), so no value is clipped.
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
# The default range: |x - x̂| averaged over channels, for images in [-1, 1], lies in [0, 2] (smoothing
# keeps it there). Other maps have other bounds: the evaluator passes the map's own.
MAP_MAX_VALUE = 2.0
DEFAULT_BINS = 2**16


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
  return scipy.ndimage.gaussian_filter(
      maps, sigma=(0.0,) + (float(sigma),) * (maps.ndim - 1)
  ).astype(np.float32)


def _stack(
    maps: Sequence[np.ndarray] | np.ndarray, masks: Sequence[np.ndarray] | np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
  maps = np.asarray(maps, np.float32)
  masks = np.asarray(masks)
  if maps.ndim == 2:
    maps, masks = maps[None], masks[None]
  if maps.shape != masks.shape or maps.ndim != 3:
    raise ValueError(f'maps {maps.shape} and masks {masks.shape} must both be [N, H, W]')
  return maps, masks > 0.5


def pixel_auroc(
    maps: Sequence[np.ndarray] | np.ndarray, masks: Sequence[np.ndarray] | np.ndarray
) -> float | None:
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


def pro_curve(
    maps: Sequence[np.ndarray] | np.ndarray, masks: Sequence[np.ndarray] | np.ndarray
) -> tuple[np.ndarray, np.ndarray] | None:
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


def pixel_pro(
    maps: Sequence[np.ndarray] | np.ndarray,
    masks: Sequence[np.ndarray] | np.ndarray,
    max_fpr: float = DEFAULT_MAX_FPR,
) -> float | None:
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


class PixelHistogram:
  """Streaming pixel AUROC and PRO over images added one at a time, in O(bins) memory.

  Per bin of the score it counts defect-free pixels, defect pixels and the PRO weight 1 / |R| of each
  defect pixel (R its connected region), which is all either curve needs: lowering the threshold past a
  bin adds its normal count to the false positives and its weight to the summed region overlap. Ties
  inside a bin count as ties, so both figures are exact for maps quantised to the bins (see the module
  docstring). Scores outside [0, max_value] are clipped into the end bins (counted in `clipped`).
  Histograms of several shards (processes) add up: `merge`.
  """

  def __init__(self, max_value: float = MAP_MAX_VALUE, bins: int = DEFAULT_BINS):
    if not max_value > 0 or bins < 2:
      raise ValueError(f'need max_value > 0 and bins >= 2, got {max_value}, {bins}')
    self.max_value, self.bins = float(max_value), int(bins)
    self.normal = np.zeros(self.bins, np.int64)
    self.defect = np.zeros(self.bins, np.int64)
    self.region_weight = np.zeros(self.bins, np.float64)
    self.num_regions = 0
    self.num_images = 0
    self.num_defect_images = 0
    self.clipped = 0
    self.finite = True

  def add(self, amap: np.ndarray, mask: np.ndarray) -> None:
    """Adds one image: map [H, W] (higher = more anomalous) and its mask [H, W] (1 = defect)."""
    amap = np.asarray(amap, np.float32)
    mask = np.asarray(mask) > 0.5
    if amap.shape != mask.shape or amap.ndim != 2:
      raise ValueError(f'map {amap.shape} and mask {mask.shape} must both be [H, W]')
    self.num_images += 1
    if not np.all(np.isfinite(amap)):
      self.finite = False  # a diverged model: the metrics are undefined, as for the exact functions
      return
    scaled = amap * (self.bins / self.max_value)
    self.clipped += int(np.count_nonzero((scaled < 0) | (scaled >= self.bins)))
    b = np.clip(scaled, 0, self.bins - 1).astype(np.int64)
    labelled, n = scipy.ndimage.label(mask, structure=_STRUCTURE)
    normal = labelled == 0
    self.normal += np.bincount(b[normal], minlength=self.bins)
    if n:
      self.num_defect_images += 1
      self.num_regions += int(n)
      self.defect += np.bincount(b[~normal], minlength=self.bins)
      sizes = np.bincount(labelled.ravel()).astype(np.float64)
      self.region_weight += np.bincount(
          b[~normal], weights=1.0 / sizes[labelled[~normal]], minlength=self.bins
      )

  def merge(self, other: 'PixelHistogram') -> None:
    """Adds another histogram of the same grid (another shard of the images)."""
    if (other.bins, other.max_value) != (self.bins, self.max_value):
      raise ValueError('histograms on different grids')
    self.normal += other.normal
    self.defect += other.defect
    self.region_weight += other.region_weight
    for key in ('num_regions', 'num_images', 'num_defect_images', 'clipped'):
      setattr(self, key, getattr(self, key) + getattr(other, key))
    self.finite = self.finite and other.finite

  def auroc(self) -> float | None:
    """Pixel AUROC (ties within a bin count half), or None where `pixel_auroc` gives None."""
    n_pos, n_neg = int(self.defect.sum()), int(self.normal.sum())
    if not self.finite or n_pos == 0 or n_neg == 0:
      return None
    below = np.cumsum(self.normal) - self.normal  # normal pixels in strictly lower bins
    pairs = np.sum(self.defect * (below + 0.5 * self.normal))
    return float(pairs / (float(n_pos) * float(n_neg)))

  def pro_curve(self) -> tuple[np.ndarray, np.ndarray] | None:
    """(fpr, pro) with one point per bin, thresholds from the top bin down; as `pro_curve`."""
    num_normal = int(self.normal.sum())
    if not self.finite or self.num_regions == 0 or num_normal == 0:
      return None
    fpr = np.cumsum(self.normal[::-1]) / num_normal
    pro = np.cumsum(self.region_weight[::-1]) / self.num_regions
    fpr, pro = np.clip(fpr, 0.0, 1.0), np.clip(pro, 0.0, 1.0)
    return np.concatenate([[0.0], fpr, [1.0]]), np.concatenate([[0.0], pro, [1.0]])

  def pro(self, max_fpr: float = DEFAULT_MAX_FPR) -> float | None:
    """Normalised area under the PRO curve for FPR in [0, max_fpr], as `pixel_pro`."""
    if not 0.0 < max_fpr <= 1.0:
      raise ValueError(f'max_fpr must be in (0, 1], got {max_fpr}')
    curve = self.pro_curve()
    if curve is None:
      return None
    return integrate_to(*curve, max_fpr) / max_fpr

  def state(self) -> dict[str, np.ndarray]:
    """The counts as arrays (for an all-gather between processes); `from_state` rebuilds."""
    scalars = np.asarray(
        [self.num_regions, self.num_images, self.num_defect_images, self.clipped, int(self.finite)],
        np.int64,
    )
    return {
        'normal': self.normal,
        'defect': self.defect,
        'region_weight': self.region_weight,
        'scalars': scalars,
    }

  @classmethod
  def from_state(
      cls, state: dict[str, np.ndarray], max_value: float = MAP_MAX_VALUE
  ) -> 'PixelHistogram':
    hist = cls(max_value, len(state['normal']))
    hist.normal = np.asarray(state['normal'], np.int64).copy()
    hist.defect = np.asarray(state['defect'], np.int64).copy()
    hist.region_weight = np.asarray(state['region_weight'], np.float64).copy()
    hist.num_regions, hist.num_images, hist.num_defect_images, hist.clipped, finite = (
        int(v) for v in state['scalars']
    )
    hist.finite = bool(finite)
    return hist
