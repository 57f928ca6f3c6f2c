"""Tests for robust image decoding (data/images.py) and folder scanning (data/folder.py)."""

from __future__ import annotations

import io
import json
import logging
import os

import numpy as np
import pytest
from PIL import Image

from ganomaly_jax.data import folder
from ganomaly_jax.data import images

# Usable training files and the (stored) shape each is built with.
GOOD_TRAIN = (
    'cmyk.jpg',
    'exif_rot.jpg',
    'good.jpg',
    'good_rgb.png',
    'gray.png',
    'gray16.png',
    'palette.gif',
    'palette.png',
    'rgba.png',
)
BROKEN_TRAIN = {
    'too_small': ['tiny.png'],
    'empty_file': ['empty.png'],
    'corrupt': ['random.jpg', 'truncated.jpg'],
    'not_an_image': ['notes.txt'],
    'unreadable': ['dangling.png', 'loop.png'],
    'not_a_file': ['device.png', 'fifo.png'],
}


def _noise_rgb(h: int, w: int, seed: int = 0) -> Image.Image:
  rng = np.random.default_rng(seed)
  return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def _jpeg_bytes(img: Image.Image, **kwargs) -> bytes:
  buf = io.BytesIO()
  img.save(buf, format='JPEG', **kwargs)
  return buf.getvalue()


def _write_train(d) -> None:
  d.mkdir(parents=True)
  _noise_rgb(24, 32).save(d / 'good_rgb.png')
  _noise_rgb(24, 32, seed=1).save(d / 'good.jpg')
  Image.fromarray(np.full((20, 30), 77, np.uint8)).save(d / 'gray.png')
  rgba = np.zeros((16, 16, 4), np.uint8)
  rgba[..., :3] = (200, 100, 50)
  rgba[:8, :, 3] = 255  # top half opaque, bottom half transparent
  Image.fromarray(rgba).save(d / 'rgba.png')
  # 16-bit ramp across the whole range; PIL's own convert('L') would clip it to 0/255.
  g16 = np.tile(np.array([0, 256, 32768, 65535], np.uint16), (16, 4))
  Image.fromarray(g16).save(d / 'gray16.png')
  pal = Image.fromarray(np.tile(np.arange(16, dtype=np.uint8) * 16, (16, 1))).convert(
      'P', palette=Image.Palette.ADAPTIVE, colors=16
  )
  pal.save(d / 'palette.gif')
  pal.save(d / 'palette.png')
  Image.new('CMYK', (16, 12), (0, 255, 255, 0)).save(d / 'cmyk.jpg')  # pure red in CMYK
  exif = Image.Exif()
  exif[0x0112] = 6  # rotate 90 CW to display
  _noise_rgb(20, 40, seed=2).save(d / 'exif_rot.jpg', exif=exif)  # stored W=40, H=20
  _noise_rgb(2, 2).save(d / 'tiny.png')
  (d / 'empty.png').write_bytes(b'')
  full = _jpeg_bytes(_noise_rgb(64, 64, seed=3))
  (d / 'truncated.jpg').write_bytes(full[: len(full) // 2])
  (d / 'random.jpg').write_bytes(np.random.default_rng(4).bytes(2048))
  (d / 'notes.txt').write_text('not an image\n')
  (d / '.DS_Store').write_bytes(b'\x00\x00\x00\x01Bud1' + b'\x00' * 64)
  os.symlink(d / 'does_not_exist.png', d / 'dangling.png')
  # What a real folder may hold and a scan must neither hang on nor crash over (issue 22).
  os.symlink(d / 'loop.png', d / 'loop.png')  # refers to itself
  os.mkfifo(d / 'fifo.png')  # a blocking read would wait for a writer forever
  os.symlink('/dev/zero', d / 'device.png')  # endless bytes


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
  root = tmp_path_factory.mktemp('mvtec') / 'carpet'
  _write_train(root / 'train' / 'good')
  (root / 'test' / 'good').mkdir(parents=True)
  _noise_rgb(16, 16, seed=5).save(root / 'test' / 'good' / '000.png')
  (root / 'test' / 'scratch').mkdir()
  _noise_rgb(16, 16, seed=6).save(root / 'test' / 'scratch' / '000.png')
  _noise_rgb(16, 16, seed=7).save(root / 'test' / 'scratch' / '001.png')  # no mask
  (root / 'test' / 'crack').mkdir()
  _noise_rgb(16, 16, seed=8).save(root / 'test' / 'crack' / '000.png')
  (root / 'test' / 'crack' / '.DS_Store').write_bytes(b'junk')
  (root / 'ground_truth' / 'scratch').mkdir(parents=True)
  mask = np.zeros((16, 16), np.uint8)
  mask[4:12, 4:12] = 255
  Image.fromarray(mask).save(root / 'ground_truth' / 'scratch' / '000_mask.png')
  (root / 'ground_truth' / 'crack').mkdir()
  (root / 'ground_truth' / 'crack' / '000_mask.png').write_bytes(b'\x89PNG\r\n\x1a\nbroken')
  return root


@pytest.fixture(scope='module')
def index(dataset):
  return folder.scan_image_folder(str(dataset), channels=3)


def _names(paths):
  return sorted(os.path.basename(p) for p in paths)


def test_scan_counts_per_reason(index, dataset):
  assert {r: _names(p) for r, p in index.skipped.items()} == BROKEN_TRAIN
  assert _names(index.train_paths) == sorted(GOOD_TRAIN)
  assert index.train_paths == sorted(index.train_paths)
  every_path = index.train_paths + index.test_paths + sum(index.skipped.values(), [])
  assert not any(os.path.basename(p) == '.DS_Store' for p in every_path)
  assert index.num_scanned == len(GOOD_TRAIN) + 9 + 4  # 9 broken train, 4 test
  assert index.test_defects == ['crack', 'good', 'scratch', 'scratch']
  assert index.test_labels == [1, 0, 1, 1]
  assert index.test_mask_paths == [
      None,
      None,
      str(dataset / 'ground_truth' / 'scratch' / '000_mask.png'),
      None,
  ]
  assert index.bad_masks == {str(dataset / 'ground_truth' / 'crack' / '000_mask.png'): 'corrupt'}


def test_scan_is_deterministic(index, dataset):
  again = folder.scan_image_folder(dataset, channels=3)
  assert again == index


def test_scan_logs_one_warning_per_reason(dataset, caplog):
  with caplog.at_level(logging.WARNING):
    folder.scan_image_folder(str(dataset), channels=1)
  skip_lines = [r for r in caplog.records if 'skipped' in r.getMessage()]
  assert len(skip_lines) == len(BROKEN_TRAIN)


@pytest.mark.parametrize('channels', [1, 3])
def test_every_usable_file_decodes(index, channels):
  for path in index.train_paths + index.test_paths:
    arr = images.decode_image(path, channels)
    assert arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == channels, path
    assert arr.flags['C_CONTIGUOUS']


def _train(dataset, name):
  return str(dataset / 'train' / 'good' / name)


def test_16bit_scaled_not_clipped(dataset):
  arr = images.decode_image(_train(dataset, 'gray16.png'), 1)
  np.testing.assert_array_equal(arr[0, :4, 0], [0, 1, 128, 255])
  rgb = images.decode_image(_train(dataset, 'gray16.png'), 3)
  np.testing.assert_array_equal(rgb[0, :4], np.repeat([[0], [1], [128], [255]], 3, axis=1))


def test_grey_replicated_and_rgb_to_grey(dataset):
  rgb = images.decode_image(_train(dataset, 'gray.png'), 3)
  assert rgb.shape == (20, 30, 3) and (rgb == 77).all()
  grey = images.decode_image(_train(dataset, 'good_rgb.png'), 1)
  with Image.open(_train(dataset, 'good_rgb.png')) as stored:
    expected = np.asarray(stored.convert('L'))
  np.testing.assert_array_equal(grey[:, :, 0], expected)


def test_rgba_composited_on_black(dataset):
  arr = images.decode_image(_train(dataset, 'rgba.png'), 3)
  np.testing.assert_array_equal(arr[0, 0], [200, 100, 50])
  np.testing.assert_array_equal(arr[15, 15], [0, 0, 0])


def test_palette_and_cmyk(dataset):
  for name in ('palette.gif', 'palette.png'):
    arr = images.decode_image(_train(dataset, name), 1)
    np.testing.assert_allclose(arr[0, :, 0], np.arange(16) * 16, atol=2)
  red = images.decode_image(_train(dataset, 'cmyk.jpg'), 3).astype(int)
  assert red.shape == (12, 16, 3)
  assert (red[..., 0] > 200).all() and (red[..., 1:] < 60).all()


def test_exif_orientation_applied(dataset):
  path = _train(dataset, 'exif_rot.jpg')
  with Image.open(path) as stored:
    assert stored.size == (40, 20)  # stored: W=40, H=20
  arr, conversions = images.decode_with_conversion(path, 3)
  assert arr.shape == (40, 20, 3)  # displayed: H and W swapped
  assert 'exif_transpose' in conversions


def test_bad_image_reasons(dataset, tmp_path):
  for reason, names in BROKEN_TRAIN.items():
    if reason == 'not_an_image':
      continue  # decided by extension in the folder scan, checked below on content
    for name in names:
      with pytest.raises(images.BadImage) as e:
        images.decode_image(_train(dataset, name), 3)
      assert e.value.reason == reason and e.value.path == _train(dataset, name)
      assert _train(dataset, name) in str(e.value)
  with pytest.raises(images.BadImage) as e:
    images.decode_image(_train(dataset, 'notes.txt'), 3)
  assert e.value.reason == 'not_an_image'
  with pytest.raises(images.BadImage) as e:
    images.decode_image(str(tmp_path / 'missing.png'), 3)
  assert e.value.reason == 'unreadable'
  with pytest.raises(images.BadImage) as e:
    images.decode_image(_train(dataset, 'tiny.png'), 3, min_side=3)
  assert e.value.reason == 'too_small'
  assert images.decode_image(_train(dataset, 'tiny.png'), 3, min_side=2).shape == (2, 2, 3)
  with pytest.raises(ValueError):
    images.decode_image(_train(dataset, 'good.jpg'), 2)


def test_decode_bytes(dataset):
  data = (dataset / 'train' / 'good' / 'good.jpg').read_bytes()
  np.testing.assert_array_equal(
      images.decode_image(data, 3), images.decode_image(_train(dataset, 'good.jpg'), 3)
  )
  with pytest.raises(images.BadImage) as e:
    images.decode_image(b'', 3)
  assert e.value.reason == 'empty_file' and e.value.path is None
  with pytest.raises(images.BadImage) as e:
    images.decode_image(data[: len(data) // 2], 3)
  assert e.value.reason == 'corrupt'


def test_float_and_bilevel_modes():
  buf = io.BytesIO()
  Image.fromarray(np.full((8, 8), 0.5, np.float32)).save(buf, format='TIFF')
  np.testing.assert_array_equal(images.decode_image(buf.getvalue(), 1), 128)
  buf = io.BytesIO()
  Image.new('1', (8, 8), 1).save(buf, format='PNG')
  np.testing.assert_array_equal(images.decode_image(buf.getvalue(), 3), 255)


def test_bad_image_pickles():
  import pickle  # pylint: disable=import-outside-toplevel

  e = pickle.loads(pickle.dumps(images.BadImage('corrupt', '/x.jpg', 'truncated')))
  assert (e.reason, e.path, e.detail) == ('corrupt', '/x.jpg', 'truncated')
  with pytest.raises(ValueError):
    images.BadImage('broken')


def test_resize_image():
  img = np.asarray(_noise_rgb(30, 50))
  out = images.resize_image(img, 16)
  assert out.shape == (16, 16, 3) and out.dtype == np.uint8
  grey = images.resize_image(np.full((10, 40, 1), 9, np.uint8), 8)
  assert grey.shape == (8, 8, 1) and (grey == 9).all()
  assert images.resize_image(img[:16, :16], 16).shape == (16, 16, 3)
  with pytest.raises(ValueError):
    images.resize_image(img.astype(np.float32), 16)


def test_report_round_trips(index, tmp_path):
  report = folder.data_report(index)
  assert json.loads(json.dumps(report)) == report
  assert report['scanned'] == index.num_scanned
  assert report['usable'] == {'train': len(GOOD_TRAIN), 'test': 4}
  assert {r: v['count'] for r, v in report['skipped'].items() if v['count']} == {
      r: len(n) for r, n in BROKEN_TRAIN.items()
  }
  assert set(report['skipped']) == set(images.REASONS)
  assert report['converted']['L->RGB'] >= 1 and report['converted']['exif_transpose'] == 1
  assert report['masks'] == {'found': 1, 'missing': 1, 'bad': index.bad_masks}
  path = tmp_path / 'out' / 'data_report.json'
  assert folder.write_data_report(index, path) == report
  assert json.loads(path.read_text()) == report


def test_load_mask(index, dataset):
  mask = folder.load_mask(index.test_mask_paths[2], 8)
  assert mask.shape == (8, 8) and mask.dtype == np.float32
  assert set(np.unique(mask)) == {0.0, 1.0}
  assert mask[4, 4] == 1 and mask[0, 0] == 0
  with pytest.raises(images.BadImage) as e:
    folder.load_mask(str(dataset / 'ground_truth' / 'crack' / '000_mask.png'), 8)
  assert e.value.reason == 'corrupt'


def test_files_above_the_size_cap_are_not_read(tmp_path, monkeypatch):
  path = tmp_path / 'big.png'
  _noise_rgb(16, 16).save(path)
  monkeypatch.setattr(images, 'MAX_FILE_BYTES', path.stat().st_size - 1)
  with pytest.raises(images.BadImage) as e:
    images.decode_image(str(path), 3)
  assert e.value.reason == 'too_large'


def test_a_mask_of_another_size_than_its_image_is_refused_by_name(dataset, tmp_path):
  """A 7x40 mask for a 16x16 image would be resized and scored against: refused instead."""
  import shutil

  root = tmp_path / 'carpet'
  shutil.copytree(
      dataset, root, symlinks=True, ignore=lambda d, names: [n for n in names if n in ('fifo.png',)]
  )
  mask = root / 'ground_truth' / 'scratch' / '000_mask.png'
  Image.fromarray(np.zeros((40, 7), np.uint8)).save(mask)
  message = _error(root)
  assert str(mask) in message and '7x40' in message and '16x16' in message, message


def _error(root) -> str:
  with pytest.raises(folder.FolderDataError) as e:
    folder.scan_image_folder(str(root), channels=3)
  message = str(e.value)
  assert '\n' not in message
  return message


def test_folder_errors(tmp_path):
  missing = tmp_path / 'nope'
  assert str(missing) in _error(missing)

  root = tmp_path / 'no_train'
  (root / 'test' / 'good').mkdir(parents=True)
  assert str(root / 'train' / 'good') in _error(root)

  root = tmp_path / 'broken_train'
  train = root / 'train' / 'good'
  train.mkdir(parents=True)
  (train / 'a.png').write_bytes(b'')
  (train / 'b.jpg').write_bytes(b'garbage')
  (train / 'c.csv').write_text('1,2\n')
  (root / 'test' / 'good').mkdir(parents=True)
  message = _error(root)
  assert str(train) in message and '3 file(s)' in message
  assert 'empty_file: 1' in message and 'corrupt: 1' in message and 'not_an_image: 1' in message

  root = tmp_path / 'no_test'
  (root / 'train' / 'good').mkdir(parents=True)
  _noise_rgb(16, 16).save(root / 'train' / 'good' / 'a.png')
  assert str(root / 'test') in _error(root)

  (root / 'test' / 'good').mkdir(parents=True)
  (root / 'test' / 'good' / 'x.png').write_bytes(b'')
  message = _error(root)
  assert str(root / 'test') in message and 'empty_file: 1' in message


def test_32bit_int_mode_read_as_16bit():
  buf = io.BytesIO()
  values = np.tile(np.array([0, 256, 32768, 65535], np.int32), (8, 2))
  Image.fromarray(values).save(buf, format='TIFF')
  assert Image.open(io.BytesIO(buf.getvalue())).mode == 'I'
  np.testing.assert_array_equal(images.decode_image(buf.getvalue(), 1)[0, :4, 0], [0, 1, 128, 255])


def test_pil_warnings_do_not_crash(monkeypatch):
  import warnings  # pylint: disable=import-outside-toplevel

  monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', 100)
  buf = io.BytesIO()
  _noise_rgb(12, 12).save(buf, format='PNG')  # 144 px: over the limit -> warning only
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    assert images.decode_image(buf.getvalue(), 3).shape == (12, 12, 3)
  buf = io.BytesIO()
  _noise_rgb(16, 16).save(buf, format='PNG')  # 256 px: over twice the limit -> PIL raises
  with pytest.raises(images.BadImage) as e:
    images.decode_image(buf.getvalue(), 3)
  assert e.value.reason == 'corrupt' and 'decompression-bomb' in e.value.detail
