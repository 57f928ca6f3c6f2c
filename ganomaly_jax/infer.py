"""Scores a folder of images with a trained run: `python -m ganomaly_jax.infer --workdir=RUN
--images=DIR --out=OUT`.

Loads the run's config (RUN/config.json, written by training) and its selected checkpoint (best/,
chosen on validation normals, if present; else the latest of checkpoints/), scores every image under
DIR (recursively, any size and format that `data.images` decodes, resized to the model's input size),
and writes

  OUT/scores.csv        path,score,anomalous  (one row per scored image, in path order)
  OUT/maps/<name>.png   the pixel anomaly map over the resized image
  OUT/index.html        a report that opens from disk: metrics of the run, the most and least
                        anomalous images, then every image one page at a time (the map PNGs of
                        maps/, referenced by relative path and loaded lazily)

It streams: grain threads decode and resize ahead of the devices, every batch is scored on all local
devices (a data-parallel mesh; the last batch padded so the step compiles once), and each finished
batch's CSV rows and map PNGs are written at once. Only O(batch) images and maps are held, plus one
(path, map name, score) record per image, so memory stays flat however large the folder.

Scores use the run's score and map (`eval.score`, `eval.map`, or with eval.readout=auto the pair its
results.json records) normalised with the raw score range of its test set
(`score_min`/`score_max` in RUN/results.json), so scores of different calls are comparable: 0 is the
least and 1 the most anomalous test image, and new images may fall outside [0, 1]. Without that range
the scores are min-max normalised over the scored images themselves (the small CSV is then rewritten
once at the end). `anomalous` is 1 where the raw score exceeds the run's `threshold` (RUN/results.json:
a quantile of its validation normals' raw scores, fixed without test labels), 0 at or below it, and
empty for a run without one. Maps share one colour scale, 0..`pixel_map_max` of the run's test set (else the
largest map value of the scored images: the batches' uint8 images and float16 maps are then spooled
to the staging folder and drawn at the end, still O(batch) in memory).

Only regular files are read, up to `data.images.MAX_FILE_BYTES`: FIFOs, devices, sockets, links to
them, looping links and undecodable files are skipped, counted and listed in the report. Each image
keeps its real name (relative to DIR) in the CSV and the report; its map's file name is the same
without the extension where that is unique and short, else with a hash suffix (`map_names`). A run
without a validation threshold (no results.json: it never finished) gives one warning line, an empty
`anomalous` column and a report that says why.

OUT holding an earlier result (scores.csv, index.html or maps/) is refused unless --overwrite, which
replaces all three (no earlier map stays beside the new ones); anything else in OUT is kept. The
outputs are staged in a temporary folder inside OUT and moved into place only when complete; the
staging folder is removed however the call ends (an error, Ctrl-C, SIGTERM; one left by a SIGKILLed
call is removed by the next call into the same OUT). Problems that make inference impossible (no
checkpoint, missing or empty image folder, no decodable image — found only once the stream has
ended; an OUT the call created is then removed too) end the command with one `error:` line and exit
code 1.
"""

from __future__ import annotations

import collections
import csv
import functools
import hashlib
import os
import shutil
import signal
import sys
import tempfile
import threading
from typing import Any, Iterator

from absl import app, flags, logging
import grain
import matplotlib
import jax
import ml_collections
import numpy as np
from PIL import Image

from ganomaly_jax import programs
from ganomaly_jax.config import schema
from ganomaly_jax.runtime import checkpoint, parallel, rundir, startup
from ganomaly_jax import state as state_lib
from ganomaly_jax.evaluation import evaluator, pixel_metrics, plots, readout, report
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
      'decode_threads': flags.DEFINE_integer(
          'decode_threads', DEFAULT_DECODE_THREADS,
          'grain threads decoding and resizing images ahead of the devices (0: in the main thread).'),
      'overwrite': flags.DEFINE_bool(
          'overwrite', False, 'Replace an earlier result in --out (scores.csv, index.html, maps/).'),
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
    config = schema.from_saved(rundir.read_json(path)['config'])
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
      restored, kind = store.restore_best(state_like, set_aside=False), 'best'
    if restored is None and which in ('auto', 'latest') and rundir.has_steps(store.latest_dir):
      restored, kind = store.restore_latest(state_like, None, set_aside=False), 'latest'
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


# Longest map file name (UTF-8 bytes, '.png' included): file systems allow 255, and a report copied
# elsewhere (an archive, another OS) should still unpack.
_MAX_MAP_NAME_BYTES = 200
_HASH_CHARS = 10


def _digest(text: str, salt: int = 0) -> str:
  data = text.encode('utf-8', 'surrogateescape') + (b'#%d' % salt if salt else b'')
  return hashlib.sha1(data).hexdigest()[:_HASH_CHARS]


def _clean(part: str) -> str:
  """A path component that encodes as UTF-8 and holds no control character ('_' instead)."""
  return ''.join('_' if ord(c) < 32 or ord(c) == 127 or 0xD800 <= ord(c) <= 0xDFFF else c
                 for c in part)


def _fit(text: str, max_bytes: int) -> str:
  """`text` cut to at most max_bytes of UTF-8, never inside a character."""
  return text.encode('utf-8')[:max_bytes].decode('utf-8', 'ignore')


def map_names(rel_paths: list[str]) -> list[str]:
  """Unique, short names for maps/<name>.png: the relative path without its extension
  ('/'-separated subfolders) where that is unambiguous, else with a hash suffix.

  A hash of the full relative path is added when the plain name would collide with another
  (x.png and x.jpg; also A.png and a.png, which collide on case-insensitive disks), when it would
  be too long for a file name, or when it holds characters a URL or another disk cannot carry
  (control characters, bytes that are not UTF-8). The report shows each image's real name; the
  map name is only where its picture is.
  """
  posix = [p.replace(os.sep, '/') for p in rel_paths]
  stems = [os.path.splitext(p)[0] for p in posix]
  counts = collections.Counter(s.casefold() for s in stems)
  names = []
  for path, stem in zip(posix, stems):
    *folders, last = stem.split('/')
    plain = (counts[stem.casefold()] == 1 and _clean(stem) == stem
             and len(f'{last}.png'.encode('utf-8')) <= _MAX_MAP_NAME_BYTES)
    if plain:
      names.append(stem)
      continue
    ext = os.path.splitext(path)[1].lstrip('.')
    base = _clean(f'{last}_{ext}' if ext else last)
    room = _MAX_MAP_NAME_BYTES - len('.png') - 1 - _HASH_CHARS
    names.append('/'.join([_clean(f) for f in folders] + [f'{_fit(base, room)}-{_digest(path)}']))
  # A plain name equal to another's hashed one would need a 10-hex-digit coincidence; still, the
  # names must be unique whatever the input, so any repeat is re-hashed with a salt.
  seen: set[str] = set()
  for i, (path, name) in enumerate(zip(posix, names)):
    salt = 0
    while name.casefold() in seen:
      salt += 1
      head = name.rsplit('/', 1)[0] + '/' if '/' in name else ''
      base = _clean(os.path.splitext(path.rsplit('/', 1)[-1])[0])
      room = _MAX_MAP_NAME_BYTES - len('.png') - 1 - _HASH_CHARS
      name = f'{head}{_fit(base, room)}-{_digest(path, salt)}'
    seen.add(name.casefold())
    names[i] = name
  return names


# Decoding threads: PIL releases the GIL while it decodes and resizes, so threads overlap on every core
# without the start-up cost (a fresh JAX-free interpreter per worker) and pickling of grain's worker
# processes. Measured in bench/infer_memory.py (docs/performance.md#streaming-inference).
DEFAULT_DECODE_THREADS = 4
# Records decoded ahead of the device: a few batches, so the device never waits on one slow file and
# memory stays O(batch).
_PREFETCH_BATCHES = 2


def _decode_one(path: str, isize: int, channels: int) -> dict[str, Any]:
  """One candidate -> {'path', 'image' (uint8 [isize, isize, C], or empty), 'reason' ('' if good)}.

  Files without an image extension are 'not_an_image' without being opened (as for training data).
  Grey images become RGB for an RGB model (and colour becomes grey for a grey one) in `decode_image`.
  """
  empty = np.zeros((0,), np.uint8)
  if not images_lib.has_image_extension(path):
    return {'path': path, 'image': empty, 'reason': 'not_an_image'}
  try:
    image = images_lib.decode_image(path, channels)
  except images_lib.BadImage as e:
    return {'path': path, 'image': empty, 'reason': e.reason}
  return {'path': path, 'image': images_lib.resize_image(image, isize), 'reason': ''}


def decode_stream(candidates: list[str], isize: int, channels: int, batch_size: int,
                  threads: int = DEFAULT_DECODE_THREADS) -> Iterator[dict[str, Any]]:
  """The candidates decoded and resized in order by `threads` grain threads (see `_decode_one`).

  A grain MapDataset over the sorted path list keeps the order, so rows, maps and report entries
  come out in path order whatever the number of threads.
  """
  ds = grain.MapDataset.source(candidates).map(
      functools.partial(_decode_one, isize=isize, channels=channels))
  if threads <= 0:
    return iter(ds)
  return iter(ds.to_iter_dataset(grain.ReadOptions(
      num_threads=threads, prefetch_buffer_size=max(_PREFETCH_BATCHES * batch_size, threads))))


def _batches(records: Iterator[dict[str, Any]], batch_size: int,
             skipped: dict[str, list[str]]) -> Iterator[tuple[list[str], list[np.ndarray]]]:
  """Groups decodable records into (paths, images) of up to batch_size; bad ones go to `skipped`."""
  paths, images = [], []
  for record in records:
    if record['reason']:
      skipped.setdefault(record['reason'], []).append(record['path'])
      continue
    paths.append(record['path'])
    images.append(record['image'])
    if len(paths) == batch_size:
      yield paths, images
      paths, images = [], []
  if paths:
    yield paths, images


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


def _move_into(staging: str, out_dir: str, skip_prefix: str | None = None) -> None:
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


def overlay_batch(images: np.ndarray, maps: np.ndarray, vmax: float,
                  alpha: float = 0.5) -> np.ndarray:
  """`plots.overlay(image, map, vmin=0, vmax=vmax)` for a whole batch, the map at 256 colour levels.

  One table lookup per pixel instead of one colormap call per image: at 64x64 the per-image call
  cost more host time than scoring the image. Non-finite map values take the bottom colour, as there.
  """
  rgb = np.stack([plots.to_rgb_uint8(im) for im in images]).astype(np.float32)
  norm = np.asarray(maps, np.float32) / vmax if vmax > 0 else np.zeros(maps.shape, np.float32)
  norm = np.clip(np.where(np.isfinite(norm), norm, 0.0), 0.0, 1.0)
  heat = _colour_table(plots.DEFAULT_CMAP)[np.rint(norm * 255.0).astype(np.int32)]
  return np.rint((1.0 - alpha) * rgb + alpha * heat).astype(np.uint8)


class _Outputs:
  """Writes one finished batch at a time into the staging folder; keeps O(1) per image.

  Per image it keeps only (path, map name, raw score). Map PNGs need the shared colour scale: with the
  run's `pixel_map_max` they are written at once; without it the batch's images (uint8) and maps
  (float16) are spooled to disk and drawn in `finish`, once the largest map value is known.
  """

  def __init__(self, staging: str, map_name: dict[str, str],
               score_range: tuple[float, float] | None, vmax: float | None, sigma: float,
               threshold: float | None):
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

  def add(self, paths: list[str], images: list[np.ndarray], raw: np.ndarray,
          maps: np.ndarray) -> None:
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

  def _draw_batch(self, names: list[str], images: np.ndarray, maps: np.ndarray,
                  vmax: float) -> None:
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
        self._draw_batch(self.names[done:done + len(images)], images, maps, vmax)
        done += len(images)
        os.remove(spool)
      shutil.rmtree(os.path.join(self.staging, '.spool'), ignore_errors=True)
    raw = np.asarray(self.raw, np.float64)
    if self.score_range is None:
      scores = evaluator.normalise(raw)  # needs every score: rewrite the small CSV once
      _write_csv(self.csv_path,
                 (_csv_row(p, s, a) for p, s, a in zip(self.paths, scores, self.flags)))
    else:
      scores = self.scale(raw)
    return scores, vmax

  def close(self) -> None:
    self._csv.close()


# What one call writes into OUT: an earlier call's result is these.
RESULT_NAMES = ('scores.csv', 'index.html', 'maps')
_STAGING_PREFIX = '.infer-'


def _earlier_result(out_dir: str) -> list[str]:
  return [n for n in RESULT_NAMES if os.path.lexists(os.path.join(out_dir, n))]


def _remove_dead_staging(out_dir: str) -> None:
  """Removes staging folders of calls on this host that died without cleaning up (SIGKILL)."""
  if not os.path.isdir(out_dir):
    return
  for name in os.listdir(out_dir):
    if not name.startswith(_STAGING_PREFIX):
      continue
    pid = name[len(_STAGING_PREFIX):].split('-', 1)[0]
    if pid.isdigit() and not rundir.pid_alive(int(pid)):
      shutil.rmtree(os.path.join(out_dir, name), ignore_errors=True)
      logging.info('Removed %s, left by an earlier call that was killed.', name)


class _Interrupted(BaseException):
  """SIGTERM / SIGHUP during a call: unwinds like Ctrl-C (past any `except Exception` of a
  library) so the staging folder is removed."""


def _on_signal(signum, frame):
  del frame
  raise _Interrupted(f'interrupted by {signal.Signals(signum).name}')


def _no_threshold_reason(results: dict[str, Any]) -> str | None:
  """Why scores.csv's `anomalous` column is empty for this run (None: it has a threshold)."""
  if not results:
    return ('the run has no results.json (it never finished), so there is no validation '
            'threshold; the anomalous column is empty')
  if 'threshold_quantile' not in results or results.get('threshold') is None:
    return ('the run\'s results.json holds no validation threshold (written by an older version); '
            'the anomalous column is empty')
  return None


def infer(workdir: str, images_dir: str, out_dir: str, batch_size: int = 0,
          which_checkpoint: str = 'auto',
          decode_threads: int = DEFAULT_DECODE_THREADS, overwrite: bool = False) -> dict[str, Any]:
  """Scores every image under `images_dir` with the run in `workdir`; writes OUT (see module doc).

  Streams: grain threads decode ahead, each batch is scored on all local devices while the previous
  one is written, and only O(batch) pixels are held at any time.

  Returns:
    A summary: {'scored', 'skipped' (reason -> paths), 'checkpoint', 'checkpoint_step',
    'normalisation', 'scores_csv', 'report'}.

  Raises:
    InferError: no checkpoint, missing image folder, no decodable image, or an earlier result in
      `out_dir` without `overwrite`.
  """
  if not os.path.isdir(images_dir):
    raise InferError(f'image folder not found: {images_dir}')
  earlier = _earlier_result(out_dir)
  if earlier and not overwrite:
    raise InferError(f'{out_dir} holds an earlier result ({", ".join(earlier)}); pass --overwrite '
                     'to replace it, or choose another --out.')
  config, results = load_run(workdir)
  config = readout.recorded_config(config, results)  # eval.readout=auto: the read-out it chose
  candidates = find_files(images_dir, exclude=(out_dir, os.path.join(out_dir, 'maps')))
  if not candidates:
    raise InferError(f'no file to score under {images_dir}')
  isize, channels = config.model.isize, config.model.channels
  sigma = float(config.eval.get('smooth_sigma', 0.0))

  # One data-parallel mesh over this host's devices; the batch is rounded up to split evenly, and the
  # last batch is padded, so the step compiles once.
  devices = jax.local_devices()
  batch_size = batch_size or config.eval.batch_size
  batch_size = -(-batch_size // len(devices)) * len(devices)
  mesh = parallel.make_mesh(devices)
  batch_sharding = parallel.batch_sharding(mesh)

  components, state, step, kind = restore_state(config, workdir, which_checkpoint)
  state = jax.device_put(state, parallel.replicated(mesh))
  eval_fn = programs.build(config, mesh, components).eval_maps

  lo, hi = results.get('score_min'), results.get('score_max')
  score_range = (float(lo), float(hi)) if lo is not None and hi is not None and hi > lo else None
  vmax = results.get('pixel_map_max')
  vmax = float(vmax) if vmax and np.isfinite(vmax) else None
  # Runs older than `threshold_quantile` stored a test-label (oracle) threshold under this name:
  # never used here.
  no_threshold = _no_threshold_reason(results)
  threshold = None if no_threshold else float(results['threshold'])
  if no_threshold:
    logging.warning('%s: %s.', workdir, no_threshold)
  logging.info('Scoring %d file(s) under %s with the %s checkpoint (step %d) of %s on %d device(s).',
               len(candidates), images_dir, kind, step, workdir, len(devices))

  created_out = not os.path.exists(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  _remove_dead_staging(out_dir)
  # Map names are fixed up front over every file with an image extension, so x.png and x.jpg get
  # distinct names even when they fall into different batches.
  named = [p for p in candidates if images_lib.has_image_extension(p)]
  map_name = dict(zip(named, map_names([os.path.relpath(p, images_dir) for p in named])))
  skipped: dict[str, list[str]] = {}
  staging, outputs = None, None
  # SIGTERM (a scheduler's stop, `kill`) unwinds through the `finally` below like an error does.
  previous_handlers = {}
  if threading.current_thread() is threading.main_thread():
    for signum in (signal.SIGTERM, signal.SIGHUP):
      previous_handlers[signum] = signal.signal(signum, _on_signal)
  try:
    staging = tempfile.mkdtemp(prefix=f'{_STAGING_PREFIX}{os.getpid()}-', dir=out_dir)
    outputs = _Outputs(staging, map_name, score_range, vmax, sigma, threshold)
    pending = None
    records = decode_stream(candidates, isize, channels, batch_size, decode_threads)
    for paths, images in _batches(records, batch_size, skipped):
      batch = np.zeros((batch_size, isize, isize, channels), np.float32)
      batch[:len(images)] = pipeline.to_float(np.stack(images))
      # Dispatch is asynchronous: the devices score this batch while the host writes the last one.
      out = eval_fn(state, {'image': jax.device_put(batch, batch_sharding)})
      if pending is not None:
        _finish_batch(outputs, *pending)
      pending = (paths, images, out)
    if pending is not None:
      _finish_batch(outputs, *pending)
    # Reasons in the fixed order of images.REASONS, so logs and reports read the same every time.
    skipped = {r: skipped[r] for r in images_lib.REASONS if r in skipped}
    num_skipped = sum(len(v) for v in skipped.values())
    for reason, items in skipped.items():
      logging.warning('Skipped %d file(s) as %s, e.g. %s', len(items), reason, items[0])
    if not outputs.paths:
      raise InferError(f'no decodable image under {images_dir} ({len(candidates)} file(s), all '
                       f'skipped: {", ".join(f"{r}: {len(v)}" for r, v in skipped.items())})')

    scores, vmax = outputs.finish()
    if score_range is not None:
      lo, hi = score_range
      normalisation = f'test-set raw score range [{lo:.6g}, {hi:.6g}] of the run'
    else:
      normalisation = 'min/max of the scored images (the run has no test score range)'
    # This call's counts first, then the run's results.json (its test metrics and score range).
    metrics: dict[str, Any] = {
        'workdir': workdir, 'images': images_dir, 'checkpoint': kind, 'checkpoint_step': step,
        'normalisation': normalisation, 'files_found': len(candidates),
        'images_scored': len(outputs.paths),
        'images_anomalous': None if threshold is None else int(sum(outputs.flags)),
        **({'anomalous_column': no_threshold} if no_threshold else {}),
        'files_skipped': num_skipped, 'skipped': skipped, 'map_colour_max': vmax,
    }
    for key, value in results.items():
      metrics.setdefault(key, value)
    # The card shows the image's real name (relative to --images); the map name is only a file name.
    entries = [{'name': os.path.relpath(p, images_dir).replace(os.sep, '/'), 'score': float(s),
                'map_png': f'maps/{n}.png', 'anomalous': a}
               for p, n, s, a in zip(outputs.paths, outputs.names, scores, outputs.flags)]
    report.write_paged_report(staging, entries, metrics, f'{config.method} inference: {images_dir}',
                              notes=[f'No anomalous / normal verdicts: {no_threshold}.']
                              if no_threshold else ())
    earlier = _earlier_result(out_dir)
    if earlier:  # --overwrite: the earlier maps go, so none of them stays beside the new ones
      for name in earlier:
        os.replace(os.path.join(out_dir, name), os.path.join(staging, f'.earlier-{name}'))
      logging.warning('--overwrite: replaced the earlier result in %s.', out_dir)
    _move_into(staging, out_dir, skip_prefix='.earlier-')
    logging.info('Finished: %d image(s) scored, %d file(s) skipped, outputs in %s.',
                 len(outputs.paths), num_skipped, out_dir)
  except _Interrupted as e:
    raise InferError(f'{e} before its outputs were complete; its staging folder in {out_dir} '
                     'was removed.') from None
  finally:
    if outputs is not None:
      outputs.close()
    if staging is not None:
      shutil.rmtree(staging, ignore_errors=True)
    for signum, handler in previous_handlers.items():
      signal.signal(signum, handler)
    if created_out and not os.listdir(out_dir):
      os.rmdir(out_dir)  # a call that failed leaves no trace
  return {'scored': len(outputs.paths), 'skipped': skipped, 'checkpoint': kind,
          'checkpoint_step': step, 'normalisation': normalisation,
          'scores_csv': os.path.join(out_dir, 'scores.csv'),
          'report': os.path.join(out_dir, 'index.html')}


def _finish_batch(outputs: _Outputs, paths: list[str], images: list[np.ndarray], out) -> None:
  """Brings one scored batch to the host (real images only) and writes it."""
  out = jax.device_get({'score': out['score'], 'map': out['map']})
  n = len(paths)
  outputs.add(paths, images, np.asarray(out['score'], np.float64)[:n],
              np.asarray(out['map'], np.float32)[:n])



def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  startup.configure_process(uses_tensorflow=False)  # before JAX starts its backend; GANOMALY_JAX_XLA_DEFAULTS=0: off
  try:
    summary = infer(_FLAGS['workdir'].value, _FLAGS['images'].value, _FLAGS['out'].value,
                    _FLAGS['batch_size'].value, _FLAGS['checkpoint'].value,
                    _FLAGS['decode_threads'].value, _FLAGS['overwrite'].value)
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
