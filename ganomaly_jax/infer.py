"""Scores a folder of images with a trained run: `python -m ganomaly_jax.infer --workdir=RUN
--images=DIR --out=OUT`.

Loads the run's config (RUN/config.json, written by training) and its selected checkpoint (best/,
chosen on validation normals, if present; else the latest of checkpoints/), scores every image under
DIR (recursively, any size and format that `data.images` decodes, resized to the model's input size),
and writes

  OUT/scores.csv        path,score,anomalous  (one row per scored image, sorted by path)
  OUT/maps/<name>.png   the pixel anomaly map over the resized image
  OUT/index.html        a self-contained report (metrics of the run, every image with its map)

Scores use the run's score (`eval.score`) normalised with the raw score range of its test set
(`score_min`/`score_max` in RUN/results.json), so scores of different calls are comparable: 0 is the
least and 1 the most anomalous test image, and new images may fall outside [0, 1]. Without that range
the scores are min-max normalised over the scored images themselves. `anomalous` is 1 where the raw
score exceeds the run's `threshold` (RUN/results.json: a quantile of its validation normals' raw
scores, fixed without test labels), 0 below it, and empty for a run without one. Maps share one colour scale,
0..`pixel_map_max` of the run's test set (else the largest map value of the scored images).

Files that cannot be decoded are skipped, counted and listed in the report. Nothing already in OUT is
lost: the outputs are staged in a temporary folder inside OUT and moved into place only when complete.
Problems that make inference impossible (no checkpoint, missing or empty image folder) end the command
with one `error:` line and exit code 1.
"""

from __future__ import annotations

import csv
import logging as std_logging
import os
import shutil
import sys
import tempfile
from typing import Any

from absl import app, flags, logging
import jax
import ml_collections
import numpy as np
from PIL import Image

from ganomaly_jax import checkpoint, config_lib, evaluate, parallel, pixel_metrics, plots, programs
from ganomaly_jax import report, rundir
from ganomaly_jax import state as state_lib
from ganomaly_jax.cpu import xla_flags
from ganomaly_jax.data import images as images_lib
from ganomaly_jax.data import pipeline

# OS litter that is not hidden by a leading dot (as data/folder.py).
_IGNORED_NAMES = frozenset({'thumbs.db', 'desktop.ini'})


def _define_flags() -> dict[str, Any]:
  """Defines the CLI flags; called only when run as a program.

  Importing this module (tests, notebooks, or next to ganomaly_jax.main in one process) must not claim
  global absl flag names such as --workdir.
  """
  return {
      'workdir': flags.DEFINE_string('workdir', None,
                                     'Training run directory (holds config.json and checkpoints).'),
      'images': flags.DEFINE_string('images', None,
                                    'Folder of images to score (searched recursively).'),
      'out': flags.DEFINE_string('out', None,
                                 'Output folder for scores.csv, maps/ and index.html.'),
      'batch_size': flags.DEFINE_integer(
          'batch_size', 0, 'Images per forward pass (0: the run\'s eval.batch_size).'),
      'checkpoint': flags.DEFINE_enum('checkpoint', 'auto', ['auto', 'best', 'latest'],
                                      'auto: best/ if present, else the latest of checkpoints/.'),
  }


_FLAGS: dict[str, Any] = {}


class InferError(ValueError):
  """Inference cannot run as asked; the message is one line naming the problem."""


def load_run(workdir: str) -> tuple[ml_collections.ConfigDict, dict[str, Any]]:
  """The run's config (from config.json) and results.json ({} if the run has not finished).

  Raises:
    InferError: the workdir, its config.json, or any checkpoint is missing.
  """
  if not rundir.path(workdir).is_dir():
    raise InferError(f'workdir not found: {workdir}')
  path = rundir.path(workdir, rundir.CONFIG)
  if not path.is_file():
    raise InferError(f'{workdir} has no {rundir.CONFIG}: not a training run directory.')
  if not (rundir.has_steps(rundir.path(workdir, rundir.BEST))
          or rundir.has_steps(rundir.path(workdir, rundir.CHECKPOINTS))):
    raise InferError(f'{workdir} has no checkpoint (neither best/ nor checkpoints/ holds a step); '
                     'train it first.')
  try:
    config = ml_collections.ConfigDict(config_lib.upgrade_legacy(rundir.read_json(path)['config']))
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise InferError(f'{path} cannot be read as a run config: {e!r}') from None
  results: dict[str, Any] = {}
  results_path = rundir.path(workdir, rundir.RESULTS)
  if results_path.is_file():
    try:
      results = rundir.read_json(results_path)
    except (OSError, ValueError) as e:
      logging.warning('Ignoring unreadable %s: %r', results_path, e)
  return config, results


def abstract_state_like(config: ml_collections.ConfigDict, components) -> Any:
  """Shapes, dtypes and a one-device sharding of the train state, without computing it.

  Restoring into this instead of a freshly initialised state skips compiling the initialisers, which
  on a CPU costs more than the whole inference of a small folder.
  """
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device),
                      state_lib.abstract_state(config, components))


def restore_state(config: ml_collections.ConfigDict, workdir: str, which: str = 'auto'):
  """Restores the selected checkpoint: (components, state, step, 'best' | 'latest').

  Raises:
    InferError: the requested checkpoint does not exist.
  """
  components = state_lib.build_components(config)
  store = checkpoint.CheckpointStore(workdir)
  try:
    restored, kind = None, which
    state_like = abstract_state_like(config, components)
    if which in ('auto', 'best') and rundir.has_steps(store.best_dir):
      restored, kind = store.restore_best(state_like), 'best'
    if restored is None and which in ('auto', 'latest') and rundir.has_steps(store.latest_dir):
      restored, kind = store.restore_latest(state_like, None), 'latest'
  except Exception as e:  # orbax raises many types for a damaged or foreign checkpoint
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise InferError(f'cannot restore the checkpoint in {workdir}: {first}') from e
  finally:
    store.close()
  if restored is None:
    what = 'checkpoint' if which == 'auto' else f'{which} checkpoint'
    raise InferError(f'{workdir} has no {what} to restore.')
  state, step = restored
  return components, state, int(step), kind


def _ignored(name: str) -> bool:
  return name.startswith('.') or name.lower() in _IGNORED_NAMES


def find_files(images_dir: str, exclude: tuple[str, ...] = ()) -> list[str]:
  """Every candidate file under `images_dir`, recursively, sorted; hidden files/folders skipped.

  Folders in `exclude` (the output folder and its maps/, when they lie inside images_dir) are not
  searched, so a second call never scores the first call's maps.
  """
  excluded = {os.path.realpath(e) for e in exclude}
  found = []
  for dirpath, dirnames, filenames in os.walk(images_dir, followlinks=False):
    dirnames[:] = sorted(d for d in dirnames if not _ignored(d)
                         and os.path.realpath(os.path.join(dirpath, d)) not in excluded)
    found.extend(os.path.join(dirpath, f) for f in filenames if not _ignored(f))
  return sorted(found)


def map_names(rel_paths: list[str]) -> list[str]:
  """Names for maps/<name>.png: the relative path without extension ('/'-separated subfolders).

  Two files differing only by extension (x.png, x.jpg) keep their extension ('x_png', 'x_jpg') so no
  map overwrites another.
  """
  stems = [os.path.splitext(p)[0].replace(os.sep, '/') for p in rel_paths]
  counts: dict[str, int] = {}
  for s in stems:
    counts[s] = counts.get(s, 0) + 1
  return [s if counts[s] == 1 else p.replace(os.sep, '/').replace('.', '_')
          for s, p in zip(stems, rel_paths)]


def decode_folder(candidates: list[str], isize: int,
                  channels: int) -> tuple[list[str], list[np.ndarray], dict[str, list[str]]]:
  """Decodes and resizes every candidate: (decoded paths, uint8 [isize, isize, C] images, skipped).

  Files without an image extension are skipped as 'not_an_image' without being opened (as for
  training data); files that fail to decode are skipped under their `BadImage` reason. Grey images
  become RGB for an RGB model (and colour becomes grey for a grey one) inside `decode_image`.
  """
  paths, images, skipped = [], [], {}
  for path in candidates:
    if not images_lib.has_image_extension(path):
      skipped.setdefault('not_an_image', []).append(path)
      continue
    try:
      image = images_lib.decode_image(path, channels)
    except images_lib.BadImage as e:
      skipped.setdefault(e.reason, []).append(path)
      continue
    paths.append(path)
    images.append(images_lib.resize_image(image, isize))
  # Reasons in the fixed order of images.REASONS, so logs and reports read the same every time.
  skipped = {r: skipped[r] for r in images_lib.REASONS if r in skipped}
  return paths, images, skipped


def _write_png(array: np.ndarray, path: str) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array).save(path, format='PNG')


def _move_into(staging: str, out_dir: str) -> None:
  """Moves every file of `staging` to the same relative place in `out_dir` (os.replace: atomic each).

  scores.csv and index.html go last, so they never point at maps that are not there yet.
  """
  files = []
  for dirpath, _, filenames in os.walk(staging):
    files.extend(os.path.relpath(os.path.join(dirpath, f), staging) for f in filenames)
  last = ('scores.csv', 'index.html')
  for rel in sorted(files, key=lambda r: (r in last, r)):
    target = os.path.join(out_dir, rel)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    os.replace(os.path.join(staging, rel), target)


def infer(workdir: str, images_dir: str, out_dir: str, batch_size: int = 0,
          which_checkpoint: str = 'auto') -> dict[str, Any]:
  """Scores every image under `images_dir` with the run in `workdir`; writes OUT (see module doc).

  Returns:
    A summary: {'scored', 'skipped' (reason -> paths), 'checkpoint', 'checkpoint_step',
    'normalisation', 'scores_csv', 'report'}.

  Raises:
    InferError: no checkpoint, missing image folder, or no decodable image.
  """
  if not os.path.isdir(images_dir):
    raise InferError(f'image folder not found: {images_dir}')
  config, results = load_run(workdir)
  candidates = find_files(images_dir, exclude=(out_dir, os.path.join(out_dir, 'maps')))
  if not candidates:
    raise InferError(f'no file to score under {images_dir}')
  isize, channels = config.model.isize, config.model.channels
  sigma = float(config.eval.get('smooth_sigma', 0.0))
  batch_size = batch_size or config.eval.batch_size

  # Decode everything first: a folder with nothing usable fails before the model is even built.
  paths, inputs, skipped = decode_folder(candidates, isize, channels)
  num_skipped = sum(len(v) for v in skipped.values())
  for reason, items in skipped.items():
    logging.warning('Skipped %d file(s) as %s, e.g. %s', len(items), reason, items[0])
  if not paths:
    raise InferError(f'no decodable image under {images_dir} ({len(candidates)} file(s), all '
                     f'skipped: {", ".join(f"{r}: {len(v)}" for r, v in skipped.items())})')

  components, state, step, kind = restore_state(config, workdir, which_checkpoint)
  # One device: the restored state lives there (abstract_state_like), and so do the batches.
  mesh = parallel.make_mesh(jax.local_devices()[:1])
  eval_fn = programs.build(config, mesh, components).eval_maps
  logging.info('Scoring %d image(s) under %s with the %s checkpoint (step %d) of %s.', len(paths),
               images_dir, kind, step, workdir)
  raw, maps = [], []
  for start in range(0, len(inputs), batch_size):
    chunk = inputs[start:start + batch_size]
    batch = np.stack([pipeline.to_float(im) for im in chunk])
    pad = batch_size - len(batch)
    if pad:  # every call has the same shape, so the step compiles once
      batch = np.concatenate([batch, np.zeros((pad,) + batch.shape[1:], batch.dtype)])
    out = jax.device_get(eval_fn(state, {'image': batch}))
    raw.append(np.asarray(out['score'])[:len(chunk)])
    maps.append(np.asarray(out['map'], np.float32)[:len(chunk)])

  raw_scores = np.concatenate(raw).astype(np.float64)
  all_maps = pixel_metrics.smooth_maps(np.concatenate(maps), sigma)
  lo, hi = results.get('score_min'), results.get('score_max')
  if lo is not None and hi is not None and hi > lo:
    scores = (raw_scores - lo) / (hi - lo)
    normalisation = f'test-set raw score range [{lo:.6g}, {hi:.6g}] of the run'
  else:
    scores = evaluate.normalise(raw_scores)
    normalisation = 'min/max of the scored images (the run has no test score range)'
  vmax = results.get('pixel_map_max')
  if not vmax or not np.isfinite(vmax):
    finite = all_maps[np.isfinite(all_maps)]
    vmax = float(finite.max()) if finite.size else 1.0
  # The run's operating point is on the raw score scale, like the threshold itself. Runs older than
  # `threshold_quantile` stored a test-label (oracle) threshold under this name: never used here.
  threshold = results.get('threshold') if 'threshold_quantile' in results else None
  anomalous = ([None] * len(raw_scores) if threshold is None
               else [int(s > threshold) for s in raw_scores])

  rel_paths = [os.path.relpath(p, images_dir) for p in paths]
  names = map_names(rel_paths)
  os.makedirs(out_dir, exist_ok=True)
  staging = tempfile.mkdtemp(prefix='.infer-', dir=out_dir)
  try:
    entries = []
    for name, image, amap, score, flag in zip(names, inputs, all_maps, scores, anomalous):
      map_rel = f'maps/{name}.png'
      _write_png(plots.overlay(image, amap, vmin=0.0, vmax=vmax), os.path.join(staging, map_rel))
      entries.append({'name': name, 'score': float(score), 'image': image, 'map_png': map_rel,
                      'anomalous': flag})
    with open(os.path.join(staging, 'scores.csv'), 'w', newline='') as f:
      writer = csv.writer(f)
      writer.writerow(['path', 'score', 'anomalous'])
      writer.writerows((p, f'{s:.6g}', '' if a is None else a)
                       for p, s, a in zip(paths, scores, anomalous))
    # This call's counts first, then the run's results.json (its test metrics and score range).
    metrics: dict[str, Any] = {
        'workdir': workdir, 'images': images_dir, 'checkpoint': kind, 'checkpoint_step': step,
        'normalisation': normalisation, 'files_found': len(candidates), 'images_scored': len(paths),
        'images_anomalous': None if threshold is None else int(sum(anomalous)),
        'files_skipped': num_skipped, 'skipped': skipped,
    }
    for key, value in results.items():
      metrics.setdefault(key, value)
    report.write_html_report(staging, entries,
                             metrics, f'{config.method} inference: {images_dir}')
    _move_into(staging, out_dir)
  finally:
    shutil.rmtree(staging, ignore_errors=True)
  return {'scored': len(paths), 'skipped': skipped, 'checkpoint': kind, 'checkpoint_step': step,
          'normalisation': normalisation, 'scores_csv': os.path.join(out_dir, 'scores.csv'),
          'report': os.path.join(out_dir, 'index.html')}


class _QuietLibraries:
  """Drops orbax's INFO chatter so the command's own lines stay readable (as in main.py)."""

  def filter(self, record) -> bool:
    return record.levelno >= std_logging.WARNING or 'orbax' not in record.pathname


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  logging.get_absl_logger().addFilter(_QuietLibraries())
  xla_flags.apply_cpu_defaults()  # before JAX starts its backend; GANOMALY_JAX_XLA_DEFAULTS=0: off
  try:
    summary = infer(_FLAGS['workdir'].value, _FLAGS['images'].value, _FLAGS['out'].value,
                    _FLAGS['batch_size'].value, _FLAGS['checkpoint'].value)
  except InferError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  skipped = sum(len(v) for v in summary['skipped'].values())
  print(f'Scored {summary["scored"]} image(s), skipped {skipped} file(s) '
        f'({summary["checkpoint"]} checkpoint, step {summary["checkpoint_step"]}): '
        f'{summary["scores_csv"]}, {summary["report"]}')


if __name__ == '__main__':
  _FLAGS.update(_define_flags())
  flags.mark_flags_as_required(['workdir', 'images', 'out'])
  app.run(main)
