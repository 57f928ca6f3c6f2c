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
without the extension where that is unique and short, else with a hash suffix (`image_files.map_names`). A run
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

This module only parses the flags; the work is done by `ganomaly_jax.inference`: `finished_run`
(the run's config, results and checkpoint), `image_files` (discovery, map names, decoding),
`outputs` (CSV, map PNGs, staging) and `scoring` (`infer`, the call itself).
"""

from __future__ import annotations

from typing import Any

from absl import app, flags

from ganomaly_jax.inference import finished_run, image_files, scoring
from ganomaly_jax.runtime import cli, startup


def _define_flags() -> dict[str, Any]:
  """Defines the CLI flags; called only when run as a program.

  Importing this module (tests, notebooks, or next to ganomaly_jax.main in one process) must not claim
  global absl flag names such as --workdir.
  """
  return {
      'workdir': flags.DEFINE_string(
          'workdir', None, 'Training run directory (holds config.json and checkpoints).'
      ),
      'images': flags.DEFINE_string(
          'images', None, 'Folder of images to score (searched recursively).'
      ),
      'out': flags.DEFINE_string(
          'out', None, 'Output folder for scores.csv, maps/ and index.html.'
      ),
      'batch_size': flags.DEFINE_integer(
          'batch_size', 0, "Images per forward pass (0: the run's eval.batch_size)."
      ),
      'checkpoint': flags.DEFINE_enum(
          'checkpoint',
          'auto',
          ['auto', 'best', 'latest'],
          'auto: best/ if present, else the latest of checkpoints/.',
      ),
      'decode_threads': flags.DEFINE_integer(
          'decode_threads',
          image_files.DEFAULT_DECODE_THREADS,
          'grain threads decoding and resizing images ahead of the devices (0: in the main thread).',
      ),
      'overwrite': flags.DEFINE_bool(
          'overwrite', False, 'Replace an earlier result in --out (scores.csv, index.html, maps/).'
      ),
  }


_FLAGS: dict[str, Any] = {}


def main(argv: list[str]) -> None:
  """Scores --images with the run in --workdir into --out; a problem ends in one `error:` line."""
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  startup.configure_process()  # before JAX starts its backend; GANOMALY_JAX_XLA_DEFAULTS=0: off
  try:
    summary = scoring.infer(
        _FLAGS['workdir'].value,
        _FLAGS['images'].value,
        _FLAGS['out'].value,
        _FLAGS['batch_size'].value,
        _FLAGS['checkpoint'].value,
        _FLAGS['decode_threads'].value,
        _FLAGS['overwrite'].value,
    )
  except finished_run.InferError as e:
    cli.exit_with_error(str(e))
  skipped = sum(len(v) for v in summary['skipped'].values())
  print(
      f'Scored {summary["scored"]} image(s), skipped {skipped} file(s) '
      f'({summary["checkpoint"]} checkpoint, step {summary["checkpoint_step"]}): '
      f'{summary["scores_csv"]}, {summary["report"]}'
  )


if __name__ == '__main__':
  _FLAGS.update(_define_flags())
  flags.mark_flags_as_required(['workdir', 'images', 'out'])
  app.run(main)
