"""Every third-party module the package imports is a dependency declared in pyproject.toml.

A module that is only installed because something else pulled it in (filelock, absl-py, numpy before
they were declared) works on the developer's machine and breaks a fresh one.
"""

import ast
import importlib.metadata
import os
import re
import sys
import tomllib

from helpers import REPO

PACKAGE = 'ganomaly_jax'


def imported_modules(root: str) -> dict[str, set[str]]:
  """Top-level module name -> the files under root that import it (absolute imports only)."""
  found: dict[str, set[str]] = {}
  for folder, _, files in os.walk(root):
    for name in files:
      if not name.endswith('.py'):
        continue
      path = os.path.join(folder, name)
      with open(path) as f:
        tree = ast.parse(f.read(), path)
      for node in ast.walk(tree):
        if isinstance(node, ast.Import):
          names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
          names = [node.module]
        else:
          continue
        for module in names:
          found.setdefault(module.split('.')[0], set()).add(os.path.relpath(path, REPO))
  return found


def declared_distributions(pyproject: str) -> set[str]:
  """Normalised names of the distributions in [project].dependencies (extras and bounds dropped)."""
  with open(pyproject, 'rb') as f:
    project = tomllib.load(f)['project']
  return {
      _normalise(re.match(r'[A-Za-z0-9._-]+', spec).group()) for spec in project['dependencies']
  }


def _normalise(name: str) -> str:
  return re.sub(r'[-_.]+', '-', name).lower()  # PEP 503


def undeclared(modules: dict[str, set[str]], declared: set[str]) -> dict[str, str]:
  """Module -> why it is not covered: neither stdlib, the package, nor from a declared distribution."""
  providers = importlib.metadata.packages_distributions()
  missing = {}
  for module, files in sorted(modules.items()):
    if module in sys.stdlib_module_names or module == PACKAGE:
      continue
    dists = {_normalise(d) for d in providers.get(module, [])}
    if not dists & declared:
      where = ', '.join(sorted(files)[:3])
      missing[module] = f'provided by {sorted(dists) or "nothing installed"}, imported in {where}'
  return missing


def test_package_imports_only_declared_dependencies():
  modules = imported_modules(os.path.join(REPO, PACKAGE))
  assert {'jax', 'numpy', 'absl'} <= modules.keys()  # the scan sees the package's real imports
  missing = undeclared(modules, declared_distributions(os.path.join(REPO, 'pyproject.toml')))
  assert not missing, f'imported but not declared in pyproject.toml: {missing}'


def test_check_names_an_undeclared_module(tmp_path):
  # The same check on a pyproject without numpy and absl-py (as before they were declared).
  source = open(os.path.join(REPO, 'pyproject.toml')).read()
  stripped = re.sub(r'^\s*"(numpy|absl-py)[^"]*",\n', '', source, flags=re.M)
  assert stripped != source
  (tmp_path / 'pyproject.toml').write_text(stripped)
  missing = undeclared(
      imported_modules(os.path.join(REPO, PACKAGE)),
      declared_distributions(str(tmp_path / 'pyproject.toml')),
  )
  assert set(missing) == {'numpy', 'absl'}, missing
