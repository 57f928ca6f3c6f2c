"""Runs that train as one: a group of runs whose training steps go through one program.

A group is a few runs of one process that share their programs (equal `programs.program_key`: the
seeds of one method and class, say) and train at the same time, each in its own thread and each
with everything a run has alone: its data order, run directory, checkpoints, validation and
selection, rollback, preemption and results. Only the training step is shared:
`StepGroup.step` waits until every run still in the group has handed in its next (state, batch,
key), then runs them all as one program (`programs.group_train_step`: on CPU one copy of the step
per run, bit-equal to the run's own step; elsewhere the runs stacked under `jax.vmap`).

Runs need not be at the same step: a run that rolled back, skipped a batch, or resumed from an
older checkpoint is simply on another step inside the same program. A run whose loop ends
(finished, early-stopped, failed, preempted) leaves the group and the others go on without it;
a round of a single run calls that run's own step. Every round holds every run still in the
group, so the rounds are the same in every process of a multi-host run.
"""

from __future__ import annotations

import concurrent.futures
import threading
from typing import Any, Callable, Sequence, TypeVar

T = TypeVar('T')
# (k) -> the jitted program of k runs: (states, batches, rngs) tuples -> (states, metrics) tuples.
# Runs share a call only when they hand in the same GroupProgram object (`programs.group_program`:
# one per kept programs), so runs of different programs in one group never mix.
GroupProgram = Callable[[int], Callable]

_local = threading.local()


class StepGroup:
  """The rendezvous of `size` runs' training steps (one thread per run)."""

  def __init__(self, size: int):
    self._cond = threading.Condition()
    self._active = set(range(size))
    self._pending: dict[int, tuple[Callable, GroupProgram, tuple]] = {}
    self._results: dict[int, Any] = {}
    self.rounds = 0  # how many rounds ran (tests and logs)
    self.grouped_rounds = 0  # of them, with two or more runs

  def step(self, member: int, own_step: Callable, program: GroupProgram, args: tuple) -> Any:
    """`own_step(*args)` of run `member`, computed in one round with the other runs' steps."""
    with self._cond:
      if member not in self._active:
        raise RuntimeError(f'run {member} left its step group and cannot step in it again')
      self._pending[member] = (own_step, program, args)
      if self._pending.keys() >= self._active:
        self._run_round()
      else:
        while member not in self._results:
          self._cond.wait()
      outcome = self._results.pop(member)
    if isinstance(outcome, BaseException):
      raise outcome
    return outcome

  def leave(self, member: int) -> None:
    """Run `member` takes no further steps here (idempotent); a round it held up runs now."""
    with self._cond:
      self._active.discard(member)
      if self._pending and self._pending.keys() >= self._active:
        self._run_round()

  def _run_round(self) -> None:
    """Runs every pending step, those of one program as one call (called with the lock held)."""
    by_program: dict[Any, list[int]] = {}
    for member in sorted(self._pending):
      by_program.setdefault(self._pending[member][1], []).append(member)
    grouped = False
    for members in by_program.values():
      requests = [self._pending.pop(m) for m in members]
      try:
        if len(members) == 1:
          own_step, _, args = requests[0]
          outcomes = [own_step(*args)]
        else:
          program = requests[0][1](len(members))
          states, metrics = program(*zip(*(args for _, _, args in requests)))
          outcomes = list(zip(states, metrics))
          grouped = True
      except Exception as e:  # pylint: disable=broad-except  # every run of the call gets it
        outcomes = [e] * len(members)
      self._results.update(zip(members, outcomes))
    self.rounds += 1
    self.grouped_rounds += grouped
    self._cond.notify_all()


class Membership:
  """One run's place in a group: its step goes through the group while it is a member."""

  def __init__(self, group: StepGroup, index: int):
    self.group, self.index = group, index

  def train_step(self, own_step: Callable, program: GroupProgram) -> Callable:
    """A step function with `own_step`'s signature, (state, batch, rng) -> (state, metrics)."""

    def step(state, batch, rng):
      return self.group.step(self.index, own_step, program, (state, batch, rng))

    return step

  def leave(self) -> None:
    self.group.leave(self.index)


def current() -> Membership | None:
  """The group membership of the run in this thread (None: the run trains alone)."""
  return getattr(_local, 'membership', None)


def run_together(calls: Sequence[Callable[[], T]]) -> list[T | BaseException]:
  """Runs each call (one training run) in its own thread as a member of one `StepGroup`.

  Returns each call's value, or the exception it raised, in order; a run that fails leaves the
  group and the others go on. The caller's thread waits; when it is the main thread it holds a
  `preemption.StopRequest`, so SIGTERM / SIGINT reaches every run of the group (each checkpoints
  and returns as it would alone).
  """
  from ganomaly_jax.runtime import preemption  # imports JAX

  group = StepGroup(len(calls))

  def member(index: int, call: Callable[[], T]) -> T:
    _local.membership = Membership(group, index)
    try:
      return call()
    finally:
      group.leave(index)
      _local.membership = None

  with concurrent.futures.ThreadPoolExecutor(len(calls), 'group') as pool, preemption.StopRequest():
    futures = [pool.submit(member, i, call) for i, call in enumerate(calls)]
    while not all(f.done() for f in futures):  # a timeout, so that signals reach their handler
      concurrent.futures.wait(futures, timeout=1.0)
  return [f.exception() or f.result() for f in futures]
