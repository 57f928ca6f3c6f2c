"""Rewrites config.json and results.json of run directories saved before 2026-12-06 in today's layout.

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

Their results.json (`upgrade_results`) held the test-label (oracle) operating point under today's
names of the validation one: `image_f1` becomes `image_f1_oracle` and `threshold` becomes
`threshold_oracle`, so neither is shown (tables) or used (infer's `anomalous` column) as if it had
been fixed without test labels.

A WORKDIR holding config.json or results.json is upgraded; any other WORKDIR is searched for run
directories (a benchmark or sweep root). Each file is replaced atomically, its previous content
kept beside it as <name>.bak. A file already in today's layout is left untouched (no .bak), so
running the script again changes nothing.
"""

from __future__ import annotations

import argparse
import copy
import json
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
      sides = sides or [2**k for k in range(1, 5) if 2**k <= min(16, isize // 4)]
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


def upgrade_results(results: dict[str, Any]) -> dict[str, Any]:
  """A results.json of an older version in today's layout; a copy (equal if already current).

  Today's results always record `image_f1_oracle` beside `image_f1`, and `threshold_quantile`
  beside `threshold`: without them, those values are the older versions' test-label ones.
  """
  results = dict(results)
  if 'image_f1' in results and 'image_f1_oracle' not in results:
    results['image_f1_oracle'] = results.pop('image_f1')
  if 'threshold' in results and 'threshold_quantile' not in results:
    oracle = results.pop('threshold')
    results.setdefault('threshold_oracle', oracle)
  return results


def _rewrite(workdir: str, name: str, upgrade) -> bool:
  """Replaces WORKDIR/name by `upgrade` of its JSON (previous content kept as name.bak).

  Returns:
    True if the file was rewritten, False if absent or already in today's layout.
  """
  path = rundir.path(workdir, name)
  if not path.is_file():
    return False
  text = path.read_text()
  saved = json.loads(text)
  upgraded = upgrade(saved)
  if upgraded == saved:
    return False
  # The backup first: if the rename below never happens, the original is still in place.
  rundir.write_text(rundir.path(workdir, name + BACKUP_SUFFIX), text)
  rundir.write_json(path, upgraded)
  return True


def upgrade_rundir(workdir: str) -> list[str]:
  """Upgrades WORKDIR's config.json and results.json in place; returns the names rewritten."""
  rewritten = []
  if _rewrite(
      workdir, rundir.CONFIG, lambda saved: {**saved, 'config': upgrade_config(saved['config'])}
  ):
    rewritten.append(rundir.CONFIG)
  if _rewrite(workdir, rundir.RESULTS, upgrade_results):
    rewritten.append(rundir.RESULTS)
  return rewritten


def run_directories(root: str) -> list[str]:
  """`root` if it is a run directory (config.json or results.json), else every one below it."""
  names = (rundir.CONFIG, rundir.RESULTS)
  if any(os.path.isfile(os.path.join(root, n)) for n in names):
    return [root]
  return sorted(
      dirpath for dirpath, _, filenames in os.walk(root) if any(n in filenames for n in names)
  )


def main(argv: list[str]) -> None:
  """Upgrades every run directory named by (or below) the arguments; prints one line for each."""
  parser = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
  parser.add_argument(
      'workdirs',
      nargs='+',
      metavar='WORKDIR',
      help='a run directory, or a folder with run directories below it',
  )
  args = parser.parse_args(argv)
  for root in args.workdirs:
    if not os.path.isdir(root):
      cli.exit_with_error(f'not a directory: {root}')
    found = run_directories(root)
    if not found:
      cli.exit_with_error(
          f'no {rundir.CONFIG} or {rundir.RESULTS} in or below {root}: ' 'not a run directory.'
      )
    for workdir in found:
      try:
        rewritten = upgrade_rundir(workdir)
      except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        cli.exit_with_error(f'{workdir} cannot be upgraded: {e!r}')
      print(
          f'upgraded {", ".join(rewritten)}: {workdir}'
          if rewritten
          else f'already current: {workdir}'
      )


if __name__ == '__main__':
  main(sys.argv[1:])
