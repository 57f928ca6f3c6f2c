"""Dataset-dependent keys (schema.resolve): every way of naming the dataset gives the same config."""

import json
import os

from absl import flags
from ml_collections import config_flags
import numpy as np
import pytest

from ganomaly_jax.config import arguments, checks, param_count, schema
from ganomaly_jax.experiments import sweep
from helpers import REPO

GANOMALY = os.path.join(REPO, 'configs', 'ganomaly.py')


def load(arg: str = '', method: str = 'ganomaly'):
  path = os.path.join(REPO, 'configs', f'{method}.py')
  return arguments.load_config(f'{path}:{arg}' if arg else path)


def from_flags(*argv: str):
  """The config as `main` gets it: --config=FILE[:args] then --config.x.y=v overrides, resolved."""
  argv = ['prog', *argv]
  values = flags.FlagValues()
  # config_flags finds the --config.* overrides in sys_argv (sys.argv by default).
  flag = config_flags.DEFINE_config_file(
      'config', None, 'config', flag_values=values, lock_config=True, sys_argv=argv
  )
  values(argv)
  return checks.finished(flag.value)  # as the entry points finish a --config


def test_flag_override_of_the_dataset_gives_the_argument_string_config():
  by_arg = load('dataset=mnist,abnormal=3')
  by_flag = from_flags(
      f'--config={GANOMALY}', '--config.dataset.name=mnist', '--config.dataset.abnormal=3'
  )
  assert by_flag.to_dict() == by_arg.to_dict()
  # The study's widths and run length, not the embedded digits' 16x16 / 32-wide / 1000 steps.
  assert (by_flag.model.isize, by_flag.model.ngf, by_flag.model.ndf) == (32, 64, 64)
  assert (by_flag.train.num_steps, by_flag.train.eval_every) == (3000, 500)
  # And the networks the consumers build agree.
  assert param_count.count_parameters(by_flag) == param_count.count_parameters(by_arg)


def test_digits_default_quick_and_cars256_presets_are_unchanged():
  digits = load()
  assert (digits.model.isize, digits.model.ngf, digits.model.ndf, digits.model.channels) == (
      16,
      32,
      32,
      1,
  )
  assert (digits.train.num_steps, digits.train.eval_every, digits.train.image_every) == (
      1000,
      250,
      500,
  )
  quick = load('quick,dataset=mnist')
  assert (quick.model.isize, quick.model.ngf, quick.train.num_steps) == (16, 8, 4)
  cars = from_flags(
      f'--config={os.path.join(REPO, "configs", "masked.py")}:cars256',
      '--config.dataset.name=folder:/data/cars',
  )
  assert (cars.model.isize, cars.model.channels, cars.model.ngf) == (256, 3, 64)
  assert cars.train.num_steps == 50_000 and cars.dataset.name == 'folder:/data/cars'


def test_sweep_override_of_the_dataset_gets_that_datasets_presets(tmp_path):
  sweep_file = tmp_path / 'datasets.py'
  sweep_file.write_text(
      "def get_sweep():\n  return [{}, {'dataset.name': 'mnist'}," " {'dataset.name': 'cifar10'}]\n"
  )
  runs = {r.name: r.config for r in sweep.expand(GANOMALY, str(sweep_file), str(tmp_path / 'runs'))}
  assert runs['baseline'].model.ngf == 32 and runs['baseline'].model.isize == 16
  assert runs['dataset.name-mnist'].to_dict() == load('dataset=mnist').to_dict()
  assert runs['dataset.name-cifar10'].model.channels == 3
  # Applying the override by hand and resolving gives the same as the argument string.
  by_override = checks.finished(
      sweep.apply_overrides(
          arguments.load_config(GANOMALY, finish=False), {'dataset.name': 'mnist'}
      )
  )
  assert by_override.to_dict() == load('dataset=mnist').to_dict()


def test_folder_data_is_rgb_at_the_study_widths():
  by_flag = from_flags(f'--config={GANOMALY}', '--config.dataset.name=folder:/data/x')
  assert by_flag.to_dict() == load('dataset=folder:/data/x').to_dict()
  assert (by_flag.model.channels, by_flag.model.isize, by_flag.model.ngf) == (3, 32, 64)


@pytest.mark.parametrize('shape,channels', [((4, 8, 8), 1), ((4, 8, 8, 1), 1), ((4, 8, 8, 3), 3)])
def test_npz_channels_follow_the_arrays(tmp_path, shape, channels):
  path = tmp_path / 'x.npz'
  np.savez(
      path,
      x_train=np.zeros(shape, np.uint8),
      y_train=np.zeros(4, int),
      x_test=np.zeros(shape, np.uint8),
      y_test=np.zeros(4, int),
  )
  by_arg = load(f'dataset=npz:{path}')
  by_flag = from_flags(f'--config={GANOMALY}', f'--config.dataset.name=npz:{path}')
  assert by_arg.model.channels == by_flag.model.channels == channels
  assert by_flag.to_dict() == by_arg.to_dict() and by_flag.model.ngf == 64


def test_unreadable_npz_asks_for_explicit_channels(tmp_path):
  with pytest.raises(ValueError, match='model.channels'):
    load(f'dataset=npz:{tmp_path / "missing.npz"}')
  # An explicit value needs no file (e.g. a dry-run sweep on another machine).
  assert load(f'dataset=npz:{tmp_path / "missing.npz"},channels=1').model.channels == 1


def test_cifar10_trains_rgb_unless_channels_are_set():
  assert load('dataset=cifar10,abnormal=cat', 'skip_ganomaly').model.channels == 3
  assert from_flags(f'--config={GANOMALY}', '--config.dataset.name=cifar10').model.channels == 3
  assert load('dataset=cifar10,channels=1').model.channels == 1
  assert (
      from_flags(
          f'--config={GANOMALY}', '--config.dataset.name=cifar10', '--config.model.channels=1'
      ).model.channels
      == 1
  )
  assert load('dataset=mnist').model.channels == load('dataset=fashion_mnist').model.channels == 1


def test_resolve_is_pure_idempotent_and_keeps_explicit_values():
  raw = arguments.load_config(f'{GANOMALY}:dataset=mnist,steps=500,isize=64', finish=False)
  before = raw.to_dict()
  once = schema.resolve(raw)
  assert raw.to_dict() == before and raw.model.ngf == schema.AUTO  # argument untouched
  assert schema.resolve(once).to_dict() == once.to_dict()
  assert (once.train.num_steps, once.model.isize, once.train.eval_every) == (500, 64, 500)
  assert once.is_locked  # unknown keys still fail after resolving
  with pytest.raises(ValueError, match='dataset.name'):
    schema.resolve(arguments.load_config(f'{GANOMALY}:dataset=imagenet', finish=False))


def test_flatten_is_dotted_leaves():
  assert schema.flatten({'a': {'b': 1, 'c': {'d': None}}, 'e': [1, 2], 'f': {}}) == {
      'a.b': 1,
      'a.c.d': None,
      'e': [1, 2],
  }


def test_a_saved_config_reloads_equal_and_valid():
  # config.json holds JSON, where tuples become lists; a reloaded run config (infer, rescore) must
  # be the config that trained, or validation refuses mask.cells=[4] against (4,).
  from ganomaly_jax.config import checks

  for method, arg in (('ganomaly', ''), ('grid_mask', 'quick'), ('riad', 'quick')):
    config = schema.resolve(load(arg, method))
    saved = json.loads(json.dumps({'config': config.to_dict()}))['config']
    back = schema.from_saved(saved)
    assert back.to_dict() == config.to_dict()
    checks.validate_config(back)
  assert schema.from_saved({'mask': {'cells': [16, 8]}}).mask.cells == (16, 8)
