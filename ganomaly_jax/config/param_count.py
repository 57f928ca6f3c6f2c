"""Parameter summary without compiling: `python -m ganomaly_jax.config.param_count --config=configs/<m>.py[:args]`.

Counts follow the study's Keras tables: BatchNorm moving mean/variance (and spectral-norm state) are
non-trainable parameters, i.e. total = Flax `params` + `batch_stats`.
"""

import json
from typing import Any

from absl import app, flags
import jax
from ml_collections import config_flags

from ganomaly_jax.config import checks
from ganomaly_jax import state as state_lib

_FLAGS = {}


def _define_flags() -> None:
  # Defined only when run as a program, so importing count_parameters (tests, sweeps) defines no
  # global absl flags that could clash with another tool's --config.
  _FLAGS['config'] = config_flags.DEFINE_config_file(
      'config', None, 'Method config file[:args].', lock_config=True
  )
  _FLAGS['json'] = flags.DEFINE_bool('json', False, 'Print one JSON line instead of a table.')


def _size(tree: Any) -> int:
  return int(sum(x.size for x in jax.tree.leaves(tree)))


def count_parameters(config) -> dict[str, dict[str, int]]:
  """{'generator': {'total', 'trainable', 'non_trainable'}, 'discriminator': {...}} of a finished
  config (`checks.finished`), from the networks' one trace (`state.trace`, no compute)."""
  state = state_lib.trace(config).state
  if state is None:  # an unfinished config whose model cannot be built
    checks.check_architecture(config)
  counts = {}
  for name, params, stats in (
      ('generator', state.g_params, state.g_stats),
      ('discriminator', state.d_params, state.d_stats),
  ):
    trainable, non_trainable = _size(params), _size(stats)
    counts[name] = {
        'total': trainable + non_trainable,
        'trainable': trainable,
        'non_trainable': non_trainable,
    }
  return counts


def format_table(counts: dict[str, dict[str, int]]) -> str:
  rows = [f'{"network":<15}{"total":>16}{"trainable":>16}{"non-trainable":>16}']
  for name, c in counts.items():
    rows.append(f'{name:<15}{c["total"]:>16,}{c["trainable"]:>16,}{c["non_trainable"]:>16,}')
  return '\n'.join(rows)


def main(argv):
  del argv
  from ganomaly_jax.runtime import cli, startup

  startup.configure_process(compile_cache_dir='')  # nothing is compiled
  try:
    config = checks.finished(_FLAGS['config'].value)
    counts = count_parameters(config)
  except ValueError as e:
    cli.exit_with_error(str(e))
  if _FLAGS['json'].value:
    print(json.dumps(counts))
  else:
    m = config.model
    print(f'{config.method} at {m.isize}x{m.isize}x{m.channels}')
    print(format_table(counts))


if __name__ == '__main__':
  _define_flags()
  flags.mark_flag_as_required('config')
  app.run(main)
