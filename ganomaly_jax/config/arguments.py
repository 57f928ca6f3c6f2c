"""big_vision-style argument strings and config files: `configs/ganomaly.py:quick,dataset=mnist,abnormal=3`.

`parse_arg` is the one parser of argument strings (config files, suite and sweep files); `finalize`
applies presets and arguments to a schema config; `load_config` loads a config file the way --config
does; `command_line_error` turns a failed --config flag into one line.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import os
from typing import Any

from absl import flags
import ml_collections

from ganomaly_jax.config import schema

# Argument-string shortcuts: short name -> dotted config key.
ARG_ALIASES = {
    'dataset': 'dataset.name',
    'abnormal': 'dataset.abnormal',
    'steps': 'train.num_steps',
    'batch': 'train.batch_size',
    'batch_size': 'train.batch_size',
    'isize': 'model.isize',
    'channels': 'model.channels',
    'seed': 'seed',
    'eval_every': 'train.eval_every',
    'checkpoint_every': 'train.checkpoint_every',
    'mode': 'mode',
    'dtype': 'runtime.dtype',
    'cpu_kernels': 'runtime.cpu_kernels',
}

# Flags that select a preset rather than set a key.
PRESETS = ('quick', 'cars256')


def parse_arg(arg: str | None, literals: bool = True) -> dict[str, Any]:
  """Parses `quick,dataset=mnist,abnormal=3` into {'quick': True, 'dataset': 'mnist', ...}.

  Items are comma-separated; a bare item maps to True. Values are split on the first '=' only, so
  `dataset=npz:/data/x.npz` and `folder:/a=b` stay whole. With `literals`, values that are Python
  literals (ints, floats, booleans) are converted and anything else stays a string; without it every
  value stays a string (suite files: `classes=3+7` is two classes, not 10).
  """
  parsed: dict[str, Any] = {}
  for item in (arg or '').split(','):
    item = item.strip()
    if not item:
      continue
    key, sep, value = item.partition('=')
    if not sep:
      parsed[item] = True
      continue
    value = value.strip()
    parsed[key.strip()] = _literal(value) if literals else value
  return parsed


def _literal(value: str) -> Any:
  if value in ('True', 'true'):
    return True
  if value in ('False', 'false'):
    return False
  try:
    return ast.literal_eval(value)
  except (ValueError, SyntaxError):
    return value


def apply_args(config: ml_collections.ConfigDict, args: dict[str, Any]) -> None:
  """Sets config keys from parsed argument-string values (aliases or dotted keys)."""
  for key, value in args.items():
    if key in PRESETS:
      continue
    dotted = ARG_ALIASES.get(key, key)
    node = config
    *parents, leaf = dotted.split('.')
    try:
      for p in parents:
        node = node[p]
      if leaf not in node:
        raise KeyError(leaf)
    except KeyError:
      raise ValueError(f'Unknown config argument {key!r} (no key {dotted!r}).') from None
    current = node[leaf]
    if isinstance(current, str) and not isinstance(value, str):
      value = str(value)
    elif isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
      value = float(value)
    node[leaf] = value


def quick(config: ml_collections.ConfigDict) -> None:
  """Shrinks a config so one end-to-end run takes seconds on 2 CPU cores."""
  config.model.isize = 16
  config.model.ngf = 8
  config.model.ndf = 8
  config.model.latent_dim = min(config.model.latent_dim, 16)
  if config.model.max_channels:
    config.model.max_channels = 32
  config.train.batch_size = 16
  config.train.num_steps = 4
  config.train.log_every = 2
  config.train.eval_every = 2
  config.train.checkpoint_every = 2
  config.train.image_every = 4
  config.dataset.max_train = 256
  config.dataset.max_test = 128
  config.eval.batch_size = 32
  config.eval.num_images = 4


def cars256(config: ml_collections.ConfigDict) -> None:
  """The study's scale: 256x256 RGB image-folder data, batch 16."""
  config.dataset.name = 'folder:data/cars'
  config.model.isize = 256
  config.model.channels = 3
  config.train.batch_size = 16
  config.eval.batch_size = 16
  config.train.num_steps = 50_000
  config.dataset.flip = True


def finalize(config: ml_collections.ConfigDict, args: dict[str, Any]) -> ml_collections.ConfigDict:
  """Applies presets then explicit arguments, and locks the config so unknown keys fail.

  Dataset-dependent keys stay AUTO here (unless a preset or argument sets them): `checks.finished`
  fills them once the dataset is final, i.e. after --config.* flags and sweep overrides.
  """
  if args.get('cars256'):
    cars256(config)
  if args.get('quick'):
    quick(config)
  apply_args(config, args)
  config.lock()
  return config


def import_file(path: str, module_name: str):
  """Runs the Python file at `path` as a fresh module: configs, sweeps and suites are files that
  define `get_config` / `get_sweep` / `get_suite`, not a package. The caller checks that it exists.
  """
  spec = importlib.util.spec_from_file_location(module_name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load_sibling(config_file: str, name: str):
  """Imports another config file from the same directory (configs are files, not a package)."""
  return import_file(
      os.path.join(os.path.dirname(os.path.abspath(config_file)), f'{name}.py'),
      f'_ganomaly_config_{name}',
  )


def load_config(spec: str, finish: bool = True) -> ml_collections.ConfigDict:
  """Loads `path/to/config.py[:args]` the way --config does (for tools and tests).

  The config comes back finished (`checks.finished`: resolved and validated) unless
  `finish=False`: pass that when overrides (a sweep's, a --config flag's) still follow, so AUTO
  keys are filled from the final dataset; the caller then finishes the config itself.
  """
  path, _, arg = spec.partition(':')
  if not os.path.isfile(path):
    raise ValueError(f'Config file not found: {path}')
  config = import_file(path, '_ganomaly_config').get_config(arg or None)
  if not finish:
    return config
  from ganomaly_jax.config import checks  # imports JAX: not needed to parse an argument string

  return checks.finished(config)


def command_line_error(error: BaseException, argv: list[str]) -> str:
  """One line for a --config / --config.x.y flag that failed to load or parse (entry points).

  ml_collections reports a missing config file or an unknown key with chained tracebacks
  (OSError, KeyError, AttributeError); this names the file or the key instead, with the nearest
  existing keys when the name looks misspelt.
  """
  chain = [error]
  while True:  # the causes, as Python prints them (`raise ... from None` hides the context)
    e = chain[-1]
    nxt = e.__cause__ or (None if e.__suppress_context__ else e.__context__)
    if nxt is None or nxt in chain:
      break
    chain.append(nxt)
  spec = next((a.split('=', 1)[1] for a in reversed(argv) if a.startswith('--config=')), None)
  if spec is not None:
    path = spec.partition(':')[0]
    if not os.path.isfile(path):
      return f'config file not found: {path} (configs/ holds one file per method: {", ".join(schema.METHODS)}).'
  keys = set(schema.flatten(schema.base_config().to_dict()))
  for arg in argv:
    if arg.startswith('--config.'):
      dotted = arg[len('--config.') :].split('=', 1)[0]
      if dotted not in keys and not any(k.startswith(dotted + '.') for k in keys):
        near = difflib.get_close_matches(dotted, sorted(keys), n=3)
        hint = f' (did you mean {" or ".join(near)}?)' if near else ''
        return f'{arg}: the config has no key {dotted!r}{hint}.'
  if isinstance(error, flags_error_types()) and 'Traceback (most recent call last):' not in str(
      error
  ):
    return str(error).strip().splitlines()[0]  # absl's own message is one readable line
  root = chain[-1]
  lines = [l.strip() for l in str(root).strip().splitlines() if l.strip()]
  if len(chain) == 1 and lines and 'Traceback (most recent call last):' in str(root):
    # absl wraps an error raised inside get_config() with its traceback as text: keep its last line.
    message = lines[-1]
  else:
    message = f'{type(root).__name__}: {lines[0] if lines else ""}'
  return f'--config={spec}: {message}' if spec else message


def flags_error_types() -> tuple[type[BaseException], ...]:
  """absl's flag errors (already one readable line)."""
  return (flags.Error,)
