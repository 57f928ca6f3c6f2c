"""Benchmark suites as data: methods × classes × seeds at one step budget.

A suite file (`configs/suites/NAME.py`) defines `get_suite(arg)` returning a `Suite`. Each method is
a config file with an argument string plus dotted overrides (an ablation is an override, never a
code fork), or a non-learned baseline (`baseline='pca'|'knn'`) evaluated on the splits that the
same config gives. A class is one value of one config key: `dataset.abnormal` for class-labelled
data (one class abnormal), `dataset.name` for folder categories (`folder:ROOT/<category>`).

`expand` turns a suite into runs, each with its config built and validated, before anything runs,
so a typo in the last run fails in seconds. Nothing here imports JAX or TensorFlow: listing a suite
(`--dry_run`) is instant.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Callable

import ml_collections

from ganomaly_jax.config import arguments, checks, schema
from ganomaly_jax.experiments import baselines, sweep

# The repository's configs/ (suite files refer to the method configs beside them).
CONFIGS_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), 'configs'
)
SUITES_DIR = os.path.join(CONFIGS_DIR, 'suites')
# The study's methods and RIAD (the published form of the grid proposal): every method config,
# schema.METHODS. Then the plain-autoencoder ablation of each GAN generator (the same network
# and losses with the adversarial term off): `ede` (GANomaly) and `unet` (SkipGANomaly).
STUDY_METHODS = schema.METHODS
AUTOENCODERS = (('ganomaly_ae', 'ganomaly'), ('skip_ganomaly_ae', 'skip_ganomaly'))
# Methods whose checkpoints get a second row `<method>+auto`: the same runs read out with
# eval.readout=auto (evaluation/readout.py) beside their published read-out. These are the
# inpainting methods, whose several scores and maps differ most (docs/readout.md).
AUTO_READOUT = ('masked', 'grid_mask', 'riad')
AUTO_SUFFIX = '+auto'
# What a suite's runs leave out unless it asks for pictures (`Suite.pictures`): TensorBoard image
# grids while training, the final PNGs and grid. The tables come from the metrics alone.
LEAN = {'train.image_every': -1, 'eval.pictures': False}
_UNSAFE = re.compile(r'[^A-Za-z0-9._+-]')


class SuiteError(ValueError):
  """A suite that cannot run as given; the message is one line naming the suite and the problem."""


@dataclasses.dataclass(frozen=True)
class Method:
  """One row of the results table.

  Attributes:
    name: the table's name for it (`ganomaly`, `ganomaly_ae`, `pca`).
    config: config spec `path/to/config.py[:args]`, as for `ganomaly_jax.main --config`.
    overrides: dotted config overrides applied on top (`{'loss.w_adv': 0.0}`).
    baseline: '' to train through `train.train_and_evaluate`; 'pca' or 'knn' to evaluate that
      baseline on the config's splits instead (nothing is trained).
    reevaluates: the name of an earlier row whose finished runs (same class and seed) this row
      evaluates again, changed only by its eval.* overrides (`experiments/rescore.py`; nothing is
      trained, so both rows describe the same checkpoints); '' for a row of its own.
  """

  name: str
  config: str
  overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
  baseline: str = ''
  reevaluates: str = ''


@dataclasses.dataclass
class Suite:
  """Methods × classes × seeds at `steps` training steps.

  Attributes:
    name: shown in the tables (`digits`, `folder_categories`).
    methods: the rows; every method runs on every class and seed.
    classes: values of `class_key`, one per run group (digit indices, category folder names).
    seeds: values of `seed` (which also reshuffles the data splits: baselines use the same ones).
    steps: `train.num_steps` of every trained run.
    class_key: the config key a class sets.
    class_value: `class_key`'s value, formatted with `cls` (the class) and `data` (WORKDIR/data,
      where `prepare` writes generated data).
    overrides: dotted overrides for every method, applied before the method's own.
    prepare: called once with the data folder before any run (generated suites); never by a dry run.
    doc: one line describing the suite (the table's subtitle).
    pictures: whether the runs draw pictures (else `LEAN`; the `pictures=1` option turns them on).
    epochs: when > 0, the budget of every trained run is `train.epochs` (one pass over the
      training normals each; `steps` is then unused), with validation and checkpoints per epoch;
      a method's own `train.epochs` override wins (RIAD's early-stopped rows).
    published: class -> {row name: published value} (`experiments/published.py`), shown beside
      the runs in the tables; None for a suite without published numbers.
  """

  name: str
  methods: list[Method]
  classes: list[str]
  seeds: list[int]
  steps: int
  class_key: str = 'dataset.abnormal'
  class_value: str = '{cls}'
  overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
  prepare: Callable[[str], None] | None = None
  doc: str = ''
  pictures: bool = False
  epochs: int = 0
  published: Callable[[str], dict[str, Any]] | None = None


@dataclasses.dataclass
class BenchRun:
  """One (method, class, seed) of a suite: its config and where it runs."""

  method: Method
  cls: str
  seed: int
  overrides: dict[str, Any]  # everything set on top of the method's config file
  config: ml_collections.ConfigDict
  workdir: str
  base_workdir: str = ''  # a re-evaluation row: the run whose checkpoint it evaluates again
  variant: dict[str, str] = dataclasses.field(default_factory=dict)  # ... with these eval keys

  @property
  def name(self) -> str:
    return f'{self.cls}/{self.method.name}/seed-{self.seed}'


def auto_readout(method: Method) -> Method:
  """The row `<method>+auto`: `method`'s checkpoints read out with eval.readout=auto."""
  return Method(
      method.name + AUTO_SUFFIX,
      method.config,
      {**method.overrides, 'eval.readout': 'auto'},
      reevaluates=method.name,
  )


def standard_methods(
    arg: str,
    configs_dir: str = CONFIGS_DIR,
    methods: tuple[str, ...] = STUDY_METHODS,
    auto: tuple[str, ...] = AUTO_READOUT,
) -> list[Method]:
  """Every study method (those in `auto` followed by their `+auto` read-out row), the two
  plain-autoencoder ablations and both baselines, all with the same config argument string (so
  all see the same data, sizes and splits)."""

  def spec(name: str) -> str:
    path = os.path.join(configs_dir, f'{name}.py')
    return f'{path}:{arg}' if arg else path

  out = []
  for m in methods:
    out.append(Method(m, spec(m)))
    if m in auto:
      out.append(auto_readout(out[-1]))
  out += [
      Method(name, spec(base), {'loss.w_adv': 0.0})
      for name, base in AUTOENCODERS
      if base in methods
  ]
  # Baselines read the splits of GANomaly's config: the splits depend only on the dataset keys,
  # the image size and the seed, which the argument string fixes for every method alike.
  out += [Method(b, spec('ganomaly'), baseline=b) for b in baselines.BASELINES]
  return out


def available() -> list[str]:
  """Names of the suite files in configs/suites/."""
  if not os.path.isdir(SUITES_DIR):
    return []
  return sorted(f[:-3] for f in os.listdir(SUITES_DIR) if f.endswith('.py') and f[0] != '_')


def load_suite(spec: str) -> Suite:
  """`NAME[:ARG]` (a file of configs/suites/) or `path/to/suite.py[:ARG]` -> its Suite."""
  name, _, arg = spec.partition(':')
  if name.endswith('.py'):
    path = name
  else:
    path = os.path.join(SUITES_DIR, f'{name}.py')
    if not _UNSAFE.sub('', name) == name or not os.path.isfile(path):
      raise SuiteError(
          f'Unknown suite {name!r}: use one of {", ".join(available())} '
          'or a path to a suite file.'
      )
  if not os.path.isfile(path):
    raise SuiteError(f'Suite file not found: {path}')
  get_suite = getattr(arguments.import_file(path, '_ganomaly_suite'), 'get_suite', None)
  if not callable(get_suite):
    raise SuiteError(f'{path} must define get_suite(arg) returning a suites.Suite.')
  suite = get_suite(arg or None)
  if not isinstance(suite, Suite):
    raise SuiteError(
        f'{path}: get_suite() must return a suites.Suite, got ' f'{type(suite).__name__}.'
    )
  _check(suite, path)
  return suite


def _check(suite: Suite, where: str) -> None:
  names = [m.name for m in suite.methods]
  problems = []
  if not suite.methods or not suite.classes or not suite.seeds:
    problems.append('needs at least one method, class and seed')
  if len(set(names)) != len(names):
    problems.append(f'method names repeat: {names}')
  if len(set(map(str, suite.classes))) != len(suite.classes):
    problems.append(f'classes repeat: {suite.classes}')
  if len(set(suite.seeds)) != len(suite.seeds):
    problems.append(f'seeds repeat: {suite.seeds}')
  if not isinstance(suite.epochs, int) or suite.epochs < 0:
    problems.append(f'epochs must be an integer >= 0, got {suite.epochs!r}')
  elif not suite.epochs and (not isinstance(suite.steps, int) or suite.steps < 1):
    problems.append(f'steps must be a positive integer, got {suite.steps!r}')
  problems += [
      f'method {m.name}: unknown baseline {m.baseline!r} (use {", ".join(baselines.BASELINES)})'
      for m in suite.methods
      if m.baseline and m.baseline not in baselines.BASELINES
  ]
  for i, method in enumerate(suite.methods):
    problem = method.reevaluates and reevaluation_problem(method, suite.methods[:i])
    if problem:
      problems.append(problem)
  if problems:
    raise SuiteError(f'{where}: {"; ".join(problems)}.')


def reevaluation_problem(method: Method, earlier: list[Method]) -> str | None:
  """Why `method` cannot re-evaluate its `reevaluates` row among the `earlier` rows, or None."""
  base = next((m for m in earlier if m.name == method.reevaluates), None)
  if base is None:
    return (
        f'method {method.name} re-evaluates {method.reevaluates!r}, which is not an earlier '
        'row of the suite'
    )
  if base.baseline or base.reevaluates:
    return f'method {method.name}: {base.name} is not a trained row, so it has no checkpoints'
  changed = sorted(
      k
      for k in set(method.overrides) | set(base.overrides)
      if method.overrides.get(k, None) != base.overrides.get(k, None)
  )
  if method.config != base.config or any(not k.startswith('eval.') for k in changed):
    other = ', '.join(k for k in changed if not k.startswith('eval.')) or 'config file'
    return f'method {method.name} may change only eval.* keys of {base.name} ({other} differ)'
  return None


def reevaluated_variant(method: Method, base: Method) -> dict[str, str]:
  """The eval keys (without 'eval.') that `method` sets differently from `base`, as
  `experiments/rescore.py` variants take them (strings)."""
  return {
      k.removeprefix('eval.'): str(v)
      for k, v in sorted(method.overrides.items())
      if base.overrides.get(k, None) != v
  }


def safe_name(text: str) -> str:
  """A path component for a class or method name (unsafe characters become '_')."""
  return _UNSAFE.sub('_', str(text)) or '_'


def expand(suite: Suite, root: str) -> list[BenchRun]:
  """Every run of `suite` under `root`, configs built and validated; in class, seed, method order
  so that each class's table fills up before the next class starts."""
  data = os.path.join(root, 'data')
  bases: dict[str, ml_collections.ConfigDict] = {}
  runs = []
  for cls in suite.classes:
    for seed in suite.seeds:
      for method in suite.methods:
        context = f'suite {suite.name}, {cls}/{method.name}/seed-{seed}'
        if method.config not in bases:
          try:  # unfinished: the class override may still name the dataset ('folder:' + class)
            bases[method.config] = arguments.load_config(method.config, finish=False)
          except (ValueError, KeyError) as e:
            raise SuiteError(f'{context}: config {method.config}: {e}') from None
        budget = (
            {'train.num_steps': suite.steps} if not suite.epochs else epoch_budget(suite.epochs)
        )
        overrides = {
            **budget,
            **({} if suite.pictures else LEAN),
            **suite.overrides,
            **method.overrides,
            suite.class_key: suite.class_value.format(cls=cls, data=data),
            'seed': seed,
        }
        config = sweep.apply_overrides(bases[method.config], overrides, context)
        try:
          config = checks.finished(config)  # the one resolve and validation of the run's config
        except ValueError as e:  # checks.ConfigError, or a dataset the resolve cannot read
          raise SuiteError(f'{context}: {e}') from None
        workdir = os.path.join(root, 'runs', safe_name(cls), safe_name(method.name), f'seed-{seed}')
        run = BenchRun(method, str(cls), seed, overrides, config, workdir)
        if method.reevaluates:
          base = next(m for m in suite.methods if m.name == method.reevaluates)
          run.base_workdir = os.path.join(
              os.path.dirname(os.path.dirname(workdir)), safe_name(base.name), f'seed-{seed}'
          )
          run.variant = reevaluated_variant(method, base)
        runs.append(run)
  return runs


def epoch_budget(epochs: int) -> dict[str, Any]:
  """Overrides for a budget of `epochs`: the step keys back to AUTO (one epoch each, filled
  when the run knows its data: `schedule.with_epoch_steps`)."""
  return {'train.epochs': epochs, **{k: schema.AUTO for k in schema.EPOCH_KEYS}}


# Options every suite file accepts in its argument string: `digits:classes=3+7,seeds=0,steps=50`.
COMMON_OPTIONS = ('classes', 'seeds', 'steps', 'methods', 'pictures', 'epochs')


def parse_arg(arg: str | None) -> tuple[list[str], dict[str, str]]:
  """`A,B,key=value,...` -> (['A', 'B'], {'key': 'value'}): `arguments.parse_arg` with values kept
  as strings (`3+7` is a list of two classes, not 10), its bare items as the positional arguments.
  """
  parsed = arguments.parse_arg(arg, literals=False)
  # Without literals every value is a string, so True marks exactly the bare items.
  positional = [key for key, value in parsed.items() if value is True]
  options = {key: value for key, value in parsed.items() if value is not True}
  return positional, options


def split_names(text: str, names: list[str]) -> list[str]:
  """'masked+masked+auto+pca' -> ['masked', 'masked+auto', 'pca']: '+' separates the items, except
  inside the longest run that is one of `names` (a row name such as `masked+auto`)."""
  parts, out, i = [p for p in text.split('+') if p], [], 0
  while i < len(parts):
    j = next((j for j in range(len(parts), i + 1, -1) if '+'.join(parts[i:j]) in names), i + 1)
    out.append('+'.join(parts[i:j]))
    i = j
  return out


def restrict(suite: Suite, options: dict[str, str], known: tuple[str, ...] = ()) -> Suite:
  """Applies the common options (`classes`, `seeds`, `methods`: '+'-separated subsets; `steps`: a
  new budget; `pictures=1`: draw pictures) to a suite; any option not in COMMON_OPTIONS + `known`
  raises SuiteError."""
  unknown = sorted(set(options) - set(COMMON_OPTIONS) - set(known))
  if unknown:
    raise SuiteError(
        f'suite {suite.name}: unknown option(s) {", ".join(unknown)} '
        f'(use {", ".join(COMMON_OPTIONS + known)}).'
    )

  def subset(key: str, have: list, convert=str) -> list:
    if key not in options:
      return have
    try:
      want = [convert(v) for v in split_names(options[key], [str(h) for h in have])]
    except ValueError:
      raise SuiteError(
          f'suite {suite.name}: {key}={options[key]!r} is not a list of ' f'{convert.__name__}s.'
      ) from None
    missing = [w for w in want if w not in have]
    if missing or not want:
      raise SuiteError(
          f'suite {suite.name}: {key}={options[key]!r} names {missing or "nothing"}; '
          f'the suite has {"+".join(map(str, have))}.'
      )
    return want

  names = [m.name for m in suite.methods]
  kept = subset('methods', names)
  suite = dataclasses.replace(
      suite,
      classes=subset('classes', [str(c) for c in suite.classes]),
      seeds=subset('seeds', list(suite.seeds), int),
      methods=[m for m in suite.methods if m.name in kept],
  )
  if 'pictures' in options:
    if options['pictures'] not in ('0', '1'):
      raise SuiteError(f'suite {suite.name}: pictures={options["pictures"]!r} must be 0 or 1.')
    suite.pictures = options['pictures'] == '1'
  if 'epochs' in options:
    if not suite.epochs:
      raise SuiteError(f'suite {suite.name}: counts its budget in steps; use steps=N.')
    try:
      suite.epochs = int(options['epochs'])
    except ValueError:
      raise SuiteError(
          f'suite {suite.name}: epochs={options["epochs"]!r} is not an integer.'
      ) from None
  if 'steps' in options:
    if suite.epochs:
      raise SuiteError(f'suite {suite.name}: counts its budget in epochs; use epochs=N.')
    try:
      suite.steps = int(options['steps'])
    except ValueError:
      raise SuiteError(
          f'suite {suite.name}: steps={options["steps"]!r} is not an integer.'
      ) from None
  return suite
