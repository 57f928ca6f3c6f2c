"""Helpers shared by test modules, and scripts that tests start in a fresh process.

`REPO`, the repository root, is defined here once: test modules import it for their module-level
paths, and test functions can take it as the `repo_root` fixture (tests/conftest.py).
"""

import pathlib

REPO = pathlib.Path(__file__).resolve().parent.parent.parent
