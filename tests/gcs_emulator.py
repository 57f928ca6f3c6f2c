"""A real GCS JSON API on 127.0.0.1: gcp-storage-emulator in a process of its own, for `gs://` tests.

Unlike tests/fake_gcs.py (fsspec's in-memory file system standing in for gcsfs), every byte here
goes over HTTP to a server that speaks the Cloud Storage JSON API, through the libraries a run uses
on a real bucket:

  etils.epath   -> fsspec -> gcsfs        STORAGE_EMULATOR_HOST (and EPATH_USE_TF=false, below)
  orbax arrays  -> tensorstore's GCS driver  TENSORSTORE_GCS_HTTP_URL
  orbax's own files (metadata, commit markers) -> etils.epath, as above

What cannot reach it: `tf.io.gfile`, which clu's TensorBoard writer uses. TensorFlow's GCS file
system has its endpoint (https://www.googleapis.com/storage/v1/) compiled in and reads no variable
that would point it elsewhere, so the tests send the events to a local folder
(tests/helpers/local_events.py) and say so. For the same reason epath is told to use fsspec: with
TensorFlow installed it would otherwise pick tf.io.gfile for `gs://` (runs do the same when gcsfs
is installed: `runtime/startup.py`).

The server (tests/helpers/gcs_emulator_server.py) is gcp-storage-emulator with one gap filled: its
downloads carry the `x-goog-generation` header of real GCS, without which tensorstore's OCDBT store
refuses them. It keeps its objects on disk (a tmp folder), so it can be stopped mid-run and started
again on the same port with everything written before still there.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

BUCKET = 'emulated-bucket'
# The emulator with the generation headers of GCS's downloads, which orbax's store needs.
_SERVER = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), 'helpers', 'gcs_emulator_server.py'
)


def _free_port() -> int:
  with contextlib.closing(socket.socket()) as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


class GcsEmulator:
  """gcp-storage-emulator serving BUCKET from `data_dir` on 127.0.0.1:`port`."""

  def __init__(self, data_dir: str):
    self.data_dir = data_dir
    self.port = _free_port()
    self.url = f'http://127.0.0.1:{self.port}'
    self._proc: subprocess.Popen | None = None
    self._log = open(os.path.join(data_dir, 'emulator.log'), 'ab')

  @property
  def env(self) -> dict[str, str]:
    """The variables that point every library that can be pointed at this server."""
    return {
        'STORAGE_EMULATOR_HOST': self.url,  # gcsfs (and google-cloud-storage)
        'TENSORSTORE_GCS_HTTP_URL': self.url,  # orbax's arrays
        'EPATH_USE_TF': 'false',  # epath through fsspec/gcsfs, not tf.io.gfile
        # gcsfs asks GCS's control API (gRPC, with Google credentials) for each bucket's layout,
        # and again on every call while the answer is "unknown": the emulator has no such API.
        'GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT': 'false',
        # tests/helpers/emulated_main.py: gcsfs's 31 s of pauses before a stopped bucket is an
        # error become 4 s (the outage test meets two such calls).
        'GCSFS_BACKOFF_SCALE': '0.125',
    }

  def root(self, name: str) -> str:
    return f'gs://{BUCKET}/{name}'

  def start(self, timeout_s: float = 30.0) -> None:
    """Starts the server (a no-op while it runs) and waits until it answers."""
    if self._proc is not None and self._proc.poll() is None:
      return
    self._proc = subprocess.Popen(
        [
            sys.executable,
            _SERVER,
            f'--port={self.port}',
            f'--bucket={BUCKET}',
            f'--data-dir={os.path.join(self.data_dir, "objects")}',
        ],
        stdout=self._log,
        stderr=self._log,
    )
    deadline = time.time() + timeout_s
    while True:
      try:
        with urllib.request.urlopen(f'{self.url}/storage/v1/b/{BUCKET}', timeout=1) as r:
          if r.status == 200:
            return
      except OSError:
        pass
      if self._proc.poll() is not None or time.time() > deadline:
        raise RuntimeError(f'the GCS emulator did not start (log: {self._log.name})')
      time.sleep(0.1)

  def stop(self) -> None:
    if self._proc is not None and self._proc.poll() is None:
      self._proc.terminate()
      try:
        self._proc.wait(timeout=10)
      except subprocess.TimeoutExpired:
        self._proc.kill()
        self._proc.wait()
    self._proc = None

  def close(self) -> None:
    self.stop()
    self._log.close()


def _reset_epath_caches() -> None:
  from etils.epath import backend as epath_backend
  from etils.epath import gpath

  gpath._is_tf_installed.cache_clear()  # reads EPATH_USE_TF once, then caches the answer
  type(epath_backend.fsspec_backend)._get_filesystem.cache_clear()


@pytest.fixture(scope='module')
def gcs_emulator(tmp_path_factory):
  """A running emulator for one test module; this process's epath and gcsfs are pointed at it."""
  emulator = GcsEmulator(str(tmp_path_factory.mktemp('gcs')))
  emulator.start()
  saved = {k: os.environ.get(k) for k in emulator.env}
  os.environ.update(emulator.env)
  _reset_epath_caches()
  try:
    yield emulator
  finally:
    emulator.close()
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
    _reset_epath_caches()
