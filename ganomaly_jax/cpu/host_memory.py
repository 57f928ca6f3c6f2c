"""Hands the C heap's free pages back to the operating system (glibc's malloc_trim).

XLA:CPU's compilation of the training step is the largest transient allocation of a CPU run. glibc
keeps freed memory in its arenas, so whatever the process allocates next lands on top of that
high-water mark. Compiling the step first, trimming, and only then creating the state lowers the
peak RSS of a training run (docs/performance.md#host-memory-hand-back).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def _malloc_trim():
  name = ctypes.util.find_library('c')
  try:
    return ctypes.CDLL(name).malloc_trim if name else None
  except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
    return None


def release_free_memory() -> bool:
  """Returns freed heap memory to the system where the C library can; True if it did anything."""
  trim = _malloc_trim()
  return bool(trim(0)) if trim is not None else False
