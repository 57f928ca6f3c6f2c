"""Test hooks that the helper scripts install in a command's process (kept out of the package)."""

import os
import signal


def kill_after_saving(step: int) -> None:
  """Makes `CheckpointStore.save` SIGKILL the process once it has handed over step >= `step`: it
  dies with no chance to save anything more, as a machine that loses power does, while orbax's
  background save of that step may or may not have reached storage."""
  from ganomaly_jax.runtime import checkpoint  # imports JAX: only once startup configured it

  save = checkpoint.CheckpointStore.save

  def save_then_die(self, at, *args, **kwargs):
    saved = save(self, at, *args, **kwargs)
    if at >= step:
      os.kill(os.getpid(), signal.SIGKILL)
    return saved

  checkpoint.CheckpointStore.save = save_then_die


def events_to_local_folder(local_root: str) -> None:
  """Sends the TensorBoard events of a `gs://` run directory to local_root/<bucket>/<path>."""
  from ganomaly_jax.runtime import summaries  # no clu, hence no TensorFlow, until a writer opens

  open_writer = summaries.open_writer

  def open_local(logdir, *args, **kwargs):
    logdir = str(logdir)
    if logdir.startswith('gs://'):
      logdir = os.path.join(local_root, logdir[len('gs://') :])
    return open_writer(logdir, *args, **kwargs)

  summaries.open_writer = open_local


def shorter_gcsfs_backoff(scale: float) -> None:
  """Scales gcsfs's pauses between retries of a failed call by `scale`.

  gcsfs retries a call six times, pausing 1, 2, 4, 8 and 16 s (plus up to 1 s each): about 31 s
  before a stopped bucket becomes an error. What the outage tests check (one error line, the last
  checkpoint named, an exact resume) does not depend on how long gcsfs waits, so the emulated
  commands wait `scale` times as long; the number of retries is gcsfs's own.
  """
  import asyncio

  from gcsfs import retry

  class _Asyncio:

    def __getattr__(self, name):
      return getattr(asyncio, name)

    @staticmethod
    def sleep(seconds, *args, **kwargs):
      return asyncio.sleep(seconds * scale, *args, **kwargs)

  retry.asyncio = _Asyncio()
