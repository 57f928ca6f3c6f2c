"""Equality tests of two forms of one computation, compiled as one program per case.

Op-by-op dispatch compiles every primitive of either form on its own (and again for every new
shape), which made the CPU kernels' equality tests many times slower than one jitted comparison.
"""

from typing import Any, Callable

import jax


def values_and_grads(
    ours: Callable, ref: Callable, args: tuple[Any, ...], cotangent: Any
) -> tuple[Any, Any]:
  """((value, grads), (value, grads)) of `ours(*args)` and `ref(*args)`, compiled as one program;
  the grads are the vector-Jacobian product with `cotangent`, one per argument."""

  def both(args, cotangent):
    outs = []
    for fn in (ours, ref):
      y, vjp = jax.vjp(fn, *args)
      outs.append((y, vjp(cotangent)))
    return tuple(outs)

  return jax.jit(both)(args, cotangent)
