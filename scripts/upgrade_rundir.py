"""Rewrites the config.json of run directories saved before 2026-12-06 in today's key layout.

  python scripts/upgrade_rundir.py runs/grid_mask                # one run directory
  python scripts/upgrade_rundir.py runs/bench_digits runs/sweep  # every run directory below these

Run directories of older versions keep some config keys where they used to be, and
`schema.from_saved` (used by `infer`, `rescore` and resumed training) reads only today's layout.
This one-off migration moves them (the package keeps no code for old layouts):
- `model.dtype` -> `runtime.dtype`; `model.conv_transpose` dropped (folded into runtime.cpu_kernels);
  top-level `compile_cache_dir` and `distributed` -> `runtime.*`;
- no `eval.readout`: `published` (those runs read out with their own score and map);
- the grid's `mask.cell_sizes` (cell sides in pixels, [] meaning 2, 4, ... up to min(16, isize / 4),
  cells split at random per image) -> `mask.cells` (cells per side) with `partition=random`,
  `draw=image`; a run that did not use the grid gets today's grid defaults instead;
- the eval map `riad` -> `ssim_msgms` (its name since).
Keys added since a run was saved need nothing here: `from_saved` gives them their defaults, which
are the behaviour from before they existed.

A WORKDIR holding config.json is upgraded; any other WORKDIR is searched for run directories (a
benchmark or sweep root). Each file is replaced atomically, its previous content kept beside it as
config.json.bak. A config already in today's layout is left untouched (no .bak), so running the
script again changes nothing.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
from typing import Any

from ganomaly_jax.config import schema
from ganomaly_jax.runtime import cli, rundir

BACKUP_SUFFIX = '.bak'


def upgrade_config(saved: dict[str, Any]) -> dict[str, Any]:
  """A config dict (config.json's 'config') of an older version in today's layout; a copy.

  A config already in today's layout comes back equal, so the upgrade is idempotent.
  """
  saved = copy.deepcopy(saved)
  model = saved.get('model', {})
  moved = {key: saved.pop(key) for key in ('compile_cache_dir', 'distributed') if key in saved}
  if 'dtype' in model:
    moved['dtype'] = model.pop('dtype')
  model.pop('conv_transpose', None)  # folded into runtime.cpu_kernels
  if moved:
    saved.setdefault('runtime', {}).update(moved)
  if 'eval' in saved:
    saved['eval'].setdefault('readout', 'published')
  _upgrade_grid(saved)
  return saved


def _upgrade_grid(saved: dict[str, Any]) -> None:
  """The grid keys of runs saved before `mask.cells` / `mask.partition` / `mask.draw`, in place."""
  mask, model = saved.get('mask', {}), saved.get('model', {})
  if 'cell_sizes' in mask:
    sides = list(mask.pop('cell_sizes'))
    if mask.get('kind') == 'grid':
      isize = int(model.get('isize') or 0)
      # () meant every power of two from 2 up to min(16, isize / 4) pixels.
      sides = sides or [2 ** k for k in range(1, 5) if 2 ** k <= min(16, isize // 4)]
      mask['cells'] = [isize // side for side in sides]
      mask.setdefault('partition', 'random')
      mask.setdefault('draw', 'image')
    else:
      # The grid keys were unused; their old values (sets=3) would be refused today.
      defaults = schema.base_config().mask
      for key in ('cells', 'sets', 'partition', 'draw'):
        value = defaults[key]
        mask[key] = list(value) if isinstance(value, tuple) else value  # JSON, as train writes it
  if saved.get('eval', {}).get('map') == 'riad':
    saved['eval']['map'] = 'ssim_msgms'


def upgrade_rundir(workdir: str) -> bool:
  """Upgrades WORKDIR/config.json in place (previous content kept as config.json.bak).

  Returns:
    True if the file was rewritten, False if it was already in today's layout.
  """
  path = rundir.path(workdir, rundir.CONFIG)
  text = path.read_text()
  saved = rundir.read_json(path)
  upgraded = {**saved, 'config': upgrade_config(saved['config'])}
  if upgraded == saved:
    return False
  # The backup first: if the rename below never happens, the original is still in place.
  rundir.write_text(rundir.path(workdir, rundir.CONFIG + BACKUP_SUFFIX), text)
  rundir.write_json(path, upgraded)
  return True


def run_directories(root: str) -> list[str]:
  """`root` if it holds config.json, else every directory below it that does, sorted."""
  if os.path.isfile(os.path.join(root, rundir.CONFIG)):
    return [root]
  return sorted(dirpath for dirpath, _, filenames in os.walk(root) if rundir.CONFIG in filenames)


def main(argv: list[str]) -> None:
  """Upgrades every run directory named by (or below) the arguments; prints one line for each."""
  parser = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
  parser.add_argument('workdirs', nargs='+', metavar='WORKDIR',
                      help='a run directory, or a folder with run directories below it')
  args = parser.parse_args(argv)
  for root in args.workdirs:
    if not os.path.isdir(root):
      cli.exit_with_error(f'not a directory: {root}')
    found = run_directories(root)
    if not found:
      cli.exit_with_error(f'no {rundir.CONFIG} in or below {root}: not a run directory.')
    for workdir in found:
      try:
        changed = upgrade_rundir(workdir)
      except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        cli.exit_with_error(f'{os.path.join(workdir, rundir.CONFIG)} cannot be upgraded: {e!r}')
      print(f'{"upgraded" if changed else "already current"}: {workdir}')


if __name__ == '__main__':
  main(sys.argv[1:])
