"""Runs a command of the package against the GCS emulator (tests/gcs_emulator.py), as a user would.

  python tests/helpers/emulated_main.py MODULE [--kill-after=N] ARGS...

MODULE is `ganomaly_jax.main`, `ganomaly_jax.infer` or `ganomaly_jax.experiments.benchmark`; ARGS
are its own. Two test hooks, kept out of the package:

- TensorBoard events of a `gs://` run directory go to $LOCAL_EVENTS/<bucket>/<path> instead:
  clu's writer uses tf.io.gfile, whose GCS endpoint is compiled into TensorFlow, so it cannot reach
  an emulator (everything else the run writes goes to the bucket).
- `--kill-after=N` SIGKILLs the process right after the loop hands step N's checkpoint to orbax
  (as tests/helpers/kill_after_step.py does for local runs).
- $GCSFS_BACKOFF_SCALE scales gcsfs's pauses between retries (`process_hooks.shorter_gcsfs_backoff`).
"""

import os
import runpy
import sys

# Run as a script, sys.path[0] is tests/helpers: the repository's package comes first.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from ganomaly_jax.runtime import startup  # noqa: E402
import process_hooks  # noqa: E402  # tests/helpers, this script's folder


def main() -> None:
  module = sys.argv.pop(1)
  kill_after = None
  if sys.argv[1].startswith('--kill-after='):
    kill_after = int(sys.argv.pop(1).split('=', 1)[1])
  configure_process = startup.configure_process

  # Every entry point configures the process before JAX starts (`configure_for` too calls
  # `configure_process`): the hooks go in right after.
  def configure_then_hook(*args, **kwargs):
    result = configure_process(*args, **kwargs)
    if os.environ.get('LOCAL_EVENTS'):
      process_hooks.events_to_local_folder(os.environ['LOCAL_EVENTS'])
    if kill_after is not None:
      process_hooks.kill_after_saving(kill_after)
    if os.environ.get('GCSFS_BACKOFF_SCALE'):
      process_hooks.shorter_gcsfs_backoff(float(os.environ['GCSFS_BACKOFF_SCALE']))
    return result

  startup.configure_process = configure_then_hook
  sys.argv[0] = module
  runpy.run_module(module, run_name='__main__', alter_sys=True)


if __name__ == '__main__':
  main()
