"""Where a benchmark suite's (or a sweep's) time went, from what its runs recorded.

  python bench/suite_phases.py --root=/tmp/d3                 # per method: mean seconds per run
  python bench/suite_phases.py --root=/tmp/d3 --by=class      # or per class, per seed, per run
  python bench/suite_phases.py --root=/tmp/d3 --json

Reads every run's results.json under ROOT (`phase_seconds`, written by train.train_and_evaluate;
runs finished before the timers existed have none and are left out) and the queue's last session
(ROOT/timing.json). For each group it prints the runs, the mean wall and CPU seconds per run of each
phase, and the ratio the suite targets: the part of a run that is not training steps over its
training steps. CPU seconds are the whole process's (see ganomaly_jax/runtime/timing.py).
"""

from __future__ import annotations

import argparse
import collections
import json
import pathlib
import sys

PHASES = (
    'train_steps',
    'compile',
    'data',
    'setup',
    'validation',
    'checkpoints',
    'test',
    'pictures',
)


def read_runs(root: pathlib.Path) -> list[tuple[pathlib.Path, dict]]:
  """(run directory, phase_seconds) of every timed run under `root`."""
  runs = []
  for path in sorted(root.rglob('results.json')):
    results = json.loads(path.read_text())
    if 'phase_seconds' in results:
      runs.append((path.parent.relative_to(root), results['phase_seconds']))
  return runs


def group_of(run: pathlib.Path, by: str) -> str:
  """A benchmark run lives in runs/<class>/<method>/seed-<s>; a sweep run in <name>."""
  parts = run.parts
  if by == 'run' or len(parts) != 4:
    return str(run)
  return {'class': parts[1], 'method': parts[2], 'seed': parts[3]}[by]


def summarise(runs: list[tuple[pathlib.Path, dict]], by: str) -> dict[str, dict]:
  """group -> {'runs': n, 'wall': {phase: mean s}, 'cpu': {...}, 'other_over_steps': {...}}."""
  groups: dict[str, list[dict]] = collections.defaultdict(list)
  for run, phases in runs:
    groups[group_of(run, by)].append(phases)
  out = {}
  for name, members in groups.items():
    entry = {'runs': len(members)}
    for clock in ('wall', 'cpu'):
      names = sorted(
          {k for m in members for k in m[clock]},
          key=lambda k: (PHASES.index(k) if k in PHASES else len(PHASES), k),
      )
      entry[clock] = {k: sum(m[clock].get(k, 0.0) for m in members) / len(members) for k in names}
    entry['other_over_steps'] = {
        clock: (
            sum(v for k, v in entry[clock].items() if k != 'train_steps')
            / max(entry[clock].get('train_steps', 0.0), 1e-9)
        )
        for clock in ('wall', 'cpu')
    }
    out[name] = entry
  return out


def main(argv: list[str]) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--root', required=True)
  parser.add_argument('--by', choices=('method', 'class', 'seed', 'run'), default='method')
  parser.add_argument('--json', action='store_true')
  args = parser.parse_args(argv)
  root = pathlib.Path(args.root)
  summary = summarise(read_runs(root), args.by)
  session = root / 'timing.json'
  if args.json:
    print(
        json.dumps(
            {
                'groups': summary,
                'session': json.loads(session.read_text()) if session.exists() else None,
            },
            indent=1,
        )
    )
    return
  phases = [p for p in PHASES if any(p in e['wall'] for e in summary.values())]
  print(f'mean seconds per run, wall / CPU (CPU: the whole process); root {root}')
  print(
      f'{args.by:<20} {"runs":>4} ' + ' '.join(f'{p:>13}' for p in phases) + f' {"other/steps":>13}'
  )
  for name, entry in summary.items():
    cells = [f'{entry["wall"].get(p, 0.0):6.2f}/{entry["cpu"].get(p, 0.0):<6.2f}' for p in phases]
    ratio = entry['other_over_steps']
    print(
        f'{name:<20} {entry["runs"]:>4} '
        + ' '.join(cells)
        + f' {ratio["wall"]:6.2f}/{ratio["cpu"]:<6.2f}'
    )
  if session.exists():
    record = json.loads(session.read_text())
    print(
        f'\nlast session ({record["trained_runs"]} trained runs, {record["cpu_count"]} cores): '
        f'{record["total"]["wall"]:.1f} s wall, {record["total"]["cpu"]:.1f} s CPU'
    )
    for name in sorted(record['wall'], key=record['wall'].get, reverse=True):
      print(f'  {name:<14} {record["wall"][name]:9.1f} {record["cpu"].get(name, 0.0):9.1f}')


if __name__ == '__main__':
  main(sys.argv[1:])
