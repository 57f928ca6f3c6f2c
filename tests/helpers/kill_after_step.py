"""Runs the train command and SIGKILLs it right after the loop hands step N's checkpoint to orbax.

  python tests/helpers/kill_after_step.py N --config=... --workdir=... [--config.x=...]

A test hook kept out of the package: the process dies with no chance to save anything more (no
signal handler, no atexit), as a machine that loses power does, while orbax's background save of
step N may or may not have reached the disk. Every argument after N goes to `ganomaly_jax.main`.
"""

import os
import sys

# Run as a script, sys.path[0] is tests/helpers: the repository's package comes first.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from absl import app, flags  # noqa: E402

from ganomaly_jax import main as entry  # noqa: E402
from ganomaly_jax.runtime import startup  # noqa: E402
import process_hooks  # noqa: E402  # tests/helpers, this script's folder


def main() -> None:
  step = int(sys.argv.pop(1))
  configure_for = startup.configure_for

  def configure_then_patch(config):  # the entry point configures the process before JAX starts
    result = configure_for(config)
    process_hooks.kill_after_saving(step)
    return result

  startup.configure_for = configure_then_patch
  flags.mark_flag_as_required('config')
  app.run(entry.main, flags_parser=entry._parse_flags)  # pylint: disable=protected-access


if __name__ == '__main__':
  main()
