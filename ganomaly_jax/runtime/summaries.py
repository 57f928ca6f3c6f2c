"""Where a run's scalars, images and progress go: TensorBoard through clu, or the log alone.

The chief process of a run with `train.tensorboard` on writes TensorBoard events with clu's summary
writer (asynchronous; it goes through tf.io.gfile, so `gs://` run directories work). clu's
`metric_writers` package imports TensorFlow, seconds of start-up, so every other process (the other
hosts of a multi-host run, a run with `train.tensorboard=False`, `rescore`) gets `LogWriter`, which
logs what it is given as clu's LoggingWriter does without importing clu or TensorFlow. The curves
(`train_metrics.jsonl`), results and pictures are written either way.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Iterator, Mapping

from absl import logging
import numpy as np

from ganomaly_jax.runtime import startup


class LogWriter:
  """The writer methods a run calls, to the INFO log (the lines of clu's LoggingWriter)."""

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    values = [
        f'{k}={v:.6g}' if isinstance(v, float) else f'{k}={v}' for k, v in sorted(scalars.items())
    ]
    logging.info('[%d] %s', step, ', '.join(values))

  def write_images(self, step: int, images: Mapping[str, Any]) -> None:
    logging.info('[%d] Got images: %s.', step, {k: np.shape(v) for k, v in images.items()})

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    logging.info('[Hyperparameters] %s', hparams)

  def flush(self) -> None:
    logging.flush()

  def close(self) -> None:
    self.flush()


def open_writer(logdir: str, *, tensorboard: bool) -> Any:
  """clu's asynchronous TensorBoard + log writer for `logdir` if `tensorboard`, else a LogWriter."""
  if not tensorboard:
    return LogWriter()
  startup.keep_tensorflow_off_accelerators()  # clu's package imports TensorFlow
  from clu import metric_writers

  return metric_writers.create_default_writer(logdir, asynchronous=True)


@contextlib.contextmanager
def flushed(writer: Any) -> Iterator[None]:
  """Flushes `writer` when the block ends, however it ends (clu's `ensure_flushes`)."""
  try:
    yield
  finally:
    writer.flush()


class StepRate:
  """Logs the step rate and the time left about once a minute (clu's ReportProgress, without
  clu), and, for a TensorBoard writer, writes `steps_per_sec` as ReportProgress does."""

  def __init__(self, num_train_steps: int, writer: Any, every_s: float = 60.0):
    self._num_steps = num_train_steps
    self._writer = writer
    self._every_s = every_s
    self._last: tuple[int, float] | None = None

  def __call__(self, step: int) -> None:
    now = time.monotonic()
    if self._last is None:
      self._last = (step, now)
      return
    last_step, last_time = self._last
    if now - last_time < self._every_s or step == last_step:
      return
    rate = (step - last_step) / (now - last_time)
    self._last = (step, now)
    left_min = (self._num_steps - step) / rate / 60 if rate > 0 else float('inf')
    logging.info('Step %d/%d: %.3g steps/s, %.1f min left.', step, self._num_steps, rate, left_min)
    if not isinstance(self._writer, LogWriter):
      self._writer.write_scalars(step, {'steps_per_sec': rate})
