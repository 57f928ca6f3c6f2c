"""Where a queue session's time went: the phases its runs record in their results.json
(`ganomaly_jax.runtime.timing`), totalled by phase with the queue's own work (start-up, baselines,
tables) in `PhaseTotals`, logged at the end and written to the queue root's timing.json.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import time
from typing import Any, Callable


def process_age() -> tuple[float, float]:
  """(wall, CPU) seconds since this process started: interpreter, imports, process set-up."""
  try:
    import psutil

    me = psutil.Process()
    cpu = me.cpu_times()
    return time.time() - me.create_time(), cpu.user + cpu.system
  except ImportError:  # psutil comes with TensorBoard; without it the start-up is not measured
    return 0.0, time.process_time()


@dataclasses.dataclass
class PhaseTotals:
  """Wall and CPU seconds of one session of a queue, by phase, summed over the runs it ran.

  The trained runs' phases come from their results.json (`phase_seconds`); `start` is the process
  up to the first run (interpreter, imports, set-up, expanding the runs, generated data),
  `baselines` the baseline runs, `tables` rewriting the tables. CPU is the process's (all threads).
  With several runs in flight (`in_flight` > 1) their phases overlap: the sums are run-seconds,
  more than the session's wall time, and a run's CPU seconds include the others' meanwhile.
  """

  wall: dict[str, float] = dataclasses.field(default_factory=lambda: collections.defaultdict(float))
  cpu: dict[str, float] = dataclasses.field(default_factory=lambda: collections.defaultdict(float))
  trained: int = 0
  in_flight: int = 1

  def add(self, name: str, wall: float, cpu: float) -> None:
    self.wall[name] += wall
    self.cpu[name] += cpu

  def add_run(self, phases: dict[str, dict[str, float]]) -> None:
    self.trained += 1
    for name, wall in phases.get('wall', {}).items():
      self.add(name, wall, phases.get('cpu', {}).get(name, 0.0))

  def lines(self, elapsed: tuple[float, float]) -> list[str]:
    """A small table: each phase's wall and CPU seconds and share of the session's wall time (of
    the phases' sum when runs overlapped)."""
    accounted = sum(self.wall.values()), sum(self.cpu.values())
    overlap = self.in_flight > 1
    share = max(accounted[0] if overlap else elapsed[0], 1e-9)
    out = [f'{"phase":<14} {"wall s":>9} {"CPU s":>9} {"% sum" if overlap else "% wall":>7}']
    for name in sorted(self.wall, key=self.wall.get, reverse=True):
      out.append(
          f'{name:<14} {self.wall[name]:9.1f} {self.cpu[name]:9.1f} '
          f'{100 * self.wall[name] / share:6.1f}%'
      )
    if overlap:
      out.append(
          f'(summed over the runs, {self.in_flight} in flight at a time: run-seconds; '
          "a run's CPU includes the others')"
      )
    else:
      out.append(
          f'{"(other)":<14} {elapsed[0] - accounted[0]:9.1f} ' f'{elapsed[1] - accounted[1]:9.1f}'
      )
    out.append(f'{"total":<14} {elapsed[0]:9.1f} {elapsed[1]:9.1f}   ({self.trained} trained runs)')
    return out

  def as_dict(self, elapsed: tuple[float, float]) -> dict[str, Any]:
    return {
        'wall': {k: round(v, 3) for k, v in self.wall.items()},
        'cpu': {k: round(v, 3) for k, v in self.cpu.items()},
        'total': {'wall': round(elapsed[0], 3), 'cpu': round(elapsed[1], 3)},
        'trained_runs': self.trained,
        'in_flight': self.in_flight,
        'cpu_count': os.cpu_count(),
    }


def phase_line(phases: dict[str, dict[str, float]]) -> str:
  """One run's phases on one log line, longest first: 'name wall/CPU, ...' in seconds."""
  wall, cpu = phases.get('wall', {}), phases.get('cpu', {})
  return ', '.join(
      f'{k} {wall[k]:.2f}/{cpu.get(k, 0.0):.2f}' for k in sorted(wall, key=wall.get, reverse=True)
  )


def timed(totals: PhaseTotals, name: str, fn: Callable[[], None]) -> None:
  """Runs `fn` and adds its wall and CPU seconds to `totals` under phase `name`."""
  wall, cpu = time.perf_counter(), time.process_time()
  fn()
  totals.add(name, time.perf_counter() - wall, time.process_time() - cpu)
