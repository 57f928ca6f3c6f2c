"""Code lengths of images, in bits per pixel, for the complexity-corrected score (`scores.py`).

A reconstruction error measures how hard an image is to rebuild, and that tracks the image's own
complexity as much as its normality: a simple abnormal image (a plain T-shirt among patterned clothes,
a "1" among the other digits) is rebuilt better than the normals and scores as the most normal of
all (Serrà et al., "Input complexity and out-of-distribution detection with likelihood-based
generative models", ICLR 2020). Their correction compares two code lengths of the same image: under
the model, and under a generic lossless compressor that knows nothing of the training data; an
image is anomalous by how much more the model needs than the compressor.

Here both are lossless code lengths of the image quantised to 8 bits, estimated as the empirical
entropy of prediction residuals (the core of lossless image coders such as PNG):

  model:    residual x - x̂, the network's reconstruction as the predictor;
  generic:  residual x - Paeth(x), PNG's Paeth predictor from the left, upper and upper-left pixels.

The entropy is taken over each image's own residual histogram, so both are bits per pixel of that
image and their difference needs no scale. Jittable: it runs inside the eval step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

LEVELS = 256  # 8-bit quantisation of images in [-1, 1]


def quantise(x: jax.Array) -> jax.Array:
  """Images in [-1, 1] -> int32 levels 0..255."""
  return jnp.clip(jnp.round((x + 1.0) * (LEVELS - 1) / 2.0), 0, LEVELS - 1).astype(jnp.int32)


def paeth_prediction(q: jax.Array) -> jax.Array:
  """PNG's Paeth predictor of every pixel of int images [B, H, W, C] from its left (a), upper (b)
  and upper-left (c) neighbours (zero outside the image): whichever of a, b, c is nearest to
  a + b - c, ties to a, then b."""
  padded = jnp.pad(q, ((0, 0), (1, 0), (1, 0), (0, 0)))
  a, b, c = padded[:, 1:, :-1], padded[:, :-1, 1:], padded[:, :-1, :-1]
  p = a + b - c
  pa, pb, pc = jnp.abs(p - a), jnp.abs(p - b), jnp.abs(p - c)
  return jnp.where((pa <= pb) & (pa <= pc), a, jnp.where(pb <= pc, b, c))


def residual_bits(residual: jax.Array) -> jax.Array:
  """Per image, the empirical entropy (bits per value) of int residuals [B, ...] in (-256, 256)."""
  flat = residual.reshape(residual.shape[0], -1) + (LEVELS - 1)  # 0 .. 2 * 255
  counts = jax.vmap(lambda r: jnp.bincount(r, length=2 * LEVELS - 1))(flat)
  p = counts / flat.shape[1]
  return -jnp.sum(jnp.where(p > 0, p * jnp.log2(jnp.where(p > 0, p, 1.0)), 0.0), axis=1)


def generic_bits(x: jax.Array) -> jax.Array:
  """Bits per pixel of images [B, H, W, C] in [-1, 1] under the Paeth predictor: their complexity."""
  q = quantise(x)
  return residual_bits(q - paeth_prediction(q))


def model_bits(x: jax.Array, recon: jax.Array) -> jax.Array:
  """Bits per pixel of images [B, H, W, C] with the reconstruction as the predictor."""
  return residual_bits(quantise(x) - quantise(recon))


def corrected_score(x: jax.Array, recon: jax.Array) -> jax.Array:
  """Per image: the model's code length minus the generic one (bits per pixel; higher = anomalous)."""
  return model_bits(x, recon) - generic_bits(x)
