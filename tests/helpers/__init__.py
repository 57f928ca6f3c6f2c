"""Helpers shared by test modules, and scripts that tests start in a fresh process.

`REPO`, the repository root, is defined here once: test modules import it for their module-level
paths, and test functions can take it as the `repo_root` fixture (tests/conftest.py).
"""

import pathlib

REPO = pathlib.Path(__file__).resolve().parent.parent.parent


def split_import_times(stderr: str) -> tuple[set[str], str]:
  """The modules a process run with PYTHONPROFILEIMPORTTIME=1 imported, and its stderr without
  those lines."""
  imported, rest = set(), []
  for line in stderr.splitlines():
    if line.startswith('import time:'):
      imported.add(line.rsplit('|', 1)[-1].strip())
    else:
      rest.append(line)
  return imported, '\n'.join(rest)
