"""Sweeps (expansion, naming, validation before any run, dry run, tables, skipping finished runs)
and the launch scripts (syntax, shellcheck, the TPU script's commands in dry-run mode)."""

import os
import shutil
import subprocess
import sys

import pytest

from ganomaly_jax.runtime import rundir
from ganomaly_jax.experiments import sweep, tables
from helpers import REPO, tiny

ABLATION = os.path.join(REPO, 'configs', 'sweeps', 'ablation.py')
MODIFIED = os.path.join(REPO, 'configs', 'ganomaly_modified.py')
# The tiny GANomaly on a small share of the data, 2 steps.
TINY = tiny.spec(**tiny.SMALL_DATA, steps=2)
LAUNCH = [
    os.path.join(REPO, 'launch', name)
    for name in ('tpu_pod.sh', 'run_on_host.sh', 'slurm.sbatch', 'local_devices.sh')
]


def write_sweep(path, runs) -> str:
  path.write_text(f'def get_sweep():\n  return {runs!r}\n')
  return str(path)


def never_called(config, workdir):
  raise AssertionError(f'a run started: {workdir}')


def fake_results(workdir, steps, auroc=0.5):
  os.makedirs(workdir, exist_ok=True)
  results = {
      'image_auroc': auroc,
      'image_ap': 0.4,
      'image_f1': 0.3,
      'image_f1_oracle': 0.35,
      'steps': steps,
      'train_wall_time_s': 1.0,
  }
  rundir.write_json(rundir.path(workdir, rundir.RESULTS), results)
  return results


# ------------------------------------------------------------------ naming and expansion


def test_run_names_are_stable_and_safe():
  assert sweep.run_name({}) == 'baseline'
  assert sweep.run_name({'train.soft_labels': False}) == 'train.soft_labels-False'
  assert sweep.run_name({'optim.d_lr': 2e-4}) == 'optim.d_lr-0.0002'
  two = sweep.run_name({'seed': 1, 'model.kernel_size': 4})
  assert two == sweep.run_name({'model.kernel_size': 4, 'seed': 1}) == 'model.kernel_size-4+seed-1'
  # Unsafe characters are replaced, and a hash keeps values that differ only there apart.
  a = sweep.run_name({'dataset.name': 'folder:/data/a b'})
  b = sweep.run_name({'dataset.name': 'folder:/data/a_b'})
  assert a != b and '/' not in a and ' ' not in a and a.startswith('dataset.name-folder__data_a_b_')
  assert len(sweep.run_name({'dataset.name': 'x' * 500})) <= 120


def test_ablation_expands_to_one_run_per_modification(tmp_path):
  quick = sweep.expand(f'{MODIFIED}:quick', ABLATION, str(tmp_path))
  names = [r.name for r in quick]
  assert names == [
      'baseline',
      'model.kernel_size-4',
      'model.max_channels-0',
      'train.soft_labels-False',
      'train.label_flip_prob-0.0',
      'train.d_input_noise_std-0.0',
      'optim.d_lr-0.0002',
      'loss.adv_extra-False',
  ]
  base = quick[0].config.to_dict()
  for run in quick[1:]:
    ((key, value),) = run.overrides.items()
    section, leaf = key.split('.')
    assert run.config[section][leaf] == value != base[section][leaf]
    assert run.workdir == os.path.join(str(tmp_path), run.name)
  # Without quick the latent is 512, so reverting it to GANomaly's 100 is part of the ablation.
  full = sweep.expand(MODIFIED, ABLATION, str(tmp_path))
  assert len(full) == 9 and full[2].overrides == {'model.latent_dim': 100}
  assert not os.listdir(tmp_path)  # expanding creates nothing


def test_bad_override_fails_before_any_run(tmp_path):
  root = tmp_path / 'root'
  bad = write_sweep(tmp_path / 's.py', [{'train.soft_labels': False}, {'train.soft_label': True}])
  with pytest.raises(
      sweep.SweepError,
      match=r"run 1 .*unknown config key 'train.soft_label' "
      r"\(did you mean 'train.soft_labels'\?\)",
  ):
    sweep.run_sweep(TINY, bad, str(root), train_fn=never_called)
  assert not root.exists()
  for runs, match in (
      ([{'model.kernel_size': 9}], 'model.kernel_size=9 must be 3..6'),
      ([{'train.num_steps': 'many'}], 'train.num_steps=.many. has the wrong type'),
      ([{'train': 1}], "'train' is a group of keys"),
      ([{'seed': 1}, {'seed': 1}], 'the same overrides as run 0'),
  ):
    with pytest.raises(sweep.SweepError, match=match):
      sweep.run_sweep(TINY, write_sweep(tmp_path / 's.py', runs), str(root), train_fn=never_called)
  assert not root.exists()


def test_get_sweep_may_take_the_base_config(tmp_path):
  path = tmp_path / 's.py'
  path.write_text('def get_sweep(config):\n  return [{"seed": config.seed + 5}]\n')
  (run,) = sweep.expand(TINY, str(path), str(tmp_path))
  assert run.name == 'seed-5' and run.config.seed == 5


@pytest.mark.slow
def test_dry_run_prints_one_command_per_run(tmp_path):
  root = tmp_path / 'ablation'
  spec = 'configs/ganomaly_modified.py:quick'
  proc = subprocess.run(
      [
          sys.executable,
          '-m',
          'ganomaly_jax.experiments.sweep',
          f'--config={spec}',
          '--sweep=configs/sweeps/ablation.py',
          f'--workdir={root}',
          '--dry_run',
      ],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=120,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  lines = proc.stdout.splitlines()
  assert len(lines) == 8
  assert lines[0] == f'python -m ganomaly_jax.main --config={spec} --workdir={root}/baseline'
  assert lines[3] == (
      f'python -m ganomaly_jax.main --config={spec} '
      f'--workdir={root}/train.soft_labels-False --config.train.soft_labels=False'
  )
  assert not root.exists()  # nothing ran


# ------------------------------------------------------------------ running and tables


def test_table_records_failures_and_retries_them(tmp_path):
  root = str(tmp_path / 'root')
  path = write_sweep(tmp_path / 's.py', [{}, {'seed': 1}, {'seed': 2}])

  def flaky(config, workdir):
    if config.seed == 1:
      raise rundir.TrainingError('Divergence at step 1 (non-finite g_loss); stopping.')
    return fake_results(workdir, config.train.num_steps, auroc=0.5 + config.seed / 10)

  records = sweep.run_sweep(TINY, path, root, train_fn=flaky)
  assert [r.status for r in records] == [
      'done',
      'failed: Divergence at step 1 (non-finite g_loss); stopping.',
      'done',
  ]
  rows = sweep.read_table(root)
  assert [r['run'] for r in rows] == ['baseline', 'seed-1', 'seed-2']
  assert rows[2]['overrides'] == 'seed=2' and float(rows[2]['image_auroc']) == pytest.approx(0.7)
  assert rows[1]['image_auroc'] == '' and rows[2]['steps'] == '2'
  md = open(os.path.join(root, sweep.RESULTS_MD)).read().splitlines()
  assert md[2].startswith('| run | overrides | status | image_auroc | image_ap | image_f1 |')
  assert len([line for line in md if line.startswith('| ')]) == 4  # header + 3 runs
  assert '| seed-2 | `seed=2` | done | 0.7000 |' in md[-1]

  calls = []
  again = sweep.run_sweep(
      TINY, path, root, train_fn=lambda c, w: calls.append(w) or fake_results(w, 2)
  )
  assert [r.status for r in again] == ['skipped', 'done', 'skipped']
  assert calls == [os.path.join(root, 'seed-1')]  # only the failed run is retried


def test_preemption_stops_the_sweep_and_keeps_the_table(tmp_path):
  root = str(tmp_path / 'root')
  path = write_sweep(tmp_path / 's.py', [{}, {'seed': 1}])
  records = sweep.run_sweep(TINY, path, root, train_fn=lambda c, w: {'preempted': True, 'steps': 1})
  assert [r.status for r in records] == ['preempted', 'pending']
  assert [r['status'] for r in sweep.read_table(root)] == ['preempted', 'pending']


@pytest.mark.slow
def test_real_sweep_of_two_runs_then_skips_them(tmp_path):
  root = str(tmp_path / 'root')
  path = write_sweep(tmp_path / 's.py', [{}, {'train.soft_labels': True}])
  records = sweep.run_sweep(TINY, path, root)
  assert [r.status for r in records] == ['done', 'done']
  rows = sweep.read_table(root)
  assert [r['run'] for r in rows] == ['baseline', 'train.soft_labels-True']
  for row, record in zip(rows, records):
    assert row['steps'] == '2' and 0.0 <= float(row['image_auroc']) <= 1.0
    assert float(row['image_auroc']) == pytest.approx(record.results['image_auroc'])
    assert float(row['wall_time_s']) > 0
    assert rundir.read_results(record.run.workdir)['steps'] == 2
  md = open(os.path.join(root, sweep.RESULTS_MD)).read()
  assert md.count('| done |') == 2

  # Finished runs are skipped, not retrained (never_called fails the test if training starts).
  again = sweep.run_sweep(TINY, path, root, train_fn=never_called)
  assert [r.status for r in again] == ['skipped', 'skipped']
  assert [r['wall_time_s'] for r in sweep.read_table(root)] == [r['wall_time_s'] for r in rows]


# ------------------------------------------------------------------ launch scripts


@pytest.mark.parametrize('script', LAUNCH, ids=os.path.basename)
def test_launch_script_syntax(script):
  assert os.access(script, os.X_OK), f'{script} is not executable'
  with open(script) as f:
    text = f.read()
  assert text.startswith('#!') and 'set -euo pipefail' in text and '\n# Usage' in text
  proc = subprocess.run(['bash', '-n', script], capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr


def test_launch_scripts_pass_shellcheck():
  if shutil.which('shellcheck') is None:
    pytest.skip('shellcheck is not installed (apt-get install -y shellcheck); only bash -n ran')
  proc = subprocess.run(['shellcheck', *LAUNCH], capture_output=True, text=True)
  assert proc.returncode == 0, proc.stdout


def test_tpu_pod_dry_run_commands():
  script = LAUNCH[0]
  env = dict(os.environ, DRY_RUN='1', TPU_NAME='pod', ZONE='z1', ACCELERATOR_TYPE='v4-32')
  out = subprocess.run(
      [script, 'gs://bkt/runs/x', '--config=configs/ganomaly.py:quick'],
      env=env,
      capture_output=True,
      text=True,
      check=True,
  ).stdout.splitlines()
  assert out[0].startswith(
      'gcloud compute tpus tpu-vm create pod --zone=z1 --accelerator-type=v4-32'
  )
  assert out[1].startswith('gcloud compute tpus tpu-vm scp ') and '--worker=all' in out[1]
  assert out[2].startswith('gcloud compute tpus tpu-vm ssh pod --worker=all')
  assert 'tpu_pod.sh\\ --on-worker\\ gs://bkt/runs/x\\ --config=configs/ganomaly.py:quick' in out[2]

  worker = subprocess.run(
      [script, '--on-worker', 'gs://bkt/runs/x', '--config=c.py'],
      env=env,
      capture_output=True,
      text=True,
      check=True,
  ).stdout.splitlines()
  assert not any('gcsfuse' in line for line in worker)  # the code writes gs:// itself
  assert worker[-1].startswith('env GANOMALY_DISTRIBUTED=1 ')
  assert worker[-1].endswith('python -m ganomaly_jax.main --workdir=gs://bkt/runs/x --config=c.py ')
  bad = subprocess.run([script, '/not/a/bucket'], env=env, capture_output=True, text=True)
  assert bad.returncode == 2 and 'must be a gs:// path' in bad.stderr


def test_tpu_pod_benchmark_gives_each_worker_its_share():
  script = LAUNCH[0]
  env = dict(os.environ, DRY_RUN='1', TPU_NAME='pod', ZONE='z1')
  out = subprocess.run(
      [script, '--benchmark', 'gs://bkt/b', '--suite=digits', '--parallel=4'],
      env=env,
      capture_output=True,
      text=True,
      check=True,
  ).stdout.splitlines()
  assert 'tpu_pod.sh\\ --on-worker\\ --benchmark\\ gs://bkt/b\\ --suite=digits' in out[-1]
  env.update(WORKER_ID='3', WORKER_COUNT='8')
  worker = subprocess.run(
      [script, '--on-worker', '--benchmark', 'gs://bkt/b', '--suite=digits'],
      env=env,
      capture_output=True,
      text=True,
      check=True,
  ).stdout.splitlines()
  command = worker[-1]
  assert 'GANOMALY_DISTRIBUTED' not in command  # no jax.distributed: each worker on its own
  assert 'TPU_SKIP_MDS_QUERY=1' in command and 'TPU_HOST_BOUNDS=1\\,1\\,1' in command
  assert command.endswith(
      'python -m ganomaly_jax.experiments.benchmark --workdir=gs://bkt/b '
      '--share=3/8 --suite=digits '
  )


def test_local_devices_checks_its_arguments():
  script = LAUNCH[3]
  bad = subprocess.run([script, 'eight'], capture_output=True, text=True)
  assert bad.returncode == 2 and 'must be positive integers' in bad.stderr
  uneven = subprocess.run(
      [script, '8'], env=dict(os.environ, PROCESSES='3'), capture_output=True, text=True
  )
  assert uneven.returncode == 2 and 'do not split' in uneven.stderr


def test_tables_never_show_the_oracle_f1_under_the_plain_name(tmp_path):
  run = sweep.Run('baseline', {}, None, str(tmp_path))
  new = sweep.table_row(
      sweep.Record(run, 'done', {'image_f1': 0.3, 'image_f1_oracle': 0.35, 'image_fpr': 0.05})
  )
  assert (new['image_f1'], new['image_f1_oracle'], new['image_fpr']) == (0.3, 0.35, 0.05)
  # Without validation normals there is no operating point: image_f1 is null, the oracle stays apart.
  none = sweep.table_row(
      sweep.Record(run, 'skipped', {'image_auroc': 0.6, 'image_f1': None, 'image_f1_oracle': 0.4})
  )
  assert none['image_f1'] is None and none['image_f1_oracle'] == 0.4 and none['image_auroc'] == 0.6
  sweep.write_tables(
      str(tmp_path), [sweep.Record(run, 'skipped', {'image_f1': None, 'image_f1_oracle': 0.4})], 't'
  )
  header = open(tmp_path / sweep.RESULTS_MD).read().splitlines()[2]
  assert 'image_f1_oracle' in header and 'image_fpr' in header
  assert sweep.read_table(str(tmp_path))[0]['image_f1'] == ''


def test_sweep_and_benchmark_tables_on_a_gs_root(gs_root, tmp_path, monkeypatch):
  """A sweep or benchmark root on gs:// (in memory, tests/fake_gcs.py): the tables are written and read
  through epath, and nothing lands in a local folder named after the bucket."""
  monkeypatch.chdir(tmp_path)
  run = sweep.Run('seed-1', {'seed': 1}, None, f'{gs_root}/seed-1')
  sweep.write_tables(gs_root, [sweep.Record(run, 'done', {'image_auroc': 0.75, 'steps': 2})], 'gs')
  rows = sweep.read_table(gs_root)
  assert [(r['run'], r['image_auroc'], r['steps']) for r in rows] == [('seed-1', '0.75', '2')]
  assert (
      '| seed-1 | `seed=1` | done | 0.7500 |' in rundir.path(gs_root, sweep.RESULTS_MD).read_text()
  )
  bench_rows = [
      {
          'suite': 'digits',
          'method': 'pca',
          'class': '3',
          'seed': 0,
          'status': 'done',
          'image_auroc': 0.5,
      }
  ]
  tables.write_csv(gs_root, bench_rows)
  assert tables.read_csv(gs_root)[0]['image_auroc'] == '0.5'
  assert not list(tmp_path.iterdir())  # no local shadow such as ./gs:/test-bucket
