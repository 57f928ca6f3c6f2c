"""scripts/upgrade_rundir.py: config.json of runs saved before 2026-12-06 reloads as the run trained."""

import importlib.util
import json

import pytest

from ganomaly_jax.config import arguments, checks, schema
from helpers import REPO


def _script():
  spec = importlib.util.spec_from_file_location(
      'upgrade_rundir', REPO / 'scripts' / 'upgrade_rundir.py'
  )
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


upgrade_rundir = _script()


def _today(method: str = 'grid_mask', arg: str = 'quick') -> dict:
  """A config as train writes it today: resolved, as JSON (tuples become lists)."""
  config = schema.resolve(arguments.load_config(f'{REPO / "configs" / method}.py:{arg}'))
  return json.loads(json.dumps(config.to_dict()))


def _old_grid_run() -> tuple[dict, dict]:
  """(config.json of a grid run saved before the move, the config it trained with, today's layout).

  Older runs gave the grid's cell sides in pixels ([] = 2, 4, ... up to min(16, isize / 4)), split
  the cells at random per image, called the map 'ssim_msgms' 'riad', kept the dtype in `model` and
  the cache directory and multi-host switch at the top, and had no eval.readout or
  loss.reconstruction (added since, with the old behaviour as their defaults).
  """
  expected = _today()
  assert expected['model']['isize'] == 16
  expected['mask'].update(cells=[8, 4], partition='random', draw='image')  # 2 and 4 px cells
  expected['eval'].update(map='ssim_msgms', readout='published')
  expected['runtime'].update(dtype='bfloat16', distributed=True)
  expected['loss']['reconstruction'] = 'l1'
  old = json.loads(json.dumps(expected))
  old['mask'] = {
      **{k: v for k, v in old['mask'].items() if k not in ('cells', 'partition', 'draw')},
      'cell_sizes': [],
  }
  old['eval']['map'] = 'riad'
  del old['eval']['readout'], old['loss']['reconstruction']
  old['model']['dtype'] = old['runtime'].pop('dtype')
  old['model']['conv_transpose'] = 'auto'
  old['distributed'] = old['runtime'].pop('distributed')
  old['compile_cache_dir'] = old['runtime'].pop('compile_cache_dir')
  return {'config': old}, expected


def _write_run(workdir, saved: dict) -> None:
  workdir.mkdir(parents=True)
  (workdir / 'config.json').write_text(json.dumps(saved, indent=2, sort_keys=True))


def test_an_old_grid_run_reloads_as_it_trained_and_a_rerun_changes_nothing(tmp_path, capsys):
  saved, expected = _old_grid_run()
  run = tmp_path / 'run'
  _write_run(run, saved)
  original = (run / 'config.json').read_text()
  upgrade_rundir.main([str(run)])
  assert capsys.readouterr().out.strip() == f'upgraded config.json: {run}'
  assert (run / 'config.json.bak').read_text() == original
  back = schema.from_saved(json.loads((run / 'config.json').read_text())['config'])
  assert back.to_dict() == schema.from_saved(expected).to_dict()
  checks.validate_config(back)
  # Idempotent: a second call leaves both files as they are.
  upgraded = (run / 'config.json').read_text()
  upgrade_rundir.main([str(run)])
  assert capsys.readouterr().out.strip() == f'already current: {run}'
  assert (run / 'config.json').read_text() == upgraded
  assert (run / 'config.json.bak').read_text() == original


def test_a_run_without_the_grid_gets_todays_grid_defaults(tmp_path):
  saved = _today('ganomaly', 'quick')
  # Its unused grid keys were the old defaults; sets=3 would be refused today.
  saved['mask'] = {'kind': 'none', 'size': 0.5, 'cell_sizes': [], 'sets': 3, 'fill': 0.0}
  _write_run(tmp_path / 'run', {'config': saved})
  assert upgrade_rundir.upgrade_rundir(str(tmp_path / 'run')) == ['config.json']
  back = schema.from_saved(json.loads((tmp_path / 'run' / 'config.json').read_text())['config'])
  assert back.mask.to_dict() == schema.base_config().mask.to_dict()
  checks.validate_config(back)


def test_todays_runs_below_a_root_are_left_untouched(tmp_path, capsys):
  old, _ = _old_grid_run()
  for name, saved in (('runs/a/seed-0', {'config': _today()}), ('runs/b/seed-0', old)):
    _write_run(tmp_path / name, saved)
  before = (tmp_path / 'runs/a/seed-0/config.json').read_text()
  upgrade_rundir.main([str(tmp_path)])
  assert capsys.readouterr().out.splitlines() == [
      f'already current: {tmp_path}/runs/a/seed-0',
      f'upgraded config.json: {tmp_path}/runs/b/seed-0',
  ]
  assert (tmp_path / 'runs/a/seed-0/config.json').read_text() == before
  assert not (tmp_path / 'runs/a/seed-0/config.json.bak').exists()


def test_a_folder_without_runs_is_one_error_line(tmp_path, capsys):
  with pytest.raises(SystemExit) as exit_info:
    upgrade_rundir.main([str(tmp_path)])
  assert exit_info.value.code == 1
  assert capsys.readouterr().err.strip() == (
      f'error: no config.json or results.json in or below {tmp_path}: not a run directory.'
  )


def test_old_results_keep_their_test_label_operating_point_apart(tmp_path, capsys):
  # Runs finished before the validation threshold existed stored the oracle (test-label) F1 and
  # threshold under today's names of the validation ones: tables would show them, infer use them.
  old = {'image_auroc': 0.6, 'image_f1': 0.4, 'threshold': 1.5, 'score': 'latent'}
  run = tmp_path / 'run'
  run.mkdir()
  (run / 'results.json').write_text(json.dumps(old))
  upgrade_rundir.main([str(run)])
  assert capsys.readouterr().out.strip() == f'upgraded results.json: {run}'
  upgraded = json.loads((run / 'results.json').read_text())
  assert upgraded == {
      'image_auroc': 0.6,
      'image_f1_oracle': 0.4,
      'threshold_oracle': 1.5,
      'score': 'latent',
  }
  assert json.loads((run / 'results.json.bak').read_text()) == old
  # Today's results (validation operating point beside the oracle one, or none at all) stay as they
  # are.
  today = {
      'image_f1': 0.3,
      'image_f1_oracle': 0.35,
      'threshold': 0.7,
      'threshold_oracle': 0.9,
      'threshold_quantile': 0.95,
  }
  none = {'image_f1': None, 'image_f1_oracle': 0.35, 'threshold': None, 'threshold_quantile': 0.95}
  for results in (today, none, upgraded):
    assert upgrade_rundir.upgrade_results(results) == results
