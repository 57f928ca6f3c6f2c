"""Robust decoding of single image files into uint8 HWC arrays.

Real image folders hold broken files (zero-byte uploads, truncated JPEGs, stray text files, 16-bit
PNGs that naive conversion clips to white). Every decode failure is turned into a `BadImage` with a
short `reason` from a fixed vocabulary, so a folder scan can skip and count broken files instead of
crashing hours into training.

Policies (all deliberate, all documented here once):

* Decoding is forced (`img.load()`), so a truncated file fails here, at scan time, not in the loader.
* EXIF orientation is applied, so a phone photo stored sideways is returned upright.
* Alpha (RGBA, LA, palette transparency) is composited on black rather than dropped: dropping alpha
  exposes whatever colour the encoder left under transparent pixels, which is arbitrary.
* 16-bit images are scaled by 255/65535 (65535 -> 255); PIL's own `convert('L')` clips them instead.
* Float images in [0, 1] are scaled by 255, in [0, 255] are kept, anything else is min-max scaled.
* Multi-frame files (GIF, TIFF) contribute their first frame.
* Only the formats behind `IMAGE_EXTENSIONS` are decoded; in particular PIL's EPS plugin, which
  shells out to Ghostscript, is never reached.
"""

from __future__ import annotations

import io
import os
import stat
import warnings
from typing import Union

import numpy as np
from absl import logging
from PIL import Image, ImageOps, UnidentifiedImageError

# File extensions (lower case, no dot) treated as images when scanning a data folder.
IMAGE_EXTENSIONS = frozenset(
    {'png', 'jpg', 'jpeg', 'bmp', 'tif', 'tiff', 'webp', 'gif', 'ppm', 'pgm'}
)

# PIL format ids matching IMAGE_EXTENSIONS (the PPM plugin also reads PGM).
_PIL_FORMATS = ('PNG', 'JPEG', 'BMP', 'TIFF', 'WEBP', 'GIF', 'PPM')

# The fixed vocabulary of `BadImage.reason`.
REASONS = (
    'unreadable',
    'empty_file',
    'corrupt',
    'not_an_image',
    'too_small',
    'not_a_file',
    'too_large',
)

# Files above this size are not read at all ('too_large'): a folder scan must not swallow a disk
# image or a video that happens to be named .png. Far above any photograph (a 16-bit 8K TIFF is
# ~200 MB); PIL's decompression-bomb limit separately caps what a small file may expand to.
MAX_FILE_BYTES = 512 * 2**20

DEFAULT_MIN_SIDE = 8

ImageSource = Union[bytes, bytearray, memoryview, str, os.PathLike]


class BadImage(Exception):
  """An image that cannot be used; `reason` is one of `REASONS`.

  Attributes:
    reason: 'unreadable' (I/O error, permission, dangling link), 'empty_file' (zero bytes),
      'corrupt' (PIL cannot decode it, or it is truncated), 'not_an_image' (not an image file, or a
      pixel mode that cannot be turned into grey/RGB), 'too_small' (a side below `min_side`),
      'not_a_file' (a FIFO, device or socket, or a link to one: never opened for a blocking read),
      'too_large' (more than `MAX_FILE_BYTES`).
    path: the file, or None when decoding bytes.
    detail: a short human-readable explanation.
  """

  def __init__(self, reason: str, path: str | None = None, detail: str = ''):
    if reason not in REASONS:
      raise ValueError(f'unknown BadImage reason {reason!r}; expected one of {REASONS}')
    # Passing all fields to Exception keeps the exception picklable (multiprocess loaders).
    super().__init__(reason, path, detail)
    self.reason = reason
    self.path = path
    self.detail = detail

  def __str__(self) -> str:
    where = f'{self.path}: ' if self.path is not None else ''
    detail = f' ({self.detail})' if self.detail else ''
    return f'{where}{self.reason}{detail}'


def has_image_extension(path: str | os.PathLike) -> bool:
  """True when `path` ends in one of `IMAGE_EXTENSIONS` (case-insensitive)."""
  ext = os.path.splitext(os.fspath(path))[1]
  return ext[1:].lower() in IMAGE_EXTENSIONS


def decode_image(
    data_or_path: ImageSource, channels: int, min_side: int = DEFAULT_MIN_SIDE
) -> np.ndarray:
  """Decodes an image file (path) or encoded bytes into a uint8 array.

  See the module docstring for the conversion policies (EXIF, alpha, 16-bit, float).

  Args:
    data_or_path: a file path, or the encoded bytes of an image.
    channels: 1 (grey, ITU-R 601-2 luma from colour) or 3 (RGB, grey replicated).
    min_side: images whose height or width (after EXIF rotation) is below this are 'too_small'.

  Returns:
    A C-contiguous uint8 array of shape [H, W, channels].

  Raises:
    BadImage: the file cannot be read or decoded, or is too small.
    ValueError: `channels` or `min_side` is invalid (a caller bug, not a data problem).
  """
  return decode_with_conversion(data_or_path, channels, min_side)[0]


def decode_with_conversion(
    data_or_path: ImageSource, channels: int, min_side: int = DEFAULT_MIN_SIDE
) -> tuple[np.ndarray, tuple[str, ...]]:
  """Like `decode_image`, also naming the conversions applied (for data reports).

  Returns:
    (array, conversions) where conversions holds 'exif_transpose' if the image was re-oriented and
    '<source mode>-><L|RGB>' (e.g. 'I;16->RGB', 'RGBA->RGB', 'RGB->L') if its pixel mode changed.
    An RGB image decoded with channels=3 has no conversions.
  """
  if channels not in (1, 3):
    raise ValueError(f'channels must be 1 or 3, got {channels!r}')
  if int(min_side) < 1:
    raise ValueError(f'min_side must be >= 1, got {min_side!r}')
  path, data = _read(data_or_path)
  conversions: list[str] = []

  # catch_warnings mutates process-global state; with threaded loaders the filters of two decodes
  # can interleave, which at worst leaves these PIL warnings silenced for the whole process.
  with warnings.catch_warnings():
    warnings.simplefilter('ignore', Image.DecompressionBombWarning)
    # e.g. "Corrupt EXIF data", "Palette images with Transparency expressed in bytes ...".
    warnings.filterwarnings('ignore', category=UserWarning, module=r'PIL(\.|$)')
    img = _open_and_load(data, path)
    if _exif_orientation(img) in range(2, 9):
      try:
        img = ImageOps.exif_transpose(img)
        conversions.append('exif_transpose')
      except Exception as e:  # pylint: disable=broad-except
        # Orientation is metadata: malformed EXIF must not cost an otherwise good image.
        logging.debug('Ignoring unusable EXIF orientation of %s: %s', path or '<bytes>', e)

    width, height = img.size
    if min(width, height) < min_side:
      raise BadImage('too_small', path, f'{width}x{height} px, minimum side is {min_side}')

    source_mode = img.mode
    arr = _to_grey_or_rgb(img, path)

  if channels == 3 and arr.ndim == 2:
    arr = np.repeat(arr[:, :, None], 3, axis=2)
  elif channels == 1 and arr.ndim == 3:
    arr = np.asarray(Image.fromarray(arr).convert('L'))
  if arr.ndim == 2:
    arr = arr[:, :, None]
  target_mode = 'L' if channels == 1 else 'RGB'
  if source_mode != target_mode:
    conversions.append(f'{source_mode}->{target_mode}')
  return np.ascontiguousarray(arr, dtype=np.uint8), tuple(conversions)


def resize_image(img: np.ndarray, isize: int) -> np.ndarray:
  """Resizes a uint8 [H, W, C] image to [isize, isize, C] with PIL's bilinear filter.

  The whole image is resized to a square, not cropped: non-square images are stretched, which keeps
  every defect in view (a crop could cut it off). PIL widens the bilinear kernel when shrinking, so
  downscaling is antialiased.

  Args:
    img: uint8 array [H, W, C], any C >= 1.
    isize: output side in pixels.

  Returns:
    uint8 array [isize, isize, C].
  """
  img = np.asarray(img)
  if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] < 1:
    raise ValueError(f'expected a uint8 [H, W, C] image, got {img.dtype} {img.shape}')
  if int(isize) < 1:
    raise ValueError(f'isize must be >= 1, got {isize!r}')
  size = (int(isize), int(isize))
  if img.shape[:2] == size:
    return np.ascontiguousarray(img)
  if img.shape[2] == 3:
    return np.asarray(Image.fromarray(img).resize(size, Image.Resampling.BILINEAR))
  # Channel by channel for any other C: PIL would premultiply a 4th channel as alpha.
  planes = [
      np.asarray(
          Image.fromarray(np.ascontiguousarray(img[:, :, c])).resize(
              size, Image.Resampling.BILINEAR
          )
      )
      for c in range(img.shape[2])
  ]
  return np.stack(planes, axis=2)


def _read(data_or_path: ImageSource) -> tuple[str | None, bytes]:
  """Returns (path or None, file bytes); I/O failures become 'unreadable' / 'empty_file'."""
  if isinstance(data_or_path, (bytes, bytearray, memoryview)):
    path, data = None, bytes(data_or_path)
  else:
    path = os.fspath(data_or_path)
    try:
      # Reading the bytes ourselves separates I/O errors from decode errors and leaves no handle
      # open inside a lazily-loading PIL image. O_NONBLOCK: opening a FIFO must not wait for a
      # writer; what was opened is then checked to be a regular file before anything is read.
      fd = os.open(path, os.O_RDONLY | getattr(os, 'O_NONBLOCK', 0))
      with os.fdopen(fd, 'rb') as f:
        mode, size = os.fstat(f.fileno())[stat.ST_MODE], os.fstat(f.fileno()).st_size
        if not stat.S_ISREG(mode):
          raise BadImage('not_a_file', path, _file_kind(mode))
        limit = MAX_FILE_BYTES
        if size > limit:
          raise BadImage('too_large', path, f'{size} bytes, the limit is {limit}')
        data = f.read(limit + 1)  # a file still growing stops at the limit too
        if len(data) > limit:
          raise BadImage('too_large', path, f'more than {limit} bytes')
    except OSError as e:
      raise BadImage('unreadable', path, e.strerror or type(e).__name__) from e
  if not data:
    raise BadImage('empty_file', path, '0 bytes')
  return path, data


def _file_kind(mode: int) -> str:
  for test, kind in (
      (stat.S_ISFIFO, 'a FIFO'),
      (stat.S_ISCHR, 'a character device'),
      (stat.S_ISBLK, 'a block device'),
      (stat.S_ISSOCK, 'a socket'),
      (stat.S_ISDIR, 'a directory'),
  ):
    if test(mode):
      return f'{kind}, not a regular file'
  return 'not a regular file'


def _open_and_load(data: bytes, path: str | None) -> Image.Image:
  """Opens and fully decodes `data`; PIL failures become 'corrupt' or 'not_an_image'."""
  try:
    img = Image.open(io.BytesIO(data), formats=_PIL_FORMATS)
  except UnidentifiedImageError as e:
    # A file named like an image (or bytes handed over as one) that PIL cannot identify is a broken
    # image; anything else never was one.
    if path is None or has_image_extension(path):
      raise BadImage('corrupt', path, 'unrecognised image data') from e
    raise BadImage('not_an_image', path, 'not a supported image format') from e
  except Image.DecompressionBombError as e:
    raise BadImage('corrupt', path, "larger than PIL's decompression-bomb limit") from e
  except Exception as e:  # pylint: disable=broad-except
    raise BadImage('corrupt', path, _short(e)) from e
  try:
    # Decode every pixel now: a truncated JPEG otherwise opens fine and fails inside the loader.
    img.load()
  except Image.DecompressionBombError as e:
    raise BadImage('corrupt', path, "larger than PIL's decompression-bomb limit") from e
  except Exception as e:  # pylint: disable=broad-except
    # PIL raises OSError, SyntaxError, ValueError, struct.error, zlib.error, EOFError ... here.
    raise BadImage('corrupt', path, _short(e)) from e
  return img


def _exif_orientation(img: Image.Image) -> int:
  """The EXIF orientation tag (1 = upright), or 1 when absent or unreadable."""
  try:
    return int(img.getexif().get(0x0112, 1))
  except Exception:  # pylint: disable=broad-except
    return 1


def _to_grey_or_rgb(img: Image.Image, path: str | None) -> np.ndarray:
  """Converts any PIL mode to uint8 [H, W] (grey) or [H, W, 3] (RGB)."""
  mode = img.mode
  if mode == 'L':
    return np.asarray(img)
  if mode == 'RGB':
    return np.asarray(img)
  if mode == '1':
    return np.asarray(img.convert('L'))
  if mode.startswith('I;16'):
    return _scale_16bit(np.asarray(img).astype(np.int64))
  if mode == 'I':
    values = np.asarray(img).astype(np.int64)
    # PIL often opens 16-bit PNG/TIFF as 32-bit 'I'; values inside [0, 65535] are read as 16-bit.
    if values.size == 0 or (values.min() >= 0 and values.max() <= 65535):
      return _scale_16bit(values)
    return _min_max(values.astype(np.float64))
  if mode == 'F':
    return _scale_float(np.asarray(img).astype(np.float64))
  if mode == 'P':
    img = img.convert('RGBA' if 'transparency' in img.info else 'RGB')
  elif mode in ('PA', 'RGBa', 'RGBX'):
    img = img.convert('RGBA' if mode != 'RGBX' else 'RGB')
  elif mode == 'La':
    img = img.convert('LA')
  elif mode not in ('RGBA', 'LA'):
    # CMYK, YCbCr, HSV, ...: let PIL do the colour conversion.
    try:
      img = img.convert('RGB')
    except Exception as e:  # pylint: disable=broad-except
      raise BadImage('not_an_image', path, f'unsupported pixel mode {mode}') from e
  arr = np.asarray(img)
  if img.mode in ('RGBA', 'LA'):
    return _composite_on_black(arr)
  return arr


def _composite_on_black(arr: np.ndarray) -> np.ndarray:
  """[H, W, C+1] colour + alpha -> colour * alpha / 255, rounded; grey stays 2-D."""
  colour = arr[:, :, :-1].astype(np.uint32)
  alpha = arr[:, :, -1:].astype(np.uint32)
  out = ((colour * alpha + 127) // 255).astype(np.uint8)
  return out[:, :, 0] if out.shape[2] == 1 else out


def _scale_16bit(values: np.ndarray) -> np.ndarray:
  """Maps [0, 65535] linearly onto [0, 255] with rounding."""
  values = np.clip(values, 0, 65535)
  return ((values * 255 + 32767) // 65535).astype(np.uint8)


def _scale_float(values: np.ndarray) -> np.ndarray:
  values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
  if values.size == 0:
    return values.astype(np.uint8)
  lo, hi = values.min(), values.max()
  if lo >= 0 and hi <= 1:
    return np.round(values * 255).astype(np.uint8)
  if lo >= 0 and hi <= 255:
    return np.round(values).astype(np.uint8)
  return _min_max(values)


def _min_max(values: np.ndarray) -> np.ndarray:
  lo, hi = values.min(), values.max()
  if hi <= lo:
    return np.zeros(values.shape, np.uint8)
  return np.round((values - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _short(e: BaseException) -> str:
  text = f'{type(e).__name__}: {e}'
  return text if len(text) <= 120 else text[:117] + '...'
