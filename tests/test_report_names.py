"""No file name can break the inference report (issue 22): map names, embedded JSON, picture URLs.

Names come from the issue's table and from hypothesis. The fast tests check the properties in Python
(map names unique and short, the embedded index parses back to the real names); the browser test
renders reports of such names in headless Chromium (tests/helpers/browser.py: needs chromium on
PATH, or GANOMALY_SKIP_BROWSER=1 to skip deliberately) and checks every card, its real name, that
its thumbnail loads, and that no script carried by a name ran.
"""

from __future__ import annotations

import json
import os
import re
import urllib.parse

from hypothesis import HealthCheck, Phase, given, settings, strategies as st
import numpy as np
from PIL import Image
import pytest

from ganomaly_jax.inference import image_files
from ganomaly_jax.evaluation import report
from helpers import browser

# A name's script, if it ever ran, adds a <pwned> element: the DOM dump then shows '<pwned'.
_RUN = "document.body.appendChild(document.createElement('pwned'))"
# The table's names, and names that carry markup or a script in every place a name appears.
HOSTILE = (
    '<!--<script>.png',
    'hash#1.png',
    'q?x.png',
    'pct%41.png',
    'dup.png',
    'dup.jpg',
    'dup_png.png',
    'a' * 251 + '.png',
    'a' * 251 + '.jpg',
    f'<img src=x onerror="{_RUN}">.png',
    f'</script><script>{_RUN}</script>.png',  # a '/' in a name is a subfolder: real paths hold this
    'quote\'"&amp;.png',
    'space name.png',
    'ünïcødé 名前.png',
    'A.png',
    'a.png',
    '\u2028line.png',
    ']]>-->.png',
    '%2e%2e.png',
    'x.png?y=1#z.png',
)

# File-name text: any character but '/' and NUL (surrogates and other control characters aside,
# which the browser cannot show back as they are), markup characters often.
_CHARS = st.one_of(
    st.sampled_from('<>&"\'#?%;:=!- .\\[]{}()`\t'),
    st.characters(blacklist_categories=('Cs', 'Cc'), blacklist_characters='/\x00'),
)
_PART = st.text(_CHARS, min_size=1, max_size=40).filter(lambda s: s not in ('.', '..'))
_NAME = st.builds(
    lambda parts, ext: '/'.join(parts) + ext,
    st.lists(_PART, min_size=1, max_size=3),
    st.sampled_from(['.png', '.jpg', '.PNG', '.tif', '']),
)
_NAMES = st.lists(_NAME, min_size=1, max_size=25, unique=True)
# No example database: tests write nothing outside temporary folders. The fixture used inside
# @given is a factory (tmp_path_factory), so reusing it across examples is safe.
_SETTINGS = dict(
    deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _index(page: str) -> dict:
  found = re.search(r'<script type="application/json" id="index">(.*?)</script>', page, re.S)
  assert found is not None, 'the index is not one whole <script> element'
  return json.loads(found.group(1))


def _write_report(folder, names: list[str], page_size: int = 1000):
  """A paged report of `names` as infer writes it: map_names, one PNG per map, real names shown."""
  rng = np.random.default_rng(0)
  maps = image_files.map_names(names)
  entries = []
  for i, (name, map_name) in enumerate(zip(names, maps)):
    target = folder / 'maps' / f'{map_name}.png'
    target.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(target)
    entries.append(
        {
            'name': name,
            'score': float(len(names) - i),
            'map_png': f'maps/{map_name}.png',
            'anomalous': i % 2,
        }
    )
  return (
      report.write_paged_report(
          folder,
          entries,
          {'images_scored': len(names)},
          f'names <i id="title-markup">{names[0]}</i>',
          page_size=page_size,
      ),
      maps,
  )


def _check_map_names(names: list[str]) -> None:
  maps = image_files.map_names(names)
  assert maps == image_files.map_names(list(names))  # deterministic
  assert len({m.casefold() for m in maps}) == len(maps)  # unique, even on case-insensitive disks
  for name, m in zip(names, maps):
    last = m.split('/')[-1] + '.png'
    assert len(last.encode('utf-8')) <= 200 and '\x00' not in m
    assert not any(ord(c) < 32 for c in m)
    stem = os.path.splitext(name)[0]
    assert m == stem or re.fullmatch(r'.*-[0-9a-f]{10}', m), (name, m)


def test_table_names_get_unique_short_map_names():
  _check_map_names(list(HOSTILE))
  maps = dict(zip(HOSTILE, image_files.map_names(list(HOSTILE))))
  assert maps['dup_png.png'] == 'dup_png' and maps['hash#1.png'] == 'hash#1'
  assert maps['dup.png'] != maps['dup.jpg'] and maps['A.png'].casefold() != maps['a.png'].casefold()


@settings(max_examples=150, **_SETTINGS)
@given(_NAMES)
def test_generated_names_get_unique_short_map_names(names):
  _check_map_names(names)


@settings(max_examples=40, **_SETTINGS)
@given(names=_NAMES)
def test_the_embedded_index_gives_back_every_real_name_and_encoded_url(names, tmp_path_factory):
  folder = tmp_path_factory.mktemp('report')
  page_path, maps = _write_report(folder, names)
  page = page_path.read_text(encoding='utf-8')
  index = _index(page)
  assert [e[0] for e in index['entries']] == names  # scores were written descending
  for (_, _, url, _), m in zip(index['entries'], maps):
    assert not set(url) & set('#?%"<>& ') - {'%'} and urllib.parse.unquote(url) == f'maps/{m}.png'
    assert (folder / urllib.parse.unquote(url)).is_file()
  # Outside the index, names appear only HTML-escaped (the title).
  body = page.replace(re.search(r'<script type="application/json".*?</script>', page, re.S)[0], '')
  assert '<i id="title-markup">' not in body


@pytest.mark.slow
@pytest.mark.browser
# No shrinking: each example starts Chromium, and the failing names are printed whole anyway.
@settings(max_examples=4, phases=(Phase.explicit, Phase.generate), **_SETTINGS)
@given(generated=_NAMES)
def test_hostile_names_render_every_card_with_its_name_and_picture_in_chromium(
    generated, tmp_path_factory
):
  """The table's names plus generated ones: every card, its real name, a loading thumbnail, and no
  script of theirs ran."""
  browser.find_chromium()
  folder = tmp_path_factory.mktemp('chromium')
  names = list(dict.fromkeys(list(HOSTILE) + generated))
  page_path, _ = _write_report(folder, names)
  dom = browser.render_checked(page_path, folder / 'profile')
  assert '<pwned' not in dom, 'a script carried by a file name ran'
  shown = browser.cards(dom)
  assert [c['name'] for c in shown] == names
  count = re.search(r'<span id="count">([^<]*)</span>', dom)
  assert count is not None and count.group(1) == str(len(names))
  for card in shown:
    assert card['src'].startswith('maps/')
    assert (folder / urllib.parse.unquote(card['src'])).is_file(), card
  decoded = re.search(r'<pre id="decoded">(\d+)/(\d+)</pre>', dom)
  assert decoded is not None, 'the picture check did not run'
  failed = re.search(r'<ul id="failed">(.*?)</ul>', dom, re.S).group(1)
  assert decoded.group(1) == decoded.group(2), failed[:2000]
  assert int(decoded.group(2)) >= len(names)
