"""Speed, memory and timing figures live in docs/, not in the package's or the configs' docstrings or
comments.

Comments say why a CPU form or setting exists and cite the doc's section; a measured figure in the
code goes stale silently when the kernels, XLA or the machine change, while the doc records each
figure with the command and commit it came from (docs/performance.md for speed and memory,
docs/results.md for benchmark results and wall times).
"""

import ast
import io
import pathlib
import re
import tokenize

from helpers import REPO

PACKAGE = sorted((REPO / 'ganomaly_jax').rglob('*.py'))
CONFIGS = sorted((REPO / 'configs').rglob('*.py'))
DOC = REPO / 'docs' / 'performance.md'
# A number followed by a throughput, time or memory unit ("1-5 GFLOP/s", "~470 MiB", "44 -> 17 ms",
# "205 vs 187\nimages/s", "191 s", "95 min"), or a measured speed-up ("2-3x faster"). A digit inside a
# word ("k8s") is not a number.
FIGURE = re.compile(
    r'(?<![A-Za-z])\d(?:[\d,.]*\d)?\s*'
    r'(?:images/s|img/s|steps/s|[GT]FLOP/s|[KMG]iB|ms|s|min)(?![\w/])'
    r'|\d\s*[x×]\s+(?:faster|slower)'
)
CITATION = re.compile(re.escape(DOC.relative_to(REPO).as_posix()) + r'#([\w-]+)')


def docstrings_and_comments(path: pathlib.Path) -> list[tuple[int, str]]:
  """(line, text) of every docstring and comment of a Python file."""
  source = path.read_text(encoding='utf-8')
  found = []
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
      body = node.body
      if (
          body
          and isinstance(body[0], ast.Expr)
          and isinstance(body[0].value, ast.Constant)
          and isinstance(body[0].value.value, str)
      ):
        found.append((body[0].lineno, body[0].value.value))
  for token in tokenize.generate_tokens(io.StringIO(source).readline):
    if token.type == tokenize.COMMENT:
      found.append((token.start[0], token.string))
  return found


def anchors(markdown: pathlib.Path) -> set[str]:
  """GitHub's heading anchors: lower case, punctuation other than '-' and '_' dropped, spaces -> '-'."""
  headings = re.findall(r'^#+\s+(.*)$', markdown.read_text(encoding='utf-8'), re.M)
  return {re.sub(r'[^\w\- ]', '', h.strip().lower()).replace(' ', '-') for h in headings}


def test_figure_pattern():
  for text in (
      '1-5 GFLOP/s',
      '~470 MiB',
      '44 -> 17-25 ms forward',
      '205 vs 187\n  images/s',
      '2-3x faster',
      '1,346 MiB',
      '3.0 img/s',
      'took 191 s of runs',
      'about 95 min',
      '~15 s a run',
  ):
    assert FIGURE.search(text), text
  for text in (
      'slow on these shapes',
      'msgs',
      '4x4x256 -> 8x8x128',
      'O(batch)',
      '2 msec',
      'Open MPI, k8s',
      '300 steps',
      '3 seeds',
      '10 minutes of',
  ):
    assert not FIGURE.search(text), text


def test_no_measured_figures_in_package_or_config_docstrings_or_comments():
  assert CONFIGS
  offenders = [
      f'{path.relative_to(REPO)}:{line}: {match.group(0)!r}'
      for path in PACKAGE + CONFIGS
      for line, text in docstrings_and_comments(path)
      for match in FIGURE.finditer(text)
  ]
  assert not offenders, (
      'measured figures belong in docs/performance.md (speed, memory) or '
      'docs/results.md (results, wall times); in the code say why, and cite the '
      'section:\n' + '\n'.join(offenders)
  )


def test_cited_performance_sections_exist():
  sections = anchors(DOC)
  cited = [
      (str(path.relative_to(REPO)), anchor)
      for path in PACKAGE + [REPO / 'README.md']
      for anchor in CITATION.findall(path.read_text(encoding='utf-8'))
  ]
  assert any(source.startswith('ganomaly_jax/') for source, _ in cited)
  missing = [
      f'{source} cites docs/performance.md#{anchor}'
      for source, anchor in cited
      if anchor not in sections
  ]
  assert not missing, missing
