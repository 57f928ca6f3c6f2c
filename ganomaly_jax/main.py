"""Entry point: `python -m ganomaly_jax.main --config=configs/<method>.py[:args] [--workdir=DIR]`.

Kept short on purpose (as in the flax examples): parse flags, set up the process (`startup.py`), optionally
initialise multi-host JAX (and check that every process runs the same config), log the topology, and
hand the finished config (`checks.finished`) over to `train.train_and_evaluate`.
`--config.seed=0+1+2` trains those seeds as one group (`runtime/step_group.py`), each in
WORKDIR/seed-N as the suites name them. Multi-host
settings (GANOMALY_DISTRIBUTED=1, then JAX's own detection or JAX_COORDINATOR_ADDRESS, ...) are
described in `parallel.py`.
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Method config file[:args].', lock_config=True
)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory (default: runs/<method>).')


def _fail(message: str) -> None:
  from ganomaly_jax.runtime import cli

  cli.exit_with_error(message)


# --config.seed=0+1+2: the seeds of one group, taken out of argv before absl parses it (the
# config's seed is one integer); empty: one run with the config's seed.
_GROUP_SEEDS: list[int] = []
_SEED_FLAG = '--config.seed='


def _take_group_seeds(argv: list[str]) -> list[str]:
  """argv without a `--config.seed=A+B+...` flag, whose seeds go to _GROUP_SEEDS."""
  rest = []
  for arg in argv:
    if arg.startswith(_SEED_FLAG) and '+' in arg:
      text = arg[len(_SEED_FLAG) :]
      try:
        seeds = [int(part) for part in text.split('+')]
      except ValueError:
        _fail(f'{arg}: seeds are integers joined by +, e.g. --config.seed=0+1+2.')
      if len(set(seeds)) != len(seeds):
        _fail(f'{arg}: a seed appears twice.')
      _GROUP_SEEDS[:] = seeds
    else:
      rest.append(arg)
  return rest


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with every failure (an unknown --config.* key too) as one `error:` line."""
  from ganomaly_jax.config import arguments

  argv = _take_group_seeds(argv)
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # pylint: disable=broad-except  # ml_collections raises several types
    _fail(arguments.command_line_error(e, argv))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  try:
    config = _CONFIG.value
    _ = config.method  # a file that failed to load raises here
  except Exception as e:  # pylint: disable=broad-except
    from ganomaly_jax.config import arguments

    _fail(arguments.command_line_error(e, sys.argv))
  from ganomaly_jax.runtime import startup

  startup.configure_for(
      config
  )  # XLA:CPU defaults, TF off the GPUs, compile cache: before JAX starts
  import jax

  from ganomaly_jax import train
  from ganomaly_jax.config import checks
  from ganomaly_jax.runtime import parallel, rundir

  workdir = _WORKDIR.value or os.path.join('runs', config.method)
  try:
    settings = parallel.DistributedSettings.from_env()
    if parallel.wants_distributed(config):
      # Exits with one line if the processes do not all meet within settings.timeout_s.
      parallel.initialize_distributed(settings)
    elif settings.explicit:
      logging.warning(
          '%s/%s/%s are set but ignored: a multi-host run also needs %s=1 or '
          '--config.runtime.distributed=True.',
          parallel.ENV_COORDINATOR,
          parallel.ENV_NUM_PROCESSES,
          parallel.ENV_PROCESS_ID,
          parallel.ENV_DISTRIBUTED,
      )
    logging.info(
        'JAX process %d / %d, local devices %s',
        jax.process_index(),
        jax.process_count(),
        jax.local_devices(),
    )
    # Resolved and validated once, after every --config override and after the distributed set-up
    # (its architecture trace may start JAX's backend); everything below receives it as is.
    config = checks.finished(config)
    if _GROUP_SEEDS:
      _train_group(config, workdir)
      return
    parallel.check_same_config(config, workdir)
    train.train_and_evaluate(config, workdir)
  except (ValueError, rundir.TrainingError) as e:  # config, data and workdir errors: one clear line
    logging.error('%s', e)
    _fail(str(e))


def _train_group(config, workdir: str) -> None:
  """The seeds of --config.seed=A+B+... as one group; one error line per run that failed."""
  import copy
  import functools

  from ganomaly_jax import train
  from ganomaly_jax.config import checks
  from ganomaly_jax.runtime import parallel, rundir, step_group

  runs = []
  for seed in _GROUP_SEEDS:
    member = copy.deepcopy(config)
    member.seed = seed
    member = checks.finished(member)
    member_dir = os.path.join(workdir, f'seed-{seed}')
    parallel.check_same_config(member, member_dir)
    runs.append(functools.partial(train.train_and_evaluate, member, member_dir))
  outcomes = step_group.run_together(runs)
  failed = []
  for seed, outcome in zip(_GROUP_SEEDS, outcomes):
    if isinstance(outcome, (ValueError, rundir.TrainingError)):
      logging.error('seed %d: %s', seed, outcome)
      failed.append(f'seed {seed}: {outcome}')
    elif isinstance(outcome, BaseException):
      raise outcome
  if failed:
    _fail('; '.join(failed))


if __name__ == '__main__':
  flags.mark_flag_as_required('config')
  app.run(main, flags_parser=_parse_flags)
