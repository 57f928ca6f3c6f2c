"""The standard FID Inception-v3 network in Flax (the weights and the FID statistics are in fid.py).

The network reproduces the TF graph `inception-2015-12-05` that the original FID code (TTUR) uses, in
the form pytorch-fid ported it (`pt_inception-2015-12-05-6726825d.pth`): torchvision's Inception-v3
layout with the FID patches

  * Mixed_5b..5d (A), Mixed_6b..6e (C) and Mixed_7b (E_1) average-pool their pool branch with
    `count_include_pad=False` (TF's average pool ignores padded zeros);
  * Mixed_7c (E_2) max-pools its pool branch (a quirk of that TF graph);
  * every BatchNorm has eps=1e-3 and runs on its stored statistics.

Features are the 2048-d global average pool after Mixed_7c ("pool3"), so the 1008-way classifier of
the checkpoint is dropped. Module names are torchvision's, so weight files map onto them one to one.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

# Resolution the FID graph was trained and is always evaluated at.
INCEPTION_SIZE = 299
# Width of the pool3 features.
FEATURE_DIM = 2048


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
  return (v, v) if isinstance(v, int) else tuple(v)


class BasicConv2d(nn.Module):
  """Conv (no bias) -> inference BatchNorm(eps=1e-3) -> ReLU, as torchvision's `BasicConv2d`."""

  features: int
  kernel_size: int | tuple[int, int]
  strides: int | tuple[int, int] = 1
  padding: int | tuple[int, int] = 0

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    ph, pw = _pair(self.padding)
    x = nn.Conv(
        self.features,
        _pair(self.kernel_size),
        strides=_pair(self.strides),
        # Explicit symmetric padding, as PyTorch's `padding=`; 'SAME' would pad asymmetrically at stride 2.
        padding=((ph, ph), (pw, pw)),
        use_bias=False,
        name='conv',
    )(x)
    # Inference only: the statistics are the checkpoint's, never updated, so no mutable collection is
    # needed at apply time.
    x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name='bn')(x)
    return nn.relu(x)


def _avg_pool_3x3_same(x: jax.Array) -> jax.Array:
  # count_include_pad=False: TF's average pool divides by the number of real pixels at the borders.
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3_stride2(x: jax.Array) -> jax.Array:
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding='VALID')


class InceptionA(nn.Module):
  """FIDInceptionA (Mixed_5b..5d): 64 + 64 + 96 + pool_features channels."""

  pool_features: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b1 = BasicConv2d(64, 1, name='branch1x1')(x)
    b5 = BasicConv2d(48, 1, name='branch5x5_1')(x)
    b5 = BasicConv2d(64, 5, padding=2, name='branch5x5_2')(b5)
    b3 = BasicConv2d(64, 1, name='branch3x3dbl_1')(x)
    b3 = BasicConv2d(96, 3, padding=1, name='branch3x3dbl_2')(b3)
    b3 = BasicConv2d(96, 3, padding=1, name='branch3x3dbl_3')(b3)
    bp = BasicConv2d(self.pool_features, 1, name='branch_pool')(_avg_pool_3x3_same(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  """InceptionB (Mixed_6a): grid reduction 35 -> 17, 384 + 96 + in channels."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b3 = BasicConv2d(384, 3, strides=2, name='branch3x3')(x)
    bd = BasicConv2d(64, 1, name='branch3x3dbl_1')(x)
    bd = BasicConv2d(96, 3, padding=1, name='branch3x3dbl_2')(bd)
    bd = BasicConv2d(96, 3, strides=2, name='branch3x3dbl_3')(bd)
    return jnp.concatenate([b3, bd, _max_pool_3x3_stride2(x)], axis=-1)


class InceptionC(nn.Module):
  """FIDInceptionC (Mixed_6b..6e): factorised 7x7 branches, 4 x 192 channels."""

  channels_7x7: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c7 = self.channels_7x7
    b1 = BasicConv2d(192, 1, name='branch1x1')(x)
    b7 = BasicConv2d(c7, 1, name='branch7x7_1')(x)
    b7 = BasicConv2d(c7, (1, 7), padding=(0, 3), name='branch7x7_2')(b7)
    b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name='branch7x7_3')(b7)
    bd = BasicConv2d(c7, 1, name='branch7x7dbl_1')(x)
    bd = BasicConv2d(c7, (7, 1), padding=(3, 0), name='branch7x7dbl_2')(bd)
    bd = BasicConv2d(c7, (1, 7), padding=(0, 3), name='branch7x7dbl_3')(bd)
    bd = BasicConv2d(c7, (7, 1), padding=(3, 0), name='branch7x7dbl_4')(bd)
    bd = BasicConv2d(192, (1, 7), padding=(0, 3), name='branch7x7dbl_5')(bd)
    bp = BasicConv2d(192, 1, name='branch_pool')(_avg_pool_3x3_same(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  """InceptionD (Mixed_7a): grid reduction 17 -> 8, 320 + 192 + in channels."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b3 = BasicConv2d(192, 1, name='branch3x3_1')(x)
    b3 = BasicConv2d(320, 3, strides=2, name='branch3x3_2')(b3)
    b7 = BasicConv2d(192, 1, name='branch7x7x3_1')(x)
    b7 = BasicConv2d(192, (1, 7), padding=(0, 3), name='branch7x7x3_2')(b7)
    b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name='branch7x7x3_3')(b7)
    b7 = BasicConv2d(192, 3, strides=2, name='branch7x7x3_4')(b7)
    return jnp.concatenate([b3, b7, _max_pool_3x3_stride2(x)], axis=-1)


class InceptionE(nn.Module):
  """FIDInceptionE_1 (pool='avg', Mixed_7b) or FIDInceptionE_2 (pool='max', Mixed_7c): 2048 channels."""

  pool: str = 'avg'

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b1 = BasicConv2d(320, 1, name='branch1x1')(x)
    b3 = BasicConv2d(384, 1, name='branch3x3_1')(x)
    b3 = jnp.concatenate(
        [
            BasicConv2d(384, (1, 3), padding=(0, 1), name='branch3x3_2a')(b3),
            BasicConv2d(384, (3, 1), padding=(1, 0), name='branch3x3_2b')(b3),
        ],
        axis=-1,
    )
    bd = BasicConv2d(448, 1, name='branch3x3dbl_1')(x)
    bd = BasicConv2d(384, 3, padding=1, name='branch3x3dbl_2')(bd)
    bd = jnp.concatenate(
        [
            BasicConv2d(384, (1, 3), padding=(0, 1), name='branch3x3dbl_3a')(bd),
            BasicConv2d(384, (3, 1), padding=(1, 0), name='branch3x3dbl_3b')(bd),
        ],
        axis=-1,
    )
    if self.pool == 'avg':
      pooled = _avg_pool_3x3_same(x)
    elif self.pool == 'max':
      # The FID graph max-pools here (E_2); flax pads max pools with -inf, like PyTorch.
      pooled = nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
    else:
      raise ValueError(f'InceptionE pool must be "avg" or "max", got {self.pool!r}.')
    bp = BasicConv2d(192, 1, name='branch_pool')(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionV3(nn.Module):
  """FID Inception-v3 up to pool3 (inference only).

  Attributes:
    resize_input: bilinearly resize inputs to 299x299 first (as pytorch-fid does). Turn off only for
      inputs that already are 299x299.
  """

  resize_input: bool = True

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    """Maps NHWC images in [-1, 1] (1 or 3 channels) to [N, 2048] float32 pool3 features."""
    if images.ndim != 4:
      raise ValueError(f'InceptionV3 expects NHWC images, got shape {images.shape}.')
    x = jnp.asarray(images, jnp.float32)
    if x.shape[-1] == 1:
      # Grayscale datasets (MNIST) are scored as RGB with equal channels, the usual FID convention.
      x = jnp.repeat(x, 3, axis=-1)
    if x.shape[-1] != 3:
      raise ValueError(f'InceptionV3 expects 1 or 3 channels, got {x.shape[-1]}.')
    if self.resize_input and x.shape[1:3] != (INCEPTION_SIZE, INCEPTION_SIZE):
      # antialias=False matches F.interpolate(mode='bilinear', align_corners=False) in pytorch-fid,
      # which does not low-pass when downsampling (upsampling is unaffected either way).
      x = jax.image.resize(
          x, (x.shape[0], INCEPTION_SIZE, INCEPTION_SIZE, 3), method='bilinear', antialias=False
      )

    x = BasicConv2d(32, 3, strides=2, name='Conv2d_1a_3x3')(x)  # 149
    x = BasicConv2d(32, 3, name='Conv2d_2a_3x3')(x)  # 147
    x = BasicConv2d(64, 3, padding=1, name='Conv2d_2b_3x3')(x)  # 147
    x = _max_pool_3x3_stride2(x)  # 73
    x = BasicConv2d(80, 1, name='Conv2d_3b_1x1')(x)  # 73
    x = BasicConv2d(192, 3, name='Conv2d_4a_3x3')(x)  # 71
    x = _max_pool_3x3_stride2(x)  # 35
    x = InceptionA(32, name='Mixed_5b')(x)  # 256
    x = InceptionA(64, name='Mixed_5c')(x)  # 288
    x = InceptionA(64, name='Mixed_5d')(x)  # 288
    x = InceptionB(name='Mixed_6a')(x)  # 17x17x768
    x = InceptionC(128, name='Mixed_6b')(x)
    x = InceptionC(160, name='Mixed_6c')(x)
    x = InceptionC(160, name='Mixed_6d')(x)
    x = InceptionC(192, name='Mixed_6e')(x)
    x = InceptionD(name='Mixed_7a')(x)  # 8x8x1280
    x = InceptionE('avg', name='Mixed_7b')(x)  # 2048
    x = InceptionE('max', name='Mixed_7c')(x)  # 2048
    return jnp.mean(x, axis=(1, 2))
