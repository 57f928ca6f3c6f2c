"""Run directories in a real bucket API: every command against the GCS emulator (tests/gcs_emulator.py).

A quick run with `--workdir=gs://...` trains, checkpoints (latest and best), dies by SIGKILL and
resumes exactly, and writes its results into the bucket; `infer` scores a local folder from that
run; a benchmark root in the bucket gets its tables; the workdir lease refuses a second launch (a
folder dataset in a bucket is one clear error: tests/test_data_sources.py); a bucket that stops
answering mid-run stops the run with one line naming the last checkpoint that reached it, and the
same command resumes from there once the bucket is back. TensorBoard events go
to a local folder (clu writes them through tf.io.gfile, which cannot be pointed at an emulator:
tests/gcs_emulator.py).
"""

import json
import os
import re
import signal
import subprocess
import sys
import time

from etils import epath
import numpy as np
from PIL import Image
import pytest

from ganomaly_jax.runtime import checkpoint, rundir
from helpers import REPO, tiny

pytestmark = pytest.mark.slow

TINY = tiny.spec(**tiny.SMALL_DATA)
HELPER = os.path.join(REPO, 'tests', 'helpers', 'emulated_main.py')
# What two runs with equal results still differ in.
TIMINGS = ('phase_seconds', 'train_wall_time_s', 'wall_time_s')


def emulated(emulator, cwd, module, *args, kill_after=None, timeout=300):
  """`python -m <module> ARGS` pointed at the emulator (tests/helpers/emulated_main.py)."""
  hook = [] if kill_after is None else [f'--kill-after={kill_after}']
  env = dict(os.environ, **emulator.env, LOCAL_EVENTS=str(cwd / 'events'), TF_CPP_MIN_LOG_LEVEL='3')
  return subprocess.run(
      [sys.executable, HELPER, module, *hook, *args],
      cwd=cwd,
      env=env,
      capture_output=True,
      text=True,
      timeout=timeout,
  )


def train(emulator, cwd, workdir, *flags, kill_after=None):
  return emulated(
      emulator,
      cwd,
      'ganomaly_jax.main',
      f'--config={TINY}',
      f'--workdir={workdir}',
      *flags,
      kill_after=kill_after,
  )


def without_timings(results):
  return {k: v for k, v in results.items() if k not in TIMINGS}


def test_epath_and_tensorstore_read_and_write_the_emulated_bucket(gcs_emulator):
  import tensorstore as ts

  root = epath.Path(gcs_emulator.root('smoke'))
  (root / 'a').mkdir(parents=True, exist_ok=True)
  (root / 'a' / 'x.json').write_text('{"v": 1}')
  (root / 'a' / 'x.json').rename(root / 'a' / 'y.json')
  assert [p.name for p in (root / 'a').iterdir()] == ['y.json']
  assert json.loads((root / 'a' / 'y.json').read_text()) == {'v': 1}
  spec = {'driver': 'gcs', 'bucket': gcs_emulator.root('').split('/')[2], 'path': 'smoke/arr/'}
  array = ts.open(
      {'driver': 'zarr', 'kvstore': spec}, create=True, dtype=ts.float32, shape=[3, 2]
  ).result()
  array.write(np.arange(6, dtype=np.float32).reshape(3, 2)).result()
  assert (root / 'arr' / '.zarray').exists()  # tensorstore's bytes, listed through gcsfs
  np.testing.assert_array_equal(array.read().result(), np.arange(6).reshape(3, 2))


def test_quick_run_in_the_bucket_resumes_exactly_after_sigkill_and_infer_reads_it(
    gcs_emulator, tmp_path
):
  straight, killed = gcs_emulator.root('straight'), gcs_emulator.root('killed')
  flags = (
      '--config.train.num_steps=6',
      '--config.train.checkpoint_every=2',
      '--config.train.tensorboard=True',  # events from a gs:// run directory (tiny configs: off)
  )
  done = train(gcs_emulator, tmp_path, straight, *flags)
  assert done.returncode == 0, done.stderr[-3000:]

  died = train(gcs_emulator, tmp_path, killed, *flags, kill_after=4)
  assert died.returncode == -signal.SIGKILL, died.stderr[-3000:]
  assert rundir.read_results(killed) is None
  # Whatever periodic checkpoint had reached the bucket before the kill.
  resume_from = checkpoint.CheckpointStore(killed).latest_step()
  assert resume_from in (2, 4), resume_from

  resumed = train(gcs_emulator, tmp_path, killed, *flags)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f'Resumed from step {resume_from}.' in resumed.stderr, resumed.stderr[-3000:]
  results = rundir.read_results(killed)
  assert results['steps'] == 6
  assert without_timings(results) == without_timings(rundir.read_results(straight))
  names = {p.name for p in rundir.path(killed).iterdir()}
  assert {rundir.RESULTS, rundir.CONFIG, rundir.CURVES, rundir.CHECKPOINTS, rundir.BEST} <= names
  assert any(p.name.isdigit() for p in rundir.path(killed, rundir.BEST).iterdir())
  with rundir.path(killed, rundir.CURVES).open() as f:  # rows past the restored step went
    assert [json.loads(line)['step'] for line in f] == [2, 4, 6]
  assert os.listdir(tmp_path / 'events' / 'emulated-bucket' / 'killed')  # TensorBoard, locally
  assert not os.path.exists(tmp_path / 'gs:')  # nothing landed in a local folder named 'gs:'

  images = tmp_path / 'images'
  images.mkdir()
  rng = np.random.default_rng(0)
  for i in range(3):
    Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(images / f'{i}.png')
  scored = emulated(
      gcs_emulator,
      tmp_path,
      'ganomaly_jax.infer',
      f'--workdir={killed}',
      f'--images={images}',
      f'--out={tmp_path / "scored"}',
  )
  assert scored.returncode == 0, scored.stderr[-3000:]
  with open(tmp_path / 'scored' / 'scores.csv') as f:
    assert len(f.read().strip().splitlines()) == 1 + 3  # header + one row per image


def test_a_second_launch_on_a_leased_bucket_workdir_is_refused(gcs_emulator, tmp_path):
  workdir = gcs_emulator.root('leased')
  with rundir.WorkdirLock(workdir, settle_s=0.2):  # a live holder: this test process
    refused = train(gcs_emulator, tmp_path, workdir)
  assert refused.returncode != 0
  errors = [line for line in refused.stderr.splitlines() if line.startswith('error:')]
  assert len(errors) == 1 and 'is in use by another run' in errors[0], refused.stderr[-2000:]
  assert rundir.read_results(workdir) is None


def test_a_benchmark_root_in_the_bucket_gets_its_tables(gcs_emulator, tmp_path):
  root = gcs_emulator.root('suite')
  done = emulated(
      gcs_emulator,
      tmp_path,
      'ganomaly_jax.experiments.benchmark',
      '--suite=digits:classes=0,seeds=0,methods=pca',
      f'--workdir={root}',
  )
  assert done.returncode == 0, done.stderr[-3000:]
  names = {p.name for p in epath.Path(root).iterdir()}
  assert {'results.md', 'results.csv'} <= names, names
  assert 'pca' in (epath.Path(root) / 'results.md').read_text()


def test_a_bucket_that_stops_answering_stops_the_run_with_one_line_and_it_resumes(
    gcs_emulator, tmp_path
):
  workdir = gcs_emulator.root('outage')
  run = subprocess.Popen(
      [
          sys.executable,
          HELPER,
          'ganomaly_jax.main',
          f'--config={TINY}',
          f'--workdir={workdir}',
          '--config.train.num_steps=100000',
          # The server stops between two saves: a save in flight would wait out tensorstore's own
          # retries (many minutes); the run meets the outage at its next curves write instead.
          '--config.train.checkpoint_every=200',
          '--config.train.eval_every=100000',
          '--config.train.log_every=5',
      ],
      cwd=tmp_path,
      env=dict(os.environ, **gcs_emulator.env, LOCAL_EVENTS=str(tmp_path / 'events')),
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
  )
  try:
    deadline = time.time() + 240
    while checkpoint.CheckpointStore(workdir).latest_step() is None:  # a finished save, read back
      assert run.poll() is None and time.time() < deadline, run.communicate()[1][-3000:]
      time.sleep(1)
    gcs_emulator.stop()  # the bucket goes away mid-run
    _, err = run.communicate(timeout=400)
  finally:
    if run.poll() is None:
      run.kill()
    gcs_emulator.start()
  assert run.returncode == 1, err[-3000:]
  errors = [line for line in err.splitlines() if line.startswith('error:')]
  assert len(errors) == 1, err[-3000:]
  kept = re.search(r'the last checkpoint that reached it is step (\d+) \((\S+)\)', errors[0])
  assert kept and f'gs://{gcs_emulator.root("").split("/")[2]} stopped answering' in errors[0]
  step = int(kept.group(1))
  assert kept.group(2) == f'{workdir}/checkpoints/{step}'

  resumed = train(gcs_emulator, tmp_path, workdir, f'--config.train.num_steps={step + 2}')
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f'Resumed from step {step}.' in resumed.stderr, resumed.stderr[-3000:]
  assert rundir.read_results(workdir)['steps'] == step + 2
