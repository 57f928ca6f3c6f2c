"""timing: phases add up without double counting, JAX's compiling is moved to `compile`, nothing is
recorded outside a run; the run queue's session totals."""

import threading
import time

import jax
import jax.numpy as jnp

from ganomaly_jax.runtime import timing
from ganomaly_jax.experiments import session_timing


def _busy(seconds: float) -> None:
  end = time.perf_counter() + seconds
  while time.perf_counter() < end:
    pass


def test_nested_phases_are_subtracted_and_compiling_moves_to_compile():
  x = jnp.arange(64.0).reshape(8, 8)
  with timing.record() as recorder:
    with timing.phase('outer'):
      time.sleep(0.05)
      with timing.phase('inner'):
        _busy(0.05)
        # A program never compiled before in this process: tracing, lowering and compiling it
        # count to `compile`, not to `inner`.
        jax.jit(lambda v: jnp.tanh(v @ v.T + 0.123456)).lower(x).compile()
  wall = recorder.as_dict()['wall']
  assert set(wall) == {'outer', 'inner', 'compile'}
  assert wall['compile'] > 0.0
  assert 0.04 <= wall['outer'] < 1.0 and 0.04 <= wall['inner'] < 1.0, wall  # loaded machines
  cpu = recorder.as_dict()['cpu']
  # Busy-waiting is CPU time, sleeping is not (how much CPU the busy loop got depends on the load).
  assert cpu['outer'] < cpu['inner'], cpu


def test_outside_a_record_phases_do_nothing_and_threads_record_apart():
  with timing.phase('anything'):  # no run is recorded: a no-op
    pass
  seen = {}

  def run(name: str) -> None:
    with timing.record() as recorder:
      with timing.phase(name):
        time.sleep(0.02)
    seen[name] = recorder.as_dict()['wall']

  threads = [threading.Thread(target=run, args=(n,)) for n in ('a', 'b')]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert set(seen['a']) == {'a', 'compile'} and set(seen['b']) == {'b', 'compile'}
  assert seen['a']['compile'] == seen['b']['compile'] == 0.0


def test_session_totals_sum_the_runs_phases():
  totals = session_timing.PhaseTotals()
  totals.add('start', 2.0, 1.5)
  for _ in range(2):
    totals.add_run(
        {'wall': {'compile': 1.0, 'train_steps': 3.0}, 'cpu': {'compile': 0.5, 'train_steps': 2.5}}
    )
  record = totals.as_dict((20.0, 10.0))
  assert record['wall'] == {'start': 2.0, 'compile': 2.0, 'train_steps': 6.0}
  assert record['cpu']['train_steps'] == 5.0 and record['trained_runs'] == 2
  lines = totals.lines((20.0, 10.0))
  assert lines[1].split()[0] == 'train_steps'  # largest first
  assert lines[-2].split()[:2] == ['(other)', '10.0']  # 20 s of the session, 10 s in phases
