"""host_memory: glibc's malloc_trim is found where it exists, and never raises elsewhere."""

import platform

import pytest

from ganomaly_jax.cpu import host_memory


@pytest.mark.skipif(
    platform.system() != 'Linux' or platform.libc_ver()[0] != 'glibc',
    reason='malloc_trim is glibc-only',
)
def test_trim_is_found_on_glibc_and_runs():
  assert host_memory._malloc_trim() is not None
  scratch = [bytearray(1 << 20) for _ in range(64)]  # 64 MiB freed below: something to return
  del scratch
  assert isinstance(host_memory.release_free_memory(), bool)


def test_without_a_trim_function_it_does_nothing(monkeypatch):
  monkeypatch.setattr(host_memory, '_malloc_trim', lambda: None)
  assert host_memory.release_free_memory() is False
