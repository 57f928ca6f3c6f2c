"""Where a run's time goes: wall and CPU seconds per phase, with JAX's compiling counted apart.

`train.train_and_evaluate` records a run inside `record()` and marks its phases with `phase(name)`
(set-up, data, training steps, validation, checkpoints, final test pass, pictures); the evaluator
marks its own sub-phases the same way, without being handed anything. A phase nested in another is
subtracted from it, and every JAX trace, lowering, compilation or compilation-cache load that
happens inside any phase is moved to the phase `compile` (JAX reports these through
`jax.monitoring`), so the phases add up to the run's time without counting anything twice. The run
writes the result into results.json as `phase_seconds`; the benchmark logs it per run and totals it
per suite (docs/performance.md#where-a-suite-run-spends-its-time).

Wall time is `time.perf_counter`; CPU time is the whole process's user + system time
(`time.process_time`): XLA computes on its own threads, which a per-thread clock would miss. When
several runs share the process (`--parallel`), each run's CPU figures therefore include what the
others did meanwhile; its wall figures stay its own. Outside `record()` every call here is a no-op.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import threading
import time
from typing import Iterator

from jax import monitoring

COMPILE = 'compile'
# The jax.monitoring events of tracing, lowering and compiling (or loading from the persistent
# cache) a program; each is announced by a scalar at its start and a duration at its end.
_COMPILE_EVENTS = frozenset(
    {
        '/jax/core/compile/jaxpr_trace_duration',
        '/jax/core/compile/jaxpr_to_mlir_module_duration',
        '/jax/core/compile/backend_compile_duration',
    }
)


def _clock() -> tuple[float, float]:
  return time.perf_counter(), time.process_time()


class _ThreadState(threading.local):
  """Per thread: the open compile window (JAX compiles in the calling thread) and phase stack."""

  def __init__(self):
    self.depth = 0  # compile events nest (a jit traced inside another's trace)
    self.started = (0.0, 0.0)
    self.compiled = [0.0, 0.0]  # wall, cpu of closed compile windows, ever
    self.recorder: 'Recorder | None' = None


_state = _ThreadState()
_registered = False
_register_lock = threading.Lock()


def _on_start(event: str, value: float, **kwargs) -> None:
  del value, kwargs
  if event in _COMPILE_EVENTS:
    if _state.depth == 0:
      _state.started = _clock()
    _state.depth += 1


def _on_end(event: str, duration: float, **kwargs) -> None:
  del duration, kwargs
  if event in _COMPILE_EVENTS and _state.depth > 0:
    _state.depth -= 1
    if _state.depth == 0:
      wall, cpu = _clock()
      _state.compiled[0] += wall - _state.started[0]
      _state.compiled[1] += cpu - _state.started[1]


def _register() -> None:
  global _registered
  with _register_lock:
    if not _registered:
      monitoring.register_scalar_listener(_on_start)
      monitoring.register_event_duration_secs_listener(_on_end)
      _registered = True


def _compiled_so_far() -> tuple[float, float]:
  """This thread's compile time so far, including an open window up to now."""
  wall, cpu = _state.compiled
  if _state.depth > 0:
    now = _clock()
    wall, cpu = wall + now[0] - _state.started[0], cpu + now[1] - _state.started[1]
  return wall, cpu


@dataclasses.dataclass
class _Open:
  """A phase in progress: where its clocks stood, and what its nested phases took."""

  start: tuple[float, float]
  compiled: tuple[float, float]
  nested: list[float] = dataclasses.field(default_factory=lambda: [0.0, 0.0])
  nested_compiling: list[float] = dataclasses.field(default_factory=lambda: [0.0, 0.0])


class Recorder:
  """Wall and CPU seconds per phase of one run (see the module docstring)."""

  def __init__(self):
    self.wall: dict[str, float] = collections.defaultdict(float)
    self.cpu: dict[str, float] = collections.defaultdict(float)
    self._stack: list[_Open] = []

  @contextlib.contextmanager
  def phase(self, name: str) -> Iterator[None]:
    """Counts the time inside to `name`, less nested phases and compiling."""
    opened = _Open(_clock(), _compiled_so_far())
    self._stack.append(opened)
    try:
      yield
    finally:
      self._stack.pop()
      now, compiled = _clock(), _compiled_so_far()
      for i, totals in enumerate((self.wall, self.cpu)):
        spent = now[i] - opened.start[i]
        compiling = compiled[i] - opened.compiled[i]
        own_compiling = compiling - opened.nested_compiling[i]
        totals[name] += spent - opened.nested[i] - own_compiling
        totals[COMPILE] += own_compiling
        if self._stack:
          self._stack[-1].nested[i] += spent
          self._stack[-1].nested_compiling[i] += compiling

  def as_dict(self) -> dict[str, dict[str, float]]:
    """{'wall': {phase: s}, 'cpu': {phase: s}} rounded to milliseconds."""
    return {
        'wall': {k: round(v, 3) for k, v in sorted(self.wall.items())},
        'cpu': {k: round(v, 3) for k, v in sorted(self.cpu.items())},
    }


@contextlib.contextmanager
def record() -> Iterator[Recorder]:
  """Records the phases this thread marks inside (one run); yields the Recorder.

  A run inside another run's record (not done by this package) gets its own Recorder; the outer
  one resumes when it ends.
  """
  _register()
  outer, _state.recorder = _state.recorder, Recorder()
  try:
    yield _state.recorder
  finally:
    _state.recorder = outer


def phase(name: str):
  """A context in which this thread's time counts to phase `name` of the run being recorded."""
  recorder = _state.recorder
  return recorder.phase(name) if recorder is not None else contextlib.nullcontext()
