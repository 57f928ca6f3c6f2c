"""Benchmark tables: `results.csv` (one row per run), `results.md` (per class, mean ± std over
seeds, the best mean of each column in bold, and the read-out each method used) and `results.png`
(per-class mean image AUROC per method).

The metric columns follow the sweep table's (`sweep.METRICS`) plus the pixel metrics, so a metric
renamed or added there appears here too; a column no run of the suite reports is left out of the
Markdown, and a method without a value in a column (k-NN has no pixel map) shows `n/a`.
"""

from __future__ import annotations

import csv
import io
from typing import Any, Sequence

import numpy as np

from ganomaly_jax.runtime import rundir
from ganomaly_jax.evaluation import plots
from ganomaly_jax.experiments import sweep

RESULTS_CSV = sweep.RESULTS_CSV
RESULTS_MD = sweep.RESULTS_MD
RESULTS_PNG = 'results.png'
# `reference_image_auroc`: the official code's read-out of the same run (eval.protocol=reference:
# test-batch BatchNorm, the best epoch chosen on the test set); shown as REFERENCE_LABEL.
REFERENCE = 'reference_image_auroc'
REFERENCE_LABEL = 'reference (test-selected)'
METRICS = tuple(dict.fromkeys(sweep.METRICS + ('pixel_auroc', 'pixel_pro', REFERENCE)))
# Rows of published values (experiments/published.py) carry this status: not a run, but shown.
PUBLISHED = 'published'
_SHOWN = ('done', 'skipped', PUBLISHED)
COLUMNS = (
    ('suite', 'method', 'class', 'seed', 'status')
    + METRICS
    + ('steps', 'readout', 'wall_time_s', 'commit', 'workdir')
)
PLOT_METRIC = 'image_auroc'
# Columns where smaller is better (false alarms); every other metric is better when larger.
LOWER_IS_BETTER = frozenset({'image_fpr'})


def readout_label(results: dict[str, Any]) -> str | None:
  """`score/map`: the read-out a run's test pass used (results.json `readout`, whether published or
  chosen by eval.readout=auto); the score alone for runs from before it was recorded; None for
  baselines."""
  record = results.get('readout')
  if isinstance(record, dict) and record.get('score'):
    return f'{record["score"]}/{record["map"]}'
  return results.get('score') or None


def _readouts(rows: Sequence[dict[str, Any]]) -> dict[tuple[str, str], dict[str, int]]:
  """(class, method) and ('', method) -> read-out label -> finished runs that used it."""
  counts: dict[tuple[str, str], dict[str, int]] = {}
  for row in rows:
    label = row.get('readout')
    if not label or str(row.get('status', 'done')) not in _SHOWN:
      continue
    for key in ((str(row['class']), str(row['method'])), ('', str(row['method']))):
      per = counts.setdefault(key, {})
      per[str(label)] = per.get(str(label), 0) + 1
  return counts


def _readout_text(counts: dict[str, int] | None) -> str:
  """'map_max/riad' when every run used it, else 'a/l1 ×2, b/l1 ×1' (most used first)."""
  if not counts:
    return 'n/a'
  if len(counts) == 1:
    return next(iter(counts))
  return ', '.join(f'{k} ×{n}' for k, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def write_csv(root: str, rows: Sequence[dict[str, Any]]) -> None:
  """ROOT/results.csv, one row per run (empty cells for missing values), written atomically."""
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, fieldnames=COLUMNS, extrasaction='ignore')
  writer.writeheader()
  writer.writerows({k: '' if row.get(k) is None else row.get(k) for k in COLUMNS} for row in rows)
  rundir.write_text(rundir.path(root, RESULTS_CSV), buffer.getvalue())


def read_csv(root: str) -> list[dict[str, str]]:
  return list(csv.DictReader(io.StringIO(rundir.path(root, RESULTS_CSV).read_text())))


def _number(value: Any) -> float | None:
  if value is None or value == '':
    return None
  try:
    value = float(value)
  except (TypeError, ValueError):
    return None
  return value if np.isfinite(value) else None


def summarise(
    rows: Sequence[dict[str, Any]], columns: Sequence[str] = METRICS + ('wall_time_s',)
) -> dict[str, dict[str, dict[str, tuple[float, float, int]]]]:
  """class -> method -> column -> (mean, std, n) over the seeds that finished (std: sample std,
  ddof=1, 0 for a single seed). Classes and methods keep their first-seen order."""
  values: dict[str, dict[str, dict[str, list[float]]]] = {}
  for row in rows:
    per_method = values.setdefault(str(row['class']), {}).setdefault(str(row['method']), {})
    for column in columns:
      per_method.setdefault(column, [])
      if str(row.get('status', 'done')) in _SHOWN:
        number = _number(row.get(column))
        if number is not None:
          per_method[column].append(number)
  return {
      cls: {
          method: {
              c: (float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, len(v))
              for c, v in cols.items()
              if v
          }
          for method, cols in methods.items()
      }
      for cls, methods in values.items()
  }


def _overall(
    rows: Sequence[dict[str, Any]], summary
) -> dict[str, dict[str, tuple[float, float, int]]]:
  """method -> column -> (mean over classes of the per-class means, std over seeds of the mean over
  classes, classes): the spread a rerun with other seeds would show, not the classes' difficulty."""
  by_method: dict[str, dict[str, list[float]]] = {}
  for methods in summary.values():
    for method, cols in methods.items():
      for column, (mean, _, _) in cols.items():
        by_method.setdefault(method, {}).setdefault(column, []).append(mean)
  per_seed: dict[tuple[str, str], dict[str, list[float]]] = {}
  for row in rows:
    if str(row.get('status', 'done')) not in _SHOWN:
      continue
    for column in by_method.get(str(row['method']), {}):
      number = _number(row.get(column))
      if number is not None:
        per_seed.setdefault((str(row['method']), column), {}).setdefault(
            str(row.get('seed')), []
        ).append(number)

  def seed_std(method: str, column: str) -> float:
    means = [np.mean(v) for v in per_seed.get((method, column), {}).values()]
    return float(np.std(means, ddof=1)) if len(means) > 1 else 0.0

  return {
      m: {c: (float(np.mean(v)), seed_std(m, c), len(v)) for c, v in cols.items()}
      for m, cols in by_method.items()
  }


INVERSION_MARK = '†'


def _inverted(metric: str, value: float | None) -> bool:
  """An AUROC below chance: the abnormal images were ranked *more* normal than the normals."""
  return value is not None and 'auroc' in metric and value < 0.5


def _by_class(summary, all_methods: Sequence[str], metric: str) -> list[str]:
  """Markdown rows: one per method, its mean `metric` over seeds for each class, best in bold."""
  classes = list(summary)
  head = ['method', *classes, 'mean']
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '|'.join('---' for _ in head) + '|']
  table = {m: [summary[c].get(m, {}).get(metric, (None,))[0] for c in classes] for m in all_methods}
  table = {
      m: v + [float(np.mean(v)) if all(x is not None for x in v) else None]
      for m, v in table.items()
      if any(x is not None for x in v)
  }
  pick = min if metric in LOWER_IS_BETTER else max
  best = [
      pick((v[j] for v in table.values() if v[j] is not None), default=None)
      for j in range(len(classes) + 1)
  ]
  for method, values in table.items():
    cells = [method]
    for value, top in zip(values, best):
      text = 'n/a' if value is None else f'{value:.3f}'
      text += INVERSION_MARK if _inverted(metric, value) else ''
      cells.append(
          f'**{text}**' if value is not None and round(value, 3) == round(top, 3) else text
      )
    lines.append('| ' + ' | '.join(cells) + ' |')
  return lines


def _table(
    methods: dict[str, dict[str, tuple[float, float, int]]],
    all_methods: Sequence[str],
    metrics: Sequence[str],
    count_label: str,
    readouts: dict[str, dict[str, int]] | None = None,
) -> list[str]:
  """Markdown rows: one per method, `mean ± std` per metric, the best mean per metric in bold;
  with `readouts` (method -> read-out -> runs) a last column says which read-out the runs used."""
  best = {}
  for metric in metrics:
    means = [cols[metric][0] for cols in methods.values() if metric in cols]
    pick = min if metric in LOWER_IS_BETTER else max
    best[metric] = pick(means) if means else None
  head = [
      'method',
      count_label,
      *(REFERENCE_LABEL if m == REFERENCE else m for m in metrics),
      'wall_time_s',
  ] + (['readout'] if readouts else [])
  lines = ['| ' + ' | '.join(head) + ' |', '|' + '|'.join('---' for _ in head) + '|']
  for method in all_methods:
    cols = methods.get(method, {})
    runs = max((n for _, _, n in cols.values()), default=0)
    cells = [method, str(runs)]
    for metric in metrics:
      if metric not in cols:
        cells.append('n/a')
        continue
      mean, std, _ = cols[metric]
      text = f'{mean:.4f} ± {std:.4f}' + (INVERSION_MARK if _inverted(metric, mean) else '')
      # Bold every method whose mean rounds to the best: a tie is a tie.
      cells.append(f'**{text}**' if round(mean, 4) == round(best[metric], 4) else text)
    wall = cols.get('wall_time_s')
    cells.append(f'{wall[0]:.1f}' if wall else 'n/a')
    if readouts:
      cells.append(_readout_text(readouts.get(method)))
    lines.append('| ' + ' | '.join(cells) + ' |')
  return lines


def markdown(rows: Sequence[dict[str, Any]], title: str, notes: Sequence[str] = ()) -> str:
  """The per-class tables and the all-class summary as Markdown."""
  summary = summarise(rows)
  methods = list(dict.fromkeys(str(r['method']) for r in rows))
  metrics = [
      m for m in METRICS if any(m in cols for ms in summary.values() for cols in ms.values())
  ]
  used = _readouts(rows)

  def readouts(cls: str) -> dict[str, dict[str, int]] | None:
    per = {m: used[(cls, m)] for m in methods if (cls, m) in used}
    return per or None

  lines = [f'# {title}', '', *notes]
  if notes:
    lines.append('')
  lines += [
      'Mean ± std over seeds (sample std); the best mean of each column in **bold** (the '
      'smallest for image_fpr, the largest elsewhere); `n/a`: the method gives no such value (k-NN has no pixel map) or no seed has '
      'finished.',
      f'{INVERSION_MARK}: an AUROC below 0.5, an inversion: the abnormal images were ranked more '
      'normal than the normals (a simpler abnormal class, rebuilt better; see '
      'docs/methods.md#scores-that-remember-the-normals).',
      '',
  ]
  if REFERENCE in metrics:
    lines += [
        f'`{REFERENCE_LABEL}`: the official GANomaly / Skip-GANomaly read-out of the same '
        'runs (BatchNorm with test-batch statistics, the best epoch chosen on the test set: '
        'model selection on the test set, not a deployable figure); every other column is '
        'honest (checkpoint and threshold from validation normals). `(published: ...)` rows '
        "are the papers' values, their source in `readout`.",
        '',
    ]
  if used:
    lines += [
        "`readout`: the score/map each method's test pass used (×n: runs, where they "
        'differ); `+auto` rows chose theirs on validation normals and synthetic anomalies, '
        'without test labels (docs/readout.md).',
        '',
    ]
  if len(summary) > 1:
    lines += ['## All classes (mean over classes; ± std over seeds of that mean)', '']
    lines += _table(_overall(rows, summary), methods, metrics, 'classes', readouts('')) + ['']
    for metric in (PLOT_METRIC, 'pixel_auroc'):
      if metric in metrics:
        lines += [f'## {metric} per class (mean over seeds)', '']
        lines += _by_class(summary, methods, metric) + ['']
  for cls, per_method in summary.items():
    lines += [f'## {cls}', ''] + _table(per_method, methods, metrics, 'seeds', readouts(cls)) + ['']
  status = [r for r in rows if str(r.get('status')) not in _SHOWN]
  if status:
    lines += [
        f'{len(status)} run(s) not finished: '
        + ', '.join(
            f'{r["class"]}/{r["method"]}/seed-{r["seed"]} ({r["status"]})' for r in status[:20]
        )
        + (' …' if len(status) > 20 else ''),
        '',
    ]
  return '\n'.join(lines)


def write_markdown(
    root: str, rows: Sequence[dict[str, Any]], title: str, notes: Sequence[str] = ()
) -> None:
  rundir.write_text(rundir.path(root, RESULTS_MD), markdown(rows, title, notes))


def write_plot(root: str, rows: Sequence[dict[str, Any]], title: str) -> str:
  """ROOT/results.png: per-class mean image AUROC of each method, error bars one std over seeds."""
  summary = summarise(rows, (PLOT_METRIC,))
  methods = list(dict.fromkeys(str(r['method']) for r in rows))
  classes = list(summary)
  means = np.full((len(methods), len(classes)), np.nan)
  stds = np.zeros_like(means)
  for j, cls in enumerate(classes):
    for i, method in enumerate(methods):
      if PLOT_METRIC in summary[cls].get(method, {}):
        means[i, j], stds[i, j], _ = summary[cls][method][PLOT_METRIC]
  path = rundir.path(root, RESULTS_PNG)
  plots.plot_grouped_bars(
      classes,
      methods,
      means,
      stds,
      path,
      title=title,
      ylabel=f'{PLOT_METRIC} (mean ± std over seeds)',
      chance=0.5,
  )
  return path
