"""Citations resolve: every `docs/...` path (and #section) cited in the repository exists, and no
file cites the reference sheet that lives outside it."""

import pathlib
import re

from helpers import REPO

SOURCES = [
    p
    for d in ('ganomaly_jax', 'configs', 'bench', 'scripts', 'tests', 'launch')
    for p in sorted((REPO / d).rglob('*'))
    if p.suffix in ('.py', '.sh', '.sbatch')
]
CITATION = re.compile(r'(?<![\w./-])docs/([\w./-]*\w)(?:#([\w-]+))?')
# Built from pieces so this file does not match itself.
OUTSIDE = re.compile('REFER' + r'ENCE(\s*§|\.md)')


def anchors(markdown: pathlib.Path) -> set[str]:
  """GitHub's heading anchors: lower case, punctuation other than '-' and '_' dropped, spaces -> '-'."""
  headings = re.findall(r'^#+\s+(.*)$', markdown.read_text(encoding='utf-8'), re.M)
  return {re.sub(r'[^\w\- ]', '', h.strip().lower()).replace(' ', '-') for h in headings}


def citations() -> list[tuple[str, str, str | None]]:
  found = []
  for path in SOURCES + [REPO / 'README.md']:
    for target, anchor in CITATION.findall(path.read_text(encoding='utf-8')):
      found.append((str(path.relative_to(REPO)), target, anchor or None))
  return found


def test_methods_doc_has_a_section_per_config():
  sections = anchors(REPO / 'docs' / 'methods.md')
  configs = {p.stem for p in (REPO / 'configs').glob('*.py')}
  assert configs and configs <= sections, configs - sections
  assert {'equations', 'evaluation', 'extensions', 'data-protocol'} <= sections


def test_every_cited_docs_path_and_section_exists():
  found = citations()
  assert any(source.startswith('ganomaly_jax/') for source, _, _ in found)  # the package cites it
  for source, target, anchor in found:
    doc = REPO / 'docs' / target
    assert doc.is_file(), f'{source} cites docs/{target}, which does not exist'
    if anchor:
      assert anchor in anchors(doc), f'{source} cites docs/{target}#{anchor}: no such section'


def test_nothing_cites_the_reference_sheet_outside_the_repository():
  offenders = [
      str(p.relative_to(REPO))
      for p in SOURCES + [REPO / 'README.md']
      if OUTSIDE.search(p.read_text(encoding='utf-8'))
  ]
  assert not offenders, offenders
