"""`gs://` without a network: fsspec's in-memory file system registered for the gs protocol.

etils.epath sends `gs://` paths to tf.io.gfile when TensorFlow is installed and to fsspec otherwise
(EPATH_USE_TF=false forces fsspec). fsspec asks its registry for the `gs`/`gcs` implementation,
which is normally gcsfs; registering an in-memory file system there instead makes every epath call
of our code run against a real `gs://bucket/...` string: the same URL parsing, the same backend methods
(open, rename, mkdir, glob, exists), only the bytes stay in this process. It stands in for GCS as
far as our code is concerned; what it cannot show is GCS's own behaviour (latency, eventual listing,
non-atomic directory renames) and anything outside epath (orbax's tensorstore array writes, clu's
tf.io.gfile writer).
"""

from __future__ import annotations

import importlib

from etils.epath import backend as epath_backend
from etils.epath import gpath
import fsspec
from fsspec.implementations import memory
import pytest

# The module, not the read-only `fsspec.registry` view of its dict that fsspec exports.
_registry = importlib.import_module('fsspec.registry')._registry


class InMemoryGcs(memory.MemoryFileSystem):
  """MemoryFileSystem answering to gs:// and gcs:// (its own store, not memory://'s)."""

  protocol = ('gs', 'gcs')
  store: dict = {}
  pseudo_dirs = ['']


def _reset_epath_caches() -> None:
  gpath._is_tf_installed.cache_clear()  # reads EPATH_USE_TF once, then caches the answer
  type(epath_backend.fsspec_backend)._get_filesystem.cache_clear()


@pytest.fixture
def gs_root(monkeypatch):
  """A fresh `gs://test-bucket/<n>` root served from memory; restores epath and fsspec after."""
  monkeypatch.setenv('EPATH_USE_TF', 'false')
  saved = {p: _registry.get(p) for p in InMemoryGcs.protocol}
  for p in InMemoryGcs.protocol:
    fsspec.register_implementation(p, InMemoryGcs, clobber=True)
  _reset_epath_caches()
  InMemoryGcs.store.clear()
  InMemoryGcs.pseudo_dirs[:] = ['']
  yield 'gs://test-bucket/run'
  InMemoryGcs.store.clear()
  for p, cls in saved.items():
    if cls is None:
      _registry.pop(p, None)
    else:
      fsspec.register_implementation(p, cls, clobber=True)
  monkeypatch.delenv('EPATH_USE_TF')
  _reset_epath_caches()
