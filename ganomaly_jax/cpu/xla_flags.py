"""XLA:CPU defaults that make the GAN steps faster, applied before JAX starts its CPU backend.

jaxlib 0.10 runs convolutions, matmuls and reductions on the CPU through YNNPACK by default. For these
models XLA's own kernels are faster, in training and inference, and YNNPACK's reduce fusions were slow
on the masked method's combination of four inpaintings (tanh, mask, sum over the four)
(bench/throughput.py). The first flag below sends convolutions, dots and reductions back to XLA.

The second picks XLA's memory-optimised instruction scheduler over the default one: it lowered the
peak memory of every training benchmark at the same speed within the machine's noise. Everything else
keeps XLA's defaults. Figures: docs/performance.md#xla-flags.

XLA rejects unknown flags at start-up, and `*_experimental_*` flags come and go, so the defaults are
applied only on jaxlib versions where they were measured. They never override a user's choice: a
flag already named in XLA_FLAGS is left alone, and `runtime.xla_cpu_defaults=False` (or its
documented alias, the environment variable GANOMALY_JAX_XLA_DEFAULTS=0) turns them all off.
XLA_FLAGS is read when the backend starts, so the entry points (`main`, `sweep`, `infer`, `bench/*`)
call `apply_cpu_defaults` before their first JAX computation; importing the package changes nothing.
"""

from __future__ import annotations

import os
from typing import MutableMapping

CPU_DEFAULTS = (
    '--xla_cpu_experimental_ynn_fusion_type=-dot,-individual_convolution,-reduce',
    '--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED',
)
MEASURED_ON = ('0.10.',)  # jaxlib version prefixes the defaults were measured on
OPT_OUT = 'GANOMALY_JAX_XLA_DEFAULTS'


def _jaxlib_version() -> str:
  try:
    from jaxlib import version  # light: does not start a backend

    return version.__version__
  except ImportError:
    return ''


def apply_cpu_defaults(
    environ: MutableMapping[str, str] = os.environ,
    jaxlib_version: str | None = None,
    enabled: bool = True,
) -> list[str]:
  """Adds the CPU defaults to environ['XLA_FLAGS'] where allowed; returns the flags it added.

  `enabled` is `runtime.xla_cpu_defaults`; GANOMALY_JAX_XLA_DEFAULTS=0 in `environ` also disables.
  """
  if not enabled or environ.get(OPT_OUT, '1') == '0':
    return []
  version = _jaxlib_version() if jaxlib_version is None else jaxlib_version
  if not version.startswith(MEASURED_ON):
    return []
  flags = environ.get('XLA_FLAGS', '')
  added = [f for f in CPU_DEFAULTS if f.split('=', 1)[0] not in flags]
  if added:
    environ['XLA_FLAGS'] = ' '.join([flags, *added]).strip()
  return added
