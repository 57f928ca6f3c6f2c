"""The images of a folder to score: file discovery, map file names, and the decoding stream.

`find_files` lists the candidates (hidden files and OS litter skipped), `map_names` gives each image
a unique, short name for its map PNG, and `decode_stream` + `batches` decode and resize them in
grain threads, in path order, into batches of decodable images (the others are counted by reason).
"""

from __future__ import annotations

import collections
import functools
import hashlib
import os
from typing import Any, Iterator

import grain
import numpy as np

from ganomaly_jax.data import images as images_lib

# OS litter that is not hidden by a leading dot (as data/folder.py).
_IGNORED_NAMES = frozenset({'thumbs.db', 'desktop.ini'})


def _ignored(name: str) -> bool:
  return name.startswith('.') or name.lower() in _IGNORED_NAMES


def find_files(images_dir: str, exclude: tuple[str, ...] = ()) -> list[str]:
  """Every candidate file under `images_dir`, recursively, sorted; hidden files/folders skipped.

  Folders in `exclude` (the output folder and its maps/, when they lie inside images_dir) are not
  searched, so a second call never scores the first call's maps.
  """
  excluded = {os.path.realpath(e) for e in exclude}
  found = []
  for dirpath, dirnames, filenames in os.walk(images_dir, followlinks=False):
    dirnames[:] = sorted(
        d
        for d in dirnames
        if not _ignored(d) and os.path.realpath(os.path.join(dirpath, d)) not in excluded
    )
    found.extend(os.path.join(dirpath, f) for f in filenames if not _ignored(f))
  return sorted(found)


# Longest map file name (UTF-8 bytes, '.png' included): file systems allow 255, and a report copied
# elsewhere (an archive, another OS) should still unpack.
_MAX_MAP_NAME_BYTES = 200
_HASH_CHARS = 10


def _digest(text: str, salt: int = 0) -> str:
  data = text.encode('utf-8', 'surrogateescape') + (b'#%d' % salt if salt else b'')
  return hashlib.sha1(data).hexdigest()[:_HASH_CHARS]


def _clean(part: str) -> str:
  """A path component that encodes as UTF-8 and holds no control character ('_' instead)."""
  return ''.join(
      '_' if ord(c) < 32 or ord(c) == 127 or 0xD800 <= ord(c) <= 0xDFFF else c for c in part
  )


def _fit(text: str, max_bytes: int) -> str:
  """`text` cut to at most max_bytes of UTF-8, never inside a character."""
  return text.encode('utf-8')[:max_bytes].decode('utf-8', 'ignore')


def map_names(rel_paths: list[str]) -> list[str]:
  """Unique, short names for maps/<name>.png: the relative path without its extension
  ('/'-separated subfolders) where that is unambiguous, else with a hash suffix.

  A hash of the full relative path is added when the plain name would collide with another
  (x.png and x.jpg; also A.png and a.png, which collide on case-insensitive disks), when it would
  be too long for a file name, or when it holds characters a URL or another disk cannot carry
  (control characters, bytes that are not UTF-8). The report shows each image's real name; the
  map name is only where its picture is.
  """
  posix = [p.replace(os.sep, '/') for p in rel_paths]
  stems = [os.path.splitext(p)[0] for p in posix]
  counts = collections.Counter(s.casefold() for s in stems)
  names = []
  for path, stem in zip(posix, stems):
    *folders, last = stem.split('/')
    plain = (
        counts[stem.casefold()] == 1
        and _clean(stem) == stem
        and len(f'{last}.png'.encode('utf-8')) <= _MAX_MAP_NAME_BYTES
    )
    if plain:
      names.append(stem)
      continue
    ext = os.path.splitext(path)[1].lstrip('.')
    base = _clean(f'{last}_{ext}' if ext else last)
    room = _MAX_MAP_NAME_BYTES - len('.png') - 1 - _HASH_CHARS
    names.append('/'.join([_clean(f) for f in folders] + [f'{_fit(base, room)}-{_digest(path)}']))
  # A plain name equal to another's hashed one would need a 10-hex-digit coincidence; still, the
  # names must be unique whatever the input, so any repeat is re-hashed with a salt.
  seen: set[str] = set()
  for i, (path, name) in enumerate(zip(posix, names)):
    salt = 0
    while name.casefold() in seen:
      salt += 1
      head = name.rsplit('/', 1)[0] + '/' if '/' in name else ''
      base = _clean(os.path.splitext(path.rsplit('/', 1)[-1])[0])
      room = _MAX_MAP_NAME_BYTES - len('.png') - 1 - _HASH_CHARS
      name = f'{head}{_fit(base, room)}-{_digest(path, salt)}'
    seen.add(name.casefold())
    names[i] = name
  return names


# Decoding threads: PIL releases the GIL while it decodes and resizes, so threads overlap on every core
# without the start-up cost (a fresh JAX-free interpreter per worker) and pickling of grain's worker
# processes. Measured in bench/infer_memory.py (docs/performance.md#streaming-inference).
DEFAULT_DECODE_THREADS = 4
# Records decoded ahead of the device: a few batches, so the device never waits on one slow file and
# memory stays O(batch).
_PREFETCH_BATCHES = 2


def _decode_one(path: str, isize: int, channels: int) -> dict[str, Any]:
  """One candidate -> {'path', 'image' (uint8 [isize, isize, C], or empty), 'reason' ('' if good)}.

  Files without an image extension are 'not_an_image' without being opened (as for training data).
  Grey images become RGB for an RGB model (and colour becomes grey for a grey one) in `decode_image`.
  """
  empty = np.zeros((0,), np.uint8)
  if not images_lib.has_image_extension(path):
    return {'path': path, 'image': empty, 'reason': 'not_an_image'}
  try:
    image = images_lib.decode_image(path, channels)
  except images_lib.BadImage as e:
    return {'path': path, 'image': empty, 'reason': e.reason}
  return {'path': path, 'image': images_lib.resize_image(image, isize), 'reason': ''}


def decode_stream(
    candidates: list[str],
    isize: int,
    channels: int,
    batch_size: int,
    threads: int = DEFAULT_DECODE_THREADS,
) -> Iterator[dict[str, Any]]:
  """The candidates decoded and resized in order by `threads` grain threads (see `_decode_one`).

  A grain MapDataset over the sorted path list keeps the order, so rows, maps and report entries
  come out in path order whatever the number of threads.
  """
  ds = grain.MapDataset.source(candidates).map(
      functools.partial(_decode_one, isize=isize, channels=channels)
  )
  if threads <= 0:
    return iter(ds)
  return iter(
      ds.to_iter_dataset(
          grain.ReadOptions(
              num_threads=threads, prefetch_buffer_size=max(_PREFETCH_BATCHES * batch_size, threads)
          )
      )
  )


def batches(
    records: Iterator[dict[str, Any]], batch_size: int, skipped: dict[str, list[str]]
) -> Iterator[tuple[list[str], list[np.ndarray]]]:
  """Groups decodable records into (paths, images) of up to batch_size; bad ones go to `skipped`."""
  paths, images = [], []
  for record in records:
    if record['reason']:
      skipped.setdefault(record['reason'], []).append(record['path'])
      continue
    paths.append(record['path'])
    images.append(record['image'])
    if len(paths) == batch_size:
      yield paths, images
      paths, images = [], []
  if paths:
    yield paths, images
