"""`dataset.normalization`: how the networks see pixels.

The pipeline always yields images in [-1, 1] (`pipeline.to_float`, the range of the decoders'
tanh). The official GANomaly code normalises MNIST instead with `Normalize((0.1307,), (0.3081,))`
(MNIST's mean and std), so its inputs span [-0.42, 2.82] before a tanh decoder that cannot exceed
1: the reconstruction loss can never reach zero on bright strokes. To reproduce its MNIST figures
that input is offered as `mnist_reference`, applied inside the compiled steps as an affine map of
the [-1, 1] images (exactly the official value of every uint8 pixel, up to float rounding).
"""

from __future__ import annotations

import jax

# name -> (mean, std) of [0, 1] intensities, or None for the [-1, 1] images as they come.
NORMALIZATIONS: dict[str, tuple[float, float] | None] = {
    'tanh': None,
    'mnist_reference': (0.1307, 0.3081),  # the official ganomaly lib/data.py, MNIST
}


def from_tanh(x: jax.Array, name: str) -> jax.Array:
  """Images in [-1, 1] -> the networks' input under normalization `name`."""
  stats = NORMALIZATIONS[name]
  if stats is None:
    return x
  mean, std = stats
  return ((x + 1.0) * 0.5 - mean) / std
