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
  from clu import metric_writers

  create = metric_writers.create_default_writer

  def create_local(logdir, *args, **kwargs):
    logdir = str(logdir)
    if logdir.startswith('gs://'):
      logdir = os.path.join(local_root, logdir[len('gs://') :])
    return create(logdir, *args, **kwargs)

  metric_writers.create_default_writer = create_local
