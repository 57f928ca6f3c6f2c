"""Issue 22's table, row by row, through the real `main` and `infer` commands.

Each row either gives one clear line (an `error:` line and exit code 1 for what cannot run; one
warning line for what can) or a correct result. Rows that stop before anything compiles share one
parametrised test whose cases each start the command once; the rest batch several rows per process.
docs/reliability.md#failure-modes-and-what-each-does lists what each row does.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
from PIL import Image
import pytest

from ganomaly_jax import train
from ganomaly_jax.runtime import checkpoint, disk, rundir
from helpers import browser, split_import_times
from test_reliability import REPO, run_main, tiny_config

# A script carried by a file name adds a <pwned> element if it ever runs (tests/test_report_names.py).
_RUN = "document.body.appendChild(document.createElement('pwned'))"


def _errors(proc: subprocess.CompletedProcess) -> list[str]:
  return [line for line in proc.stderr.splitlines() if line.startswith('error:')]


def _curve_steps(workdir) -> list[int]:
  with open(os.path.join(workdir, rundir.CURVES)) as f:
    return [json.loads(line)['step'] for line in f]


def _image(path: pathlib.Path, size=(32, 32), seed=0) -> None:
  rng = np.random.default_rng(seed)
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)


def _awkward_folder(root: pathlib.Path, mask_size=(32, 32)) -> pathlib.Path:
  """An MVTec-style folder whose train/good also holds a link to itself, a FIFO and a link to
  /dev/zero; its one defect has a ground-truth mask of `mask_size` (width, height)."""
  for i in range(12):
    _image(root / 'train' / 'good' / f'{i:03d}.png', seed=i)
  for i in range(2):
    _image(root / 'test' / 'good' / f'{i:03d}.png', seed=20 + i)
    _image(root / 'test' / 'crack' / f'{i:03d}.png', seed=30 + i)
  mask = np.zeros(mask_size[::-1], np.uint8)
  mask[: mask_size[1] // 2] = 255
  (root / 'ground_truth' / 'crack').mkdir(parents=True)
  Image.fromarray(mask).save(root / 'ground_truth' / 'crack' / '000_mask.png')
  good = root / 'train' / 'good'
  os.symlink(good / 'loop.png', good / 'loop.png')
  os.mkfifo(good / 'pipe.png')
  os.symlink('/dev/zero', good / 'zero.png')
  return root


# --- Train command: rows that stop before anything compiles ------------------------------------


def _mask_row(tmp_path):
  data = _awkward_folder(tmp_path / 'data', mask_size=(7, 40))
  mask = data / 'ground_truth' / 'crack' / '000_mask.png'
  return [f'--config.dataset.name=folder:{data}', '--config.model.channels=3'], [str(mask), '7x40']


_TRAIN_ROWS = {
    # --config.train.lr=nan (no such key): three chained tracebacks before.
    'unknown_key': lambda tmp: (['--config.train.lr=nan'], ["no key 'train.lr'"]),
    # --config=configs/nosuchmethod.py: an absl traceback before.
    'missing_config_file': lambda tmp: (
        ['--config=configs/nosuchmethod.py'],
        ['config file not found: configs/nosuchmethod.py'],
    ),
    # --config.optim.g_lr=nan: trained, then 'Divergence at step 2' before.
    'non_finite_number': lambda tmp: (
        ['--config.optim.g_lr=nan'],
        ['optim.g_lr=nan is not a finite number'],
    ),
    # --config.model.isize=48: a JAX shape traceback before.
    'isize_48': lambda tmp: (
        ['--config.model.isize=48'],
        ['model.isize=48', 'does not reduce the image to 1x1'],
    ),
    # A 7x40 mask for a 32x32 image: used for pixel AUROC / PRO before.
    'mask_of_another_size': _mask_row,
}


@pytest.mark.slow  # starts the command (each case stops before compiling: a few seconds)
@pytest.mark.parametrize('row', sorted(_TRAIN_ROWS))
def test_train_row_stops_with_one_error_line_and_leaves_nothing(row, tmp_path):
  flags, expected = _TRAIN_ROWS[row](tmp_path)
  workdir = tmp_path / 'run'
  proc = run_main(str(workdir), *flags, timeout=180)
  errors = _errors(proc)
  assert proc.returncode == 1 and len(errors) == 1, proc.stderr[-3000:]
  assert all(e in errors[0] for e in expected), errors[0]
  assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  assert not workdir.exists()  # nothing left behind


@pytest.fixture
def one_megabyte_disk(tmp_path):
  """A 1 MB tmpfs (needs root and mount; skipped otherwise: the in-process test covers the check)."""
  yield from _tmpfs(tmp_path / 'small', '1m')


@pytest.mark.slow  # starts the command
def test_workdir_on_a_one_megabyte_disk_is_one_error_line(one_megabyte_disk):
  workdir = one_megabyte_disk / 'run'
  proc = run_main(str(workdir), timeout=180)
  errors = _errors(proc)
  assert proc.returncode == 1 and len(errors) == 1, proc.stderr[-3000:]
  assert f'not enough space for {workdir}' in errors[0] and 'MB free' in errors[0], errors[0]
  assert 'Traceback' not in proc.stderr
  assert os.listdir(one_megabyte_disk) == []


@pytest.fixture
def eight_megabyte_disk(tmp_path):
  """An 8 MB tmpfs (root only), for a disk that fills up while a run writes to it."""
  yield from _tmpfs(tmp_path / 'disk', '8m')


def _tmpfs(mount: pathlib.Path, size: str):
  mount.mkdir()
  if os.geteuid() != 0 or not shutil.which('mount'):
    pytest.skip('mounting a tmpfs needs root')
  done = subprocess.run(
      ['mount', '-t', 'tmpfs', '-o', f'size={size}', 'tmpfs', str(mount)],
      capture_output=True,
      text=True,
      check=False,
  )
  if done.returncode:
    pytest.skip(f'cannot mount a tmpfs here: {done.stderr.strip()}')
  try:
    yield mount
  finally:
    subprocess.run(['umount', str(mount)], check=False)


@pytest.mark.slow  # starts the command twice
def test_a_disk_filled_by_someone_else_stops_the_run_with_one_line(eight_megabyte_disk):
  """The disk fills between two checkpoints: the run stops at the next one with one line, without
  orbax's tracebacks, and resumes from the last good checkpoint once space is freed."""
  workdir = eight_megabyte_disk / 'run'
  every = ['--config.train.log_every=1'] + [
      f'--config.train.{k}=100' for k in ('checkpoint_every', 'eval_every', 'image_every')
  ]
  proc = run_main(str(workdir), '--config.train.num_steps=100000', *every, wait=False)
  try:
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
      if (
          (workdir / 'checkpoints' / '100').is_dir()
          and (workdir / rundir.CURVES).exists()
          and max(_curve_steps(workdir)) >= 110
      ):
        break
      time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    blob = eight_megabyte_disk / 'blob'
    blob.write_bytes(b'\0' * (shutil.disk_usage(eight_megabyte_disk).free - 300 * 1024))
    _, err = proc.communicate(timeout=180)
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.communicate()
  errors = [line for line in err.splitlines() if line.startswith('error:')]
  assert proc.returncode == 1 and len(errors) == 1, err[-3000:]
  assert f'the disk of {workdir} is full' in errors[0] and 'step 200' in errors[0], errors[0]
  assert 'last good checkpoint (step 100) is kept' in errors[0], errors[0]
  assert 'Traceback' not in err, err[-3000:]
  blob.unlink()  # space freed: the same command resumes from step 100
  again = run_main(str(workdir), '--config.train.num_steps=101', *every)
  assert again.returncode == 0, again.stderr[-3000:]
  assert 'Resumed from step 100.' in again.stderr
  assert _curve_steps(workdir) == list(range(1, 102))


def test_free_space_is_checked_before_anything_is_written(tmp_path, monkeypatch):
  monkeypatch.setattr(disk, 'free_bytes', lambda workdir: 10**6)
  with pytest.raises(
      rundir.TrainingError,
      match=r'not enough space for .*run: 1\.0 MB free.*needs ' r'about \d+\.\d MB',
  ) as info:
    train.train_and_evaluate(tiny_config(), str(tmp_path / 'run'))
  assert '\n' not in str(info.value)
  assert not (tmp_path / 'run').exists()


@pytest.mark.slow  # trains twice
def test_a_disk_that_fills_during_the_run_stops_with_one_line_and_resumes(tmp_path, monkeypatch):
  workdir = str(tmp_path / 'run')
  config = tiny_config(**{'train.num_steps': 4, 'train.log_every': 1})
  append = rundir.append_curves

  def full_at_step_4(workdir_, step, summary):
    if step == 4:
      raise OSError(errno.ENOSPC, 'No space left on device', str(rundir.path(workdir_, 'x')))
    append(workdir_, step, summary)

  monkeypatch.setattr(rundir, 'append_curves', full_at_step_4)
  with pytest.raises(rundir.TrainingError) as info:
    train.train_and_evaluate(config, workdir)
  message = str(info.value)
  assert '\n' not in message and 'no space left on the device of' in message
  assert re.search(r'needs about \d+\.\d MB', message) and 'resume' in message
  # The step-2 checkpoint's asynchronous save finished before the error left the loop.
  assert checkpoint.CheckpointStore(workdir).latest_step() == 2  # the last good checkpoint
  monkeypatch.setattr(rundir, 'append_curves', append)  # space freed
  assert train.train_and_evaluate(config, workdir)['steps'] == 4
  assert _curve_steps(workdir) == [1, 2, 3, 4]


# --- Train command: two launches, SIGKILL, damaged checkpoints --------------------------------


@pytest.mark.slow  # three processes of the real command
def test_second_launch_refused_then_killed_run_resumes_with_trimmed_curves(tmp_path):
  """Rows 'the same train command started twice' and 'SIGKILL during training, then resume'."""
  workdir = tmp_path / 'run'
  flags = [
      '--config.train.num_steps=100000',
      '--config.train.log_every=1',
      '--config.train.checkpoint_every=3',
  ]
  first = run_main(str(workdir), *flags, wait=False)
  try:
    deadline = time.time() + 240
    while time.time() < deadline and first.poll() is None:
      if (workdir / rundir.CURVES).exists() and len(_curve_steps(workdir)) >= 7:
        break
      time.sleep(0.5)
    assert first.poll() is None, first.communicate()[1][-3000:]
    second = run_main(str(workdir), *flags, timeout=180)
    errors = _errors(second)
    assert second.returncode == 1 and len(errors) == 1, second.stderr[-3000:]
    assert 'is in use by another run' in errors[0] and f'pid {first.pid} on' in errors[0], errors
  finally:
    first.kill()  # SIGKILL: the lock and the curves are left as a crash leaves them
    first.communicate()
  store = checkpoint.CheckpointStore(str(workdir))
  restored = store.latest_step()
  store.close()
  assert restored is not None and restored % 3 == 0
  assert max(_curve_steps(workdir)) > restored  # rows past the checkpoint, as the issue saw

  third = run_main(
      str(workdir),
      f'--config.train.num_steps={restored + 1}',
      '--config.train.log_every=1',
      '--config.train.checkpoint_every=3',
  )
  assert third.returncode == 0, third.stderr[-3000:]  # the dead run's lock did not block
  assert f'Resumed from step {restored}.' in third.stderr
  assert _curve_steps(workdir) == list(range(1, restored + 2))  # no duplicate, no stale row


@pytest.mark.slow  # trains, then runs the command
def test_damaged_latest_checkpoint_is_named_moved_aside_and_the_older_one_used(tmp_path):
  """Rows 'one truncated file inside the latest checkpoint' and 'a self-referencing symlink in
  train/good' (with a FIFO and a link to /dev/zero beside it)."""
  data = _awkward_folder(tmp_path / 'data')
  workdir = tmp_path / 'run'
  overrides = {'dataset.name': f'folder:{data}', 'model.channels': 3}
  train.train_and_evaluate(tiny_config(**overrides, **{'train.num_steps': 4}), str(workdir))
  with open(workdir / rundir.DATA_REPORT) as f:
    skipped = {
        r: [os.path.basename(p) for p in v['paths']]
        for r, v in json.load(f)['skipped'].items()
        if v['count']
    }
  assert skipped == {'unreadable': ['loop.png'], 'not_a_file': ['pipe.png', 'zero.png']}

  files = [p for p in (workdir / 'checkpoints' / '4').rglob('*') if p.is_file()]
  largest = max(files, key=lambda p: p.stat().st_size)
  with open(largest, 'r+b') as f:
    f.truncate(largest.stat().st_size // 2)
  proc = run_main(
      str(workdir),
      f'--config.dataset.name=folder:{data}',
      '--config.model.channels=3',
      '--config.train.num_steps=6',
      env={'PYTHONPROFILEIMPORTTIME': '1'},
  )
  imported, proc.stderr = split_import_times(proc.stderr)
  # A whole run with train.tensorboard=False (tiny configs) never imports TensorFlow.
  assert 'jax' in imported and 'tensorflow' not in imported
  assert proc.returncode == 0, proc.stderr[-3000:]
  named = [line for line in proc.stderr.splitlines() if 'cannot be restored' in line]
  assert len(named) == 1 and f'{workdir}/checkpoints/4 ' in named[0], proc.stderr[-3000:]
  assert 'Traceback' not in proc.stderr
  assert 'Resumed from step 2.' in proc.stderr
  assert [p.name.split('_')[1] for p in (workdir / rundir.DAMAGED).iterdir()] == ['4']
  assert rundir.read_results(str(workdir))['steps'] == 6
  assert _curve_steps(workdir) == [2, 4, 6]


# --- Infer command ------------------------------------------------------------------------------

# The table's hostile names, and one whose relative path carries a whole <script> element.
_HOSTILE = [
    '<!--<script>.png',
    'hash#1.png',
    'q?x.png',
    'pct%41.png',
    'dup.png',
    'dup.jpg',
    'dup_png.png',
    'a' * 251 + '.png',
    'a' * 251 + '.jpg',
    f'</script><script>{_RUN}</script>.png',
]


def _infer_cli(*args: str, timeout: int = 180, wait: bool = True):
  cmd = [sys.executable, '-m', 'ganomaly_jax.infer', *args]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
  if not wait:
    return subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
  return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def _hostile_folder(root: pathlib.Path, source: pathlib.Path) -> list[str]:
  """The hostile names as copies of one test image, plus a FIFO, a link to /dev/zero and a link to
  itself; returns the decodable names (relative, '/'-separated)."""
  for name in _HOSTILE:
    target = root / name
    target.parent.mkdir(parents=True, exist_ok=True)
    with Image.open(source) as im:
      im.convert('RGB').save(target, format='JPEG' if name.endswith('.jpg') else 'PNG')
  os.mkfifo(root / 'pipe.png')
  os.symlink('/dev/zero', root / 'zero.png')
  os.symlink(root / 'loop.png', root / 'loop.png')
  return sorted(_HOSTILE)


def _digest(folder: pathlib.Path) -> str:
  h = hashlib.sha1()
  for p in sorted(folder.rglob('*')):
    h.update(str(p.relative_to(folder)).encode('utf-8', 'surrogateescape'))
    if p.is_file():
      h.update(p.read_bytes())
  return h.hexdigest()


@pytest.mark.slow  # the shared quick run and three inference processes
def test_infer_on_hostile_names_then_refuses_then_overwrites(masked_run, tmp_path):
  """Rows: FIFO named pipe.png; <!--<script>.png; hash#1.png, q?x.png, pct%41.png; dup.png,
  dup.jpg, dup_png.png; two 251-character names; --out holding an earlier result; a run that never
  finished (no results.json)."""
  images, out = tmp_path / 'images', tmp_path / 'out'
  names = _hostile_folder(images, masked_run.data.test_good[0])
  proc = _infer_cli(f'--workdir={masked_run.workdir}', f'--images={images}', f'--out={out}')
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f'Scored {len(names)} image(s), skipped 3 file(s)' in proc.stdout
  with open(out / 'scores.csv', newline='') as f:
    rows = list(csv.DictReader(f))
  assert sorted(os.path.relpath(r['path'], images) for r in rows) == names
  maps = [p for p in (out / 'maps').rglob('*.png')]
  assert len(maps) == len(names) and all(len(p.name.encode()) <= 200 for p in maps)
  assert not [p for p in os.listdir(out) if p.startswith('.infer-')]
  page = (out / 'index.html').read_text(encoding='utf-8')
  skipped = page[page.index('id="skipped"') : page.index('id="entries"')]
  assert 'not_a_file (2)' in skipped and 'unreadable (1)' in skipped
  assert str(images / 'pipe.png') in skipped

  dom = browser.render_checked(out / 'index.html', tmp_path / 'profile')
  assert '<pwned' not in dom, 'a script carried by a file name ran'
  assert sorted(c['name'] for c in browser.cards(dom)) == names  # every card, its real name
  decoded = re.search(r'<pre id="decoded">(\d+)/(\d+)</pre>', dom)
  assert decoded is not None and decoded.group(1) == decoded.group(2), dom[-2000:]

  # --out holding that result: refused, nothing touched.
  before = _digest(out)
  again = _infer_cli(f'--workdir={masked_run.workdir}', f'--images={images}', f'--out={out}')
  errors = _errors(again)
  assert again.returncode == 1 and len(errors) == 1, again.stderr[-3000:]
  assert 'holds an earlier result' in errors[0] and '--overwrite' in errors[0]
  assert _digest(out) == before

  # A run that never finished, into the same --out with --overwrite: one warning, empty verdicts
  # and a report that says why; the earlier maps are gone; a killed call's staging folder too.
  unfinished = tmp_path / 'unfinished'
  shutil.copytree(masked_run.workdir, unfinished)
  (unfinished / rundir.RESULTS).unlink()
  two = tmp_path / 'two'
  two.mkdir()
  shutil.copy(masked_run.data.test_good[0], two / 'good.png')
  shutil.copy(masked_run.data.test_defect[0], two / 'defect.png')
  (out / '.infer-999999999-left').mkdir()  # a pid that cannot exist: left by a SIGKILLed call
  third = _infer_cli(f'--workdir={unfinished}', f'--images={two}', f'--out={out}', '--overwrite')
  assert third.returncode == 0, third.stderr[-3000:]
  warned = [line for line in third.stderr.splitlines() if 'never finished' in line]
  assert len(warned) == 1 and warned[0].startswith('W'), third.stderr[-3000:]
  with open(out / 'scores.csv', newline='') as f:
    assert [r['anomalous'] for r in csv.DictReader(f)] == ['', '']
  assert 'No anomalous / normal verdicts: the run has no results.json' in (
      out / 'index.html'
  ).read_text(encoding='utf-8')
  assert sorted(p.name for p in (out / 'maps').rglob('*')) == ['defect.png', 'good.png']
  assert sorted(os.listdir(out)) == ['index.html', 'maps', 'scores.csv']


@pytest.mark.slow  # the shared quick run and one inference process
def test_sigterm_during_inference_removes_the_staging_folder(masked_run, tmp_path):
  images, out = tmp_path / 'images', tmp_path / 'out'
  images.mkdir()
  for i in range(200):
    shutil.copy(masked_run.data.test_good[i % len(masked_run.data.test_good)], images / f'{i}.png')
  out.mkdir()
  (out / 'keep.txt').write_text('mine')
  proc = _infer_cli(
      f'--workdir={masked_run.workdir}',
      f'--images={images}',
      f'--out={out}',
      '--batch_size=2',
      '--decode_threads=0',
      wait=False,
  )
  deadline = time.time() + 120
  while time.time() < deadline and proc.poll() is None:
    if any(p.startswith('.infer-') for p in os.listdir(out)):
      break
    time.sleep(0.05)
  assert proc.poll() is None, proc.communicate()[1][-3000:]
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  errors = [line for line in err.splitlines() if line.startswith('error:')]
  assert proc.returncode == 1 and len(errors) == 1 and 'SIGTERM' in errors[0], err[-3000:]
  assert os.listdir(out) == ['keep.txt']
