"""Clean preemption: SIGTERM / SIGINT ask the loop to finish its step, checkpoint and exit 0."""

from __future__ import annotations

import signal
import threading
from typing import Any

from absl import logging
import jax
from jax.experimental import multihost_utils


class StopRequest:
  """Context manager that turns SIGTERM/SIGINT into a flag the training loop polls between steps.

  A second signal while stopping falls through to the previous handler, so a user can still force
  an exit. With several processes the decision must be joint (a process that stops alone would leave
  the others waiting in a collective): there we install nothing and ask JAX's preemption sync point,
  whose own SIGTERM notifier (set up by jax.distributed.initialize) makes every process stop at the
  same step.

  Python delivers signals to the main thread only. A StopRequest entered in another thread (a run of
  a queue that runs several at once) installs nothing and follows the main thread's innermost one,
  so one signal stops every run in flight.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self._event = threading.Event()
    self._previous: dict[int, Any] = {}
    self._leader: StopRequest | None = None  # the main thread's, followed from other threads
    self._outer: StopRequest | None = None
    self.signal_name = ''

  def _handle(self, signum, frame):
    if self._event.is_set():  # second signal: behave as before we were installed
      previous = self._previous.get(signum)
      if callable(previous):
        previous(signum, frame)
      raise KeyboardInterrupt
    self.signal_name = signal.Signals(signum).name
    logging.warning(
        '%s received: finishing the current step, then checkpointing.', self.signal_name
    )
    self._event.set()

  def __enter__(self) -> 'StopRequest':
    global _main_request
    if threading.current_thread() is not threading.main_thread():
      self._leader = _main_request
    elif jax.process_count() == 1:
      for sig in self.SIGNALS:
        self._previous[sig] = signal.signal(sig, self._handle)
      self._outer, _main_request = _main_request, self
    return self

  def __exit__(self, *exc) -> None:
    global _main_request
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    if _main_request is self:
      _main_request = self._outer

  @property
  def requested(self) -> bool:
    """Whether a stop signal reached this process (single-process runs)."""
    if self._leader is not None and self._leader.requested:
      self.signal_name = self.signal_name or self._leader.signal_name
      return True
    return self._event.is_set()

  def should_stop(self, step: int) -> bool:
    """True when this (or, multi-host, the preemption service on any) process was asked to stop."""
    if jax.process_count() > 1:
      try:
        return bool(multihost_utils.reached_preemption_sync_point(step))
      except RuntimeError:  # preemption service not enabled in this runtime
        return False
    return self.requested


_main_request: StopRequest | None = None  # the main thread's innermost StopRequest
