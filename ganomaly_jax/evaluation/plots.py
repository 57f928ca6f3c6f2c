"""Figures of anomaly-detection results: loss curves, ROC / PR, score histograms, extremes, bars.

Researchers judge an anomaly detector by looking at it, so every evaluation writes a few figures next
to its numbers. Each `plot_*` writes one PNG and returns its path. The uint8 picture arrays
(`anomaly_heatmap`, `overlay`, `image_grid`) that go straight to TensorBoard are in heatmaps.py.

Figures are built with the object-oriented `Figure` + `FigureCanvasAgg` API rather than pyplot: pyplot
keeps a global registry of open figures (a leak in a long training loop) and may pick an interactive
backend on a workstation, while a bare `Figure` needs neither a display nor global state.

Conventions: label 1 means abnormal, 0 normal; a higher score means more anomalous. Float images are
in [-1, 1] (the generator's tanh range); uint8 images are in [0, 255]. Every function tolerates the
degenerate inputs an early or broken run produces (one class only, constant or non-finite scores, fewer
images than asked for, empty histories) and draws a note instead of raising.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

# epath: figures may go to a gs:// run directory as well as a local one.
from etils.epath import Path
import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn import metrics as sk_metrics

from ganomaly_jax.evaluation import heatmaps

PathLike = str | os.PathLike

ONE_CLASS_NOTE = 'undefined (one class)'
NO_DATA_NOTE = 'no data'
_DPI = 100


def _new_figure(width: float, height: float) -> Figure:
  fig = Figure(figsize=(width, height), dpi=_DPI)
  FigureCanvasAgg(fig)  # Attaches itself as fig.canvas; no pyplot, no global figure registry.
  return fig


def _save(fig: Figure, path: PathLike) -> Path:
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with path.open('wb') as f:  # a file object: matplotlib itself only writes local paths
    fig.savefig(f, format='png', dpi=_DPI)
  return path


def _note(ax, text: str) -> None:
  """Writes a centred note in an empty panel (used for degenerate inputs instead of raising)."""
  ax.text(
      0.5, 0.5, text, ha='center', va='center', transform=ax.transAxes, fontsize=12, color='0.3'
  )
  ax.set_xticks([])
  ax.set_yticks([])


def _labels_scores(
    labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray
) -> tuple[np.ndarray, np.ndarray, int]:
  """Flattens labels/scores to bool/float arrays and drops non-finite scores (returns how many)."""
  labels = np.asarray(labels).reshape(-1)
  scores = np.asarray(scores, dtype=np.float64).reshape(-1)
  if labels.shape != scores.shape:
    raise ValueError(f'labels {labels.shape} and scores {scores.shape} differ in length')
  finite = np.isfinite(scores)
  return labels[finite].astype(bool), scores[finite], int((~finite).sum())


# What each logged series is, so that unlike quantities never share an axis: losses, D's output
# probabilities (0..1) and per-step 0/1 event flags each get their own panel.
PROBABILITIES = {'d_real': 'D(x): real images', 'd_fake': 'D(x̂): reconstructions'}
EVENTS = {'nonfinite': 'step skipped (non-finite)', 'd_reinit': 'D re-initialised'}
# Generator terms, each in its own panel: the weighted total (w_con = 50) dwarfs them on one axis.
GENERATOR_TERMS = {
    'g_loss': 'L_G, weighted total (eq. 3.1)',
    'g_adv': 'L_adv, adversarial (eq. 3.2, 3.6, 3.7)',
    'g_con': 'L_con = mean|x − x̂| (eq. 3.3)',
    'g_lat': 'L_enc, latent / feature (eq. 3.4)',
}


def _loss_panels(
    history: Mapping[str, Sequence[tuple[int, float]]],
) -> list[tuple[str, list[str], str]]:
  """[(title, series names, kind)] with kind 'loss', 'probability' or 'event'; empty series dropped."""
  names = [n for n in sorted(history) if len(list(history[n]))]
  g_terms = [n for n in GENERATOR_TERMS if n in names]
  g_terms += [n for n in names if n.startswith('g_') and n not in GENERATOR_TERMS]
  panels = [
      (f'G: {n}, {GENERATOR_TERMS[n]}' if n in GENERATOR_TERMS else f'G: {n}', [n], 'loss')
      for n in g_terms
  ]
  d_losses = [n for n in names if n.startswith('d_') and n not in PROBABILITIES and n not in EVENTS]
  if d_losses:
    panels.append(('D: loss L_D (eq. 3.5, 3.8)', d_losses, 'loss'))
  probabilities = [n for n in PROBABILITIES if n in names]
  if probabilities:
    panels.append(('D: mean output probability', probabilities, 'probability'))
  events = [n for n in EVENTS if n in names]
  if events:
    panels.append(('Events at logged steps (1 = happened)', events, 'event'))
  other = [n for n in names if n not in g_terms + d_losses + probabilities + events]
  if other:
    panels.append(('Other logged values', other, 'loss'))
  return panels


def loss_curves_figure(history: Mapping[str, Sequence[tuple[int, float]]]) -> Figure:
  """The figure of `plot_loss_curves`; each line's gid is its series name (for tests, notebooks)."""
  panels = _loss_panels(history)
  ncols = min(3, max(len(panels), 1))
  nrows = max(1, -(-len(panels) // ncols))
  fig = _new_figure(5.2 * ncols, 3.4 * nrows)
  axes = np.atleast_1d(fig.subplots(nrows, ncols)).reshape(-1)
  if not panels:
    axes[0].set_title('Training curves')
    _note(axes[0], NO_DATA_NOTE)
  for ax, (title, names, kind) in zip(axes, panels):
    for name in names:
      points = list(history[name])
      steps, values = zip(*points)
      values = np.asarray(values, dtype=np.float64)
      if kind == 'event':
        hits = int(np.nansum(values > 0))
        ax.plot(
            np.asarray(steps),
            values,
            label=f'{name}: {EVENTS[name]} ({hits})',
            drawstyle='steps-post',
            linewidth=1.2,
            gid=name,
        )
        continue
      label = PROBABILITIES.get(name, name) if kind == 'probability' else name
      # A lone point (e.g. a loss logged once) is invisible as a line, so give short series markers.
      ax.plot(
          np.asarray(steps),
          values,
          label=label,
          linewidth=1.2,
          gid=name,
          marker='o' if len(points) < 3 else None,
          markersize=4,
      )
    ax.set_title(title, fontsize=10)
    ax.set_xlabel('step')
    ax.grid(alpha=0.3)
    if kind == 'probability':
      ax.set_ylim(-0.02, 1.02)
      ax.set_ylabel('probability')
    elif kind == 'event':
      ax.set_ylim(-0.1, 1.6)  # headroom for the legend above the flags
      ax.set_yticks([0, 1])
      ax.set_ylabel('flag')
    else:
      ax.set_ylabel('loss')
    if len(names) > 1 or kind != 'loss':
      ax.legend(fontsize=8, loc='upper right')
  for ax in axes[len(panels) if panels else 1 :]:
    ax.set_axis_off()
  fig.tight_layout()
  return fig


def plot_loss_curves(history: Mapping[str, Sequence[tuple[int, float]]], path: PathLike) -> Path:
  """Plots the training curves, one kind of quantity per panel.

  Args:
    history: series name -> [(step, value), ...], as the training loop logs them. Each generator
      term ('g_loss', 'g_adv', 'g_con', 'g_lat', any other 'g_*') gets its own panel, since the
      weighted total is ~50x the terms; the discriminator loss ('d_loss', other 'd_*') one panel; D's
      output probabilities ('d_real', 'd_fake') a 0..1 panel; the 0/1 event flags ('nonfinite',
      'd_reinit') a flag panel; anything else (e.g. 'lr') an "other" panel. Empty series are ignored
      and NaNs show as gaps.
    path: PNG to write; parent directories are created.

  Returns:
    The path written.
  """
  return _save(loss_curves_figure(history), path)


def plot_roc_pr(
    labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray, path: PathLike
) -> Path:
  """Plots the ROC and precision-recall curves side by side, with AUROC and AP in the legends.

  Args:
    labels: 1 for abnormal, 0 for normal.
    scores: anomaly scores, higher = more anomalous. Non-finite scores are dropped (and counted in the
      title) because sklearn rejects them.
    path: PNG to write.

  Returns:
    The path written. With a single class both curves are undefined and each panel says so.
  """
  labels, scores, n_dropped = _labels_scores(labels, scores)
  fig = _new_figure(11, 5)
  ax_roc, ax_pr = fig.subplots(1, 2)
  n_pos = int(labels.sum())
  n_neg = int(labels.size - n_pos)
  if labels.size == 0:
    _note(ax_roc, NO_DATA_NOTE)
    _note(ax_pr, NO_DATA_NOTE)
  elif n_pos == 0 or n_neg == 0:
    # AUROC needs both classes; AP with no positives is meaningless too, so do not draw a fake curve.
    _note(ax_roc, ONE_CLASS_NOTE)
    _note(ax_pr, ONE_CLASS_NOTE)
  else:
    fpr, tpr, _ = sk_metrics.roc_curve(labels, scores)
    auroc = sk_metrics.roc_auc_score(labels, scores)
    ax_roc.plot(fpr, tpr, linewidth=1.5, label=f'AUROC = {auroc:.4f}')
    ax_roc.plot([0, 1], [0, 1], linestyle='--', color='0.6', linewidth=1, label='chance')
    ax_roc.set_xlabel('false positive rate')
    ax_roc.set_ylabel('true positive rate')
    precision, recall, _ = sk_metrics.precision_recall_curve(labels, scores)
    ap = sk_metrics.average_precision_score(labels, scores)
    ax_pr.step(recall, precision, where='post', linewidth=1.5, label=f'AP = {ap:.4f}')
    # A random detector's precision is the abnormal fraction; show it as the PR baseline.
    ax_pr.axhline(n_pos / labels.size, linestyle='--', color='0.6', linewidth=1, label='chance')
    ax_pr.set_xlabel('recall')
    ax_pr.set_ylabel('precision')
    for ax in (ax_roc, ax_pr):
      ax.set_xlim(-0.01, 1.01)
      ax.set_ylim(-0.01, 1.01)
      ax.grid(alpha=0.3)
      ax.legend(loc='lower right' if ax is ax_roc else 'lower left', fontsize=9)
  ax_roc.set_title('ROC')
  ax_pr.set_title('Precision-recall')
  suptitle = f'{n_neg} normal, {n_pos} abnormal'
  if n_dropped:
    suptitle += f' ({n_dropped} non-finite scores dropped)'
  fig.suptitle(suptitle, fontsize=10)
  fig.tight_layout()
  return _save(fig, path)


def plot_score_histogram(
    labels: Sequence[int] | np.ndarray,
    scores: Sequence[float] | np.ndarray,
    path: PathLike,
    bins: int = 50,
) -> Path:
  """Plots overlapping score histograms of normal and abnormal samples on shared bins.

  Args:
    labels: 1 for abnormal, 0 for normal.
    scores: anomaly scores; non-finite ones are dropped and counted in the title.
    path: PNG to write.
    bins: number of bins (fewer when there are few samples).

  Returns:
    The path written.
  """
  labels, scores, n_dropped = _labels_scores(labels, scores)
  fig = _new_figure(7, 4.5)
  ax = fig.subplots()
  if scores.size == 0:
    _note(ax, NO_DATA_NOTE)
  else:
    # Shared edges so the two classes are comparable bar for bar; numpy widens a zero-width range
    # (constant scores) by itself.
    n_bins = int(np.clip(min(bins, scores.size), 1, None))
    edges = np.histogram_bin_edges(scores, bins=n_bins)
    for mask, name, color in ((~labels, 'normal', 'tab:blue'), (labels, 'abnormal', 'tab:red')):
      if mask.any():
        ax.hist(
            scores[mask], bins=edges, alpha=0.5, color=color, label=f'{name} (n={int(mask.sum())})'
        )
    ax.set_xlabel('anomaly score')
    ax.set_ylabel('count')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
  title = 'Anomaly scores'
  if n_dropped:
    title += f' ({n_dropped} non-finite dropped)'
  ax.set_title(title)
  fig.tight_layout()
  return _save(fig, path)


def extreme_indices(scores: np.ndarray, k: int) -> tuple[list[int], list[int]]:
  """Indices of the k highest and k lowest scores, without showing any image twice.

  Non-finite scores sort below every finite one so a NaN never passes for "most anomalous".
  """
  key = np.where(np.isfinite(scores), scores, -np.inf)
  order = [int(i) for i in np.argsort(-key, kind='stable')]
  top = order[:k]
  rest = order[len(top) :]
  bottom = rest[::-1][:k]
  return top, bottom


def plot_extremes(
    images: Sequence[np.ndarray] | np.ndarray,
    amaps: Sequence[np.ndarray] | np.ndarray | None,
    scores: Sequence[float] | np.ndarray,
    labels: Sequence[int] | np.ndarray | None,
    path: PathLike,
    k: int = 8,
) -> Path:
  """Shows the k most and k least anomalous images, each above its anomaly-map overlay.

  Args:
    images: N images ([H, W, C] or [H, W], float in [-1, 1] or uint8).
    amaps: N anomaly maps [H, W], or None to show the images only. Each map is normalised on its own.
    scores: N anomaly scores, higher = more anomalous.
    labels: N labels (1 abnormal, 0 normal), or None if unknown.
    path: PNG to write.
    k: images per group. With fewer than 2k images the least-anomalous group shows only the images
      not already in the most-anomalous group.

  Returns:
    The path written.
  """
  scores = np.asarray(scores, dtype=np.float64).reshape(-1)
  n = len(images)
  if (
      len(scores) != n
      or (amaps is not None and len(amaps) != n)
      or (labels is not None and len(labels) != n)
  ):
    raise ValueError('images, amaps, scores and labels must have the same length')
  k = max(int(k), 1)
  top, bottom = extreme_indices(scores, k)
  groups = [('most anomalous', top), ('least anomalous', bottom)]
  rows_per_group = 1 if amaps is None else 2
  n_cols = max(len(top), 1)
  fig = _new_figure(max(1.7 * n_cols, 4.0), 1.9 * rows_per_group * 2 + 0.6)
  subfigs = fig.subfigures(2, 1)
  for subfig, (group_name, indices) in zip(subfigs, groups):
    subfig.suptitle(f'{group_name} ({len(indices)})', fontsize=11, fontweight='bold')
    axes = np.asarray(subfig.subplots(rows_per_group, n_cols, squeeze=False))
    for ax in axes.flat:
      ax.set_axis_off()
    if not indices:
      _note(axes[0, 0], 'no images' if n == 0 else 'no further images')
      continue
    for col, idx in enumerate(indices):
      image = heatmaps.to_rgb_uint8(images[idx])
      title = f'{scores[idx]:.4g}'
      if labels is not None:
        title += ' | ' + ('abnormal' if int(labels[idx]) else 'normal')
      axes[0, col].imshow(image, interpolation='nearest')
      axes[0, col].set_title(title, fontsize=8)
      if amaps is not None:
        axes[1, col].imshow(heatmaps.overlay(images[idx], amaps[idx]), interpolation='nearest')
  return _save(fig, path)


def plot_grouped_bars(
    groups: Sequence[str],
    series: Sequence[str],
    means: np.ndarray,
    stds: np.ndarray,
    path: PathLike,
    *,
    title: str = '',
    ylabel: str = '',
    chance: float | None = None,
) -> Path:
  """Grouped bar chart: one group per entry of `groups` (e.g. classes), one bar per `series`
  (e.g. methods) with a ±std error bar; `means`/`stds` are [len(series), len(groups)], NaN for a
  missing bar. `chance` draws a dashed reference line (0.5 for AUROC)."""
  means = np.asarray(means, np.float64)
  stds = np.nan_to_num(np.asarray(stds, np.float64))
  fig = _new_figure(max(6.0, 2.5 + 0.22 * len(series) * len(groups)), 4.2)
  fig.set_layout_engine('constrained')  # makes room for the legend outside the axes
  ax = fig.add_subplot(1, 1, 1)
  if means.size == 0 or not np.isfinite(means).any():
    _note(ax, NO_DATA_NOTE)
    return _save(fig, path)
  width = 0.8 / max(len(series), 1)
  x = np.arange(len(groups))
  cmap = matplotlib.colormaps['tab20' if len(series) > 10 else 'tab10']
  for i, name in enumerate(series):
    ax.bar(
        x + (i - (len(series) - 1) / 2) * width,
        np.nan_to_num(means[i]),
        width,
        yerr=stds[i],
        label=name,
        color=cmap(i % cmap.N),
        capsize=2,
        error_kw={'lw': 0.8},
    )
  if chance is not None:
    ax.axhline(chance, color='0.4', lw=0.8, ls='--')
  low = np.nanmin(means - stds)
  ax.set_ylim(max(0.0, min(low, chance if chance is not None else low) - 0.05), 1.0)
  ax.set_xticks(x, [str(g) for g in groups])
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  fig.legend(fontsize=7, loc='outside right upper')
  return _save(fig, path)
