"""How a command-line entry point ends on a problem it can name: one `error:` line and exit code 1.

main, infer, param_count, benchmark, sweep and rescore all end this way, so a user (or a script
that greps stderr) meets the same shape of failure from every command.
"""

from __future__ import annotations

import sys
from typing import NoReturn


def exit_with_error(message: str) -> NoReturn:
  """Prints `error: <message>` to stderr and exits with status 1."""
  print(f'error: {message}', file=sys.stderr)
  sys.exit(1)
