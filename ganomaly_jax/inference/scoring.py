"""Scoring a folder of images with a finished run: `infer`, the library call behind
`python -m ganomaly_jax.infer` (whose docstring describes the outputs and the rules).

The run is loaded by `finished_run`, the images come from `image_files` and the outputs are written
by `outputs`; this module streams one into the other on all local devices and owns the call's
lifetime: the staging folder goes however the call ends (an error, Ctrl-C, SIGTERM, SIGHUP).
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
from typing import Any

from absl import logging
import jax
import numpy as np

from ganomaly_jax import programs
from ganomaly_jax import scores as scores_lib
from ganomaly_jax.data import images as images_lib
from ganomaly_jax.data import pipeline
from ganomaly_jax.evaluation import readout, report
from ganomaly_jax.inference import finished_run, image_files, outputs as outputs_lib
from ganomaly_jax.runtime import parallel


class _Interrupted(BaseException):
  """SIGTERM / SIGHUP during a call: unwinds like Ctrl-C (past any `except Exception` of a
  library) so the staging folder is removed."""


def _on_signal(signum, frame):
  del frame
  raise _Interrupted(f'interrupted by {signal.Signals(signum).name}')


def _no_threshold_reason(results: dict[str, Any]) -> str | None:
  """Why scores.csv's `anomalous` column is empty for this run (None: it has a threshold)."""
  if not results:
    return (
        'the run has no results.json (it never finished), so there is no validation '
        'threshold; the anomalous column is empty'
    )
  # A threshold counts only beside the quantile of validation normals that fixed it.
  if 'threshold_quantile' not in results or results.get('threshold') is None:
    return (
        "the run's results.json holds no validation threshold (none was fixed on validation "
        'normals); the anomalous column is empty'
    )
  return None


def infer(
    workdir: str,
    images_dir: str,
    out_dir: str,
    batch_size: int = 0,
    which_checkpoint: str = 'auto',
    decode_threads: int = image_files.DEFAULT_DECODE_THREADS,
    overwrite: bool = False,
) -> dict[str, Any]:
  """Scores every image under `images_dir` with the run in `workdir`; writes OUT as the CLI's
  docstring says (`ganomaly_jax/infer.py`).

  Streams: grain threads decode ahead, each batch is scored on all local devices while the previous
  one is written, and only O(batch) pixels are held at any time.

  Returns:
    A summary: {'scored', 'skipped' (reason -> paths), 'checkpoint', 'checkpoint_step',
    'normalisation', 'scores_csv', 'report'}.

  Raises:
    finished_run.InferError: no checkpoint, missing image folder, no decodable image, or an
      earlier result in `out_dir` without `overwrite`.
  """
  if not os.path.isdir(images_dir):
    raise finished_run.InferError(f'image folder not found: {images_dir}')
  earlier = outputs_lib.earlier_result(out_dir)
  if earlier and not overwrite:
    raise finished_run.InferError(
        f'{out_dir} holds an earlier result ({", ".join(earlier)}); '
        'pass --overwrite to replace it, or choose another --out.'
    )
  config, results = finished_run.load_run(workdir)
  config = readout.recorded_config(config, results)  # eval.readout=auto: the read-out it chose
  candidates = image_files.find_files(images_dir, exclude=(out_dir, os.path.join(out_dir, 'maps')))
  if not candidates:
    raise finished_run.InferError(f'no file to score under {images_dir}')
  isize, channels = config.model.isize, config.model.channels
  sigma = float(config.eval.get('smooth_sigma', 0.0))

  # One data-parallel mesh over this host's devices; the batch is rounded up to split evenly, and the
  # last batch is padded, so the step compiles once.
  devices = jax.local_devices()
  batch_size = batch_size or config.eval.batch_size
  batch_size = -(-batch_size // len(devices)) * len(devices)
  mesh = parallel.make_mesh(devices)
  batch_sharding = parallel.batch_sharding(mesh)

  if scores_lib.SCORES[config.eval.score].feature is not None:
    raise finished_run.InferError(
        f'eval.score={config.eval.score} compares with the training normals, whose embeddings a '
        'finished run does not keep yet: score new images with the run re-scored '
        '(experiments/rescore.py) or with another eval.score.'
    )
  components, state, step, kind = finished_run.restore_state(config, workdir, which_checkpoint)
  state = jax.device_put(state, parallel.replicated(mesh))
  eval_fn = programs.build(config, mesh, components).eval_maps

  lo, hi = results.get('score_min'), results.get('score_max')
  score_range = (float(lo), float(hi)) if lo is not None and hi is not None and hi > lo else None
  vmax = results.get('pixel_map_max')
  vmax = float(vmax) if vmax and np.isfinite(vmax) else None
  no_threshold = _no_threshold_reason(results)
  threshold = None if no_threshold else float(results['threshold'])
  if no_threshold:
    logging.warning('%s: %s.', workdir, no_threshold)
  logging.info(
      'Scoring %d file(s) under %s with the %s checkpoint (step %d) of %s on %d device(s).',
      len(candidates),
      images_dir,
      kind,
      step,
      workdir,
      len(devices),
  )

  created_out = not os.path.exists(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  outputs_lib.remove_dead_staging(out_dir)
  # Map names are fixed up front over every file with an image extension, so x.png and x.jpg get
  # distinct names even when they fall into different batches.
  named = [p for p in candidates if images_lib.has_image_extension(p)]
  map_name = dict(
      zip(named, image_files.map_names([os.path.relpath(p, images_dir) for p in named]))
  )
  skipped: dict[str, list[str]] = {}
  staging, outputs = None, None
  # SIGTERM (a scheduler's stop, `kill`) unwinds through the `finally` below like an error does.
  previous_handlers = {}
  if threading.current_thread() is threading.main_thread():
    for signum in (signal.SIGTERM, signal.SIGHUP):
      previous_handlers[signum] = signal.signal(signum, _on_signal)
  try:
    staging = tempfile.mkdtemp(prefix=f'{outputs_lib.STAGING_PREFIX}{os.getpid()}-', dir=out_dir)
    outputs = outputs_lib.Outputs(staging, map_name, score_range, vmax, sigma, threshold)
    pending = None
    records = image_files.decode_stream(candidates, isize, channels, batch_size, decode_threads)
    for paths, images in image_files.batches(records, batch_size, skipped):
      batch = np.zeros((batch_size, isize, isize, channels), np.float32)
      batch[: len(images)] = pipeline.to_float(np.stack(images))
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
      raise finished_run.InferError(
          f'no decodable image under {images_dir} ({len(candidates)} file(s), all skipped: '
          f'{", ".join(f"{r}: {len(v)}" for r, v in skipped.items())})'
      )

    scores, vmax = outputs.finish()
    if score_range is not None:
      lo, hi = score_range
      normalisation = f'test-set raw score range [{lo:.6g}, {hi:.6g}] of the run'
    else:
      normalisation = 'min/max of the scored images (the run has no test score range)'
    # This call's counts first, then the run's results.json (its test metrics and score range).
    metrics: dict[str, Any] = {
        'workdir': workdir,
        'images': images_dir,
        'checkpoint': kind,
        'checkpoint_step': step,
        'normalisation': normalisation,
        'files_found': len(candidates),
        'images_scored': len(outputs.paths),
        'images_anomalous': None if threshold is None else int(sum(outputs.flags)),
        **({'anomalous_column': no_threshold} if no_threshold else {}),
        'files_skipped': num_skipped,
        'skipped': skipped,
        'map_colour_max': vmax,
    }
    for key, value in results.items():
      metrics.setdefault(key, value)
    # The card shows the image's real name (relative to --images); the map name is only a file name.
    entries = [
        {
            'name': os.path.relpath(p, images_dir).replace(os.sep, '/'),
            'score': float(s),
            'map_png': f'maps/{n}.png',
            'anomalous': a,
        }
        for p, n, s, a in zip(outputs.paths, outputs.names, scores, outputs.flags)
    ]
    report.write_paged_report(
        staging,
        entries,
        metrics,
        f'{config.method} inference: {images_dir}',
        notes=[f'No anomalous / normal verdicts: {no_threshold}.'] if no_threshold else (),
    )
    earlier = outputs_lib.earlier_result(out_dir)
    if earlier:  # --overwrite: the earlier maps go, so none of them stays beside the new ones
      for name in earlier:
        os.replace(os.path.join(out_dir, name), os.path.join(staging, f'.earlier-{name}'))
      logging.warning('--overwrite: replaced the earlier result in %s.', out_dir)
    outputs_lib.move_into(staging, out_dir, skip_prefix='.earlier-')
    logging.info(
        'Finished: %d image(s) scored, %d file(s) skipped, outputs in %s.',
        len(outputs.paths),
        num_skipped,
        out_dir,
    )
  except _Interrupted as e:
    raise finished_run.InferError(
        f'{e} before its outputs were complete; its staging folder in ' f'{out_dir} was removed.'
    ) from None
  finally:
    if outputs is not None:
      outputs.close()
    if staging is not None:
      shutil.rmtree(staging, ignore_errors=True)
    for signum, handler in previous_handlers.items():
      signal.signal(signum, handler)
    if created_out and not os.listdir(out_dir):
      os.rmdir(out_dir)  # a call that failed leaves no trace
  return {
      'scored': len(outputs.paths),
      'skipped': skipped,
      'checkpoint': kind,
      'checkpoint_step': step,
      'normalisation': normalisation,
      'scores_csv': os.path.join(out_dir, 'scores.csv'),
      'report': os.path.join(out_dir, 'index.html'),
  }


def _finish_batch(
    outputs: outputs_lib.Outputs, paths: list[str], images: list[np.ndarray], out
) -> None:
  """Brings one scored batch to the host (real images only) and writes it."""
  out = jax.device_get({'score': out['score'], 'map': out['map']})
  n = len(paths)
  outputs.add(
      paths,
      images,
      np.asarray(out['score'], np.float64)[:n],
      np.asarray(out['map'], np.float32)[:n],
  )
