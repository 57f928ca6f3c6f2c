"""One process set-up: every entry point calls `startup`, and nothing else repeats its pieces."""

import ast
import os
import subprocess
import sys

import pytest

from helpers import REPO

PACKAGE = REPO / 'ganomaly_jax'
ENTRY_POINTS = (
    'main.py',
    'infer.py',
    'config/param_count.py',
    'experiments/sweep.py',
    'experiments/benchmark.py',
    'experiments/rescore.py',
)
# The pieces of the set-up: written once, in startup.py.
PIECES = ('apply_cpu_defaults', 'enable', 'set_visible_devices', 'addFilter')


def _calls(tree: ast.AST) -> set[str]:
  return {
      f'{n.func.value.id}.{n.func.attr}'
      for n in ast.walk(tree)
      if isinstance(n, ast.Call)
      and isinstance(n.func, ast.Attribute)
      and isinstance(n.func.value, ast.Name)
  }


@pytest.mark.parametrize('entry', ENTRY_POINTS)
def test_every_entry_point_sets_up_the_process_through_startup(entry):
  tree = ast.parse((PACKAGE / entry).read_text(encoding='utf-8'))
  main = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == 'main')
  assert _calls(main) & {'startup.configure_process', 'startup.configure_for'}, entry


def test_no_module_but_startup_repeats_the_set_up():
  offenders = []
  for path in PACKAGE.rglob('*.py'):
    if path.name == 'startup.py':
      continue
    calls = _calls(ast.parse(path.read_text(encoding='utf-8')))
    offenders += [
        f'{path.relative_to(PACKAGE)}: {c}'
        for c in calls
        if c.split('.')[-1] in PIECES
        and c.split('.')[0] in ('xla_flags', 'compile_cache', 'tf', 'logging', 'absl_logger')
    ]
  assert not offenders, offenders


def test_configure_process_sets_flags_cache_and_quiet_logs(tmp_path):
  # In a child process: the set-up changes process-wide state (XLA_FLAGS, JAX's cache directory).
  code = (
      'import os, logging\n'
      'from absl import logging as absl_logging\n'
      'from ganomaly_jax.runtime import startup\n'
      f'used = startup.configure_process(compile_cache_dir={str(tmp_path / "xla")!r})\n'
      'startup.configure_process(compile_cache_dir="")  # again: one filter\n'
      'import jax\n'
      'filters = [f for f in absl_logging.get_absl_logger().filters '
      'if isinstance(f, startup.QuietLibraries)]\n'
      'print(used, os.environ.get("XLA_FLAGS", ""), len(filters), sep="|")\n'
  )
  env = {k: v for k, v in os.environ.items() if k not in ('XLA_FLAGS', 'GANOMALY_JAX_XLA_DEFAULTS')}
  out = (
      subprocess.run(
          [sys.executable, '-c', code],
          capture_output=True,
          text=True,
          env=env,
          check=True,
          timeout=120,
      )
      .stdout.strip()
      .splitlines()[-1]
  )
  used, xla_flags, filters = out.split('|')
  assert used == str(tmp_path / 'xla') and (tmp_path / 'xla').is_dir()
  assert '--xla_' in xla_flags  # the measured XLA:CPU defaults
  assert filters == '1'


def test_gs_goes_through_gcsfs_unless_the_user_chose(monkeypatch):
  # gcsfs is in the test extra (as in the `gcs` extra): epath is sent to it, not to tf.io.gfile.
  from ganomaly_jax.runtime import startup

  monkeypatch.delenv('EPATH_USE_TF', raising=False)
  startup._gcs_through_gcsfs()
  assert os.environ['EPATH_USE_TF'] == 'false'
  monkeypatch.setenv('EPATH_USE_TF', 'true')
  startup._gcs_through_gcsfs()
  assert os.environ['EPATH_USE_TF'] == 'true'
