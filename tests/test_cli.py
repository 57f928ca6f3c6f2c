"""Every command ends on a problem it can name the same way: `runtime.cli.exit_with_error`."""

import re
import subprocess
import sys

from helpers import REPO

PACKAGE = REPO / 'ganomaly_jax'


def test_no_module_but_cli_prints_an_error_line_and_exits():
  # parallel.py's coordinator watchdog is the exception: it must os._exit from its thread.
  pattern = re.compile(r"""sys\.exit\(|print\(f?['"]error:""")
  offenders = [
      str(p.relative_to(PACKAGE))
      for p in PACKAGE.rglob('*.py')
      if p.name != 'cli.py' and pattern.search(p.read_text(encoding='utf-8'))
  ]
  assert not offenders, offenders


def test_exit_with_error_is_one_line_and_status_one():
  code = 'from ganomaly_jax.runtime import cli; cli.exit_with_error("no such run: x")'
  proc = subprocess.run(
      [sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True, timeout=60
  )
  assert (proc.returncode, proc.stdout, proc.stderr) == (1, '', 'error: no such run: x\n')
