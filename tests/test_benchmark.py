"""The benchmark: suite files and their expansion, options and errors, tables (mean ± std, bold
best, n/a), resuming (finished runs are skipped), and one real two-run micro suite run twice."""

import os
import subprocess
import sys

import pytest

from ganomaly_jax.config import schema
from ganomaly_jax.runtime import rundir
from ganomaly_jax.experiments import benchmark, suites, tables
from helpers import REPO, tiny

# The tiny GANomaly on a small share of the data (the suite sets 2 steps).
TINY_ARG = tiny.arg(**tiny.SMALL_DATA)
MICRO = f"""
import os
from ganomaly_jax.experiments import suites

CONFIGS = {os.path.join(REPO, 'configs')!r}


def get_suite(arg=None):
  methods = [m for m in suites.standard_methods({TINY_ARG!r}, CONFIGS)
             if m.name in ('ganomaly', 'pca')]
  return suites.Suite(name='micro', methods=methods, classes=['1'], seeds=[0], steps=2)
"""


def never_called(config, workdir):
  raise AssertionError(f'a run started: {workdir}')


def fake_train(config, workdir):
  os.makedirs(workdir, exist_ok=True)
  results = {
      'image_auroc': 0.5 + 0.01 * config.seed,
      'image_ap': 0.5,
      'steps': config.train.num_steps,
      'train_wall_time_s': 1.0,
  }
  rundir.write_json(rundir.path(workdir, rundir.RESULTS), results)
  return results


def micro_suite(tmp_path) -> suites.Suite:
  path = tmp_path / 'micro.py'
  path.write_text(MICRO)
  return suites.load_suite(str(path))


# ------------------------------------------------------------------ suites and expansion


def test_digits_suite_is_methods_by_classes_by_seeds(tmp_path):
  suite = suites.load_suite('digits')
  names = [m.name for m in suite.methods]
  assert names == [
      'ganomaly',
      'ganomaly_modified',
      'ganomaly_sn',
      'skip_ganomaly',
      'masked',
      'masked+auto',
      'grid_mask',
      'grid_mask+auto',
      'riad',
      'riad+auto',
      'ganomaly_ae',
      'skip_ganomaly_ae',
      'pca',
      'knn',
  ]
  runs = suites.expand(suite, str(tmp_path))
  assert len(runs) == 14 * 10 * 3 == len({r.workdir for r in runs})
  assert {(r.cls, r.method.name, r.seed) for r in runs} == {
      (str(c), m, s) for c in range(10) for m in names for s in (0, 1, 2)
  }
  by = {(r.cls, r.method.name, r.seed): r for r in runs}
  run = by[('7', 'skip_ganomaly_ae', 2)]
  assert run.config.dataset.abnormal == '7' and run.config.seed == 2
  assert run.config.loss.w_adv == 0.0 and run.config.model.generator == 'unet'
  assert run.config.train.num_steps == suite.steps and run.config.model.isize == 16
  assert by[('7', 'skip_ganomaly', 2)].config.loss.w_adv == 1.0
  assert by[('0', 'pca', 0)].method.baseline == 'pca'
  # The +auto rows read out the checkpoints of their method's run again: nothing else changes.
  auto = by[('7', 'grid_mask+auto', 2)]
  assert auto.method.reevaluates == 'grid_mask' and auto.variant == {'readout': 'auto'}
  assert auto.base_workdir == by[('7', 'grid_mask', 2)].workdir
  assert auto.config.eval.readout == 'auto' and by[('7', 'grid_mask', 2)].config.eval.readout == (
      'published'
  )
  assert run.workdir == os.path.join(str(tmp_path), 'runs', '7', 'skip_ganomaly_ae', 'seed-2')
  # Every method sees the same data: same dataset keys, image size and channels.
  for key in ('dataset', 'model.isize', 'model.channels'):
    section, _, leaf = key.partition('.')
    assert (
        len(
            {
                str(r.config[section][leaf] if leaf else r.config[section])
                for r in runs
                if r.cls == '7' and r.seed == 2
            }
        )
        == 1
    )
  assert not os.listdir(tmp_path)  # expanding creates nothing


@pytest.mark.parametrize(
    'spec, cls',
    [('digits_grid:seeds=0,steps=40', '3'), ('textures_grid:seeds=0,steps=40', 'brick')],
)
def test_grid_ablation_suite_changes_exactly_its_switches_per_row(tmp_path, spec, cls):
  suite = suites.load_suite(spec)
  runs = {r.method.name: r for r in suites.expand(suite, str(tmp_path)) if r.cls == cls}
  rows = {
      'grid_random': {'mask.partition': 'random'},
      'grid_sets3': {'mask.sets': 3},
      'grid_random_sets3': {'mask.partition': 'random', 'mask.sets': 3},
      'grid_cell_half': {'mask.cells': (8,)},
      'grid_cell_double': {'mask.cells': (2,)},
      'grid_cells_4_8': {'mask.cells': (4, 8)},
      'grid_structural': {'loss.w_ssim': 50.0, 'loss.w_msgms': 50.0},
      'grid_no_gan': {'loss.w_adv': 0.0},
      'grid_map_max': {'eval.score': 'map_max'},
      'grid_msgms_max': {'eval.score': 'map_max', 'eval.map': 'msgms'},
      'grid_inpaint': {'eval.score': 'inpaint'},
      'grid_riad_like': {
          'mask.partition': 'random',
          'mask.sets': 3,
          'mask.cells': (4, 8),
          'loss.w_ssim': 50.0,
          'loss.w_msgms': 50.0,
          'loss.w_adv': 0.0,
          'eval.score': 'map_max',
          'eval.map': 'msgms',
      },
  }
  if spec.startswith('textures'):  # pixel metrics: the map alone is a row there
    rows['grid_map_msgms'] = {'eval.map': 'msgms'}
  assert list(runs) == ['grid_mask', *rows]
  default = schema.flatten(runs['grid_mask'].config.to_dict())
  assert (
      default['mask.kind'],
      default['mask.partition'],
      default['mask.cells'],
      default['mask.sets'],
      default['eval.score'],
      default['train.num_steps'],
  ) == ('grid', 'alternating', (4,), 2, 'lambda', 40)
  for name, changes in rows.items():
    flat = schema.flatten(runs[name].config.to_dict())
    assert {k: v for k, v in flat.items() if default[k] != v} == changes, name
  assert suite.prepare is (
      None if spec.startswith('digits') else suites.load_suite('textures').prepare
  )


def test_options_restrict_the_suite():
  suite = suites.load_suite('digits:classes=3+8,seeds=1,methods=ganomaly+knn,steps=7')
  assert suite.classes == ['3', '8'] and suite.seeds == [1] and suite.steps == 7
  assert [m.name for m in suite.methods] == ['ganomaly', 'knn']
  assert suite.overrides['train.eval_every'] == 3


@pytest.mark.parametrize(
    'spec, match',
    [
        (
            'nope',
            r"Unknown suite 'nope': use one of cifar10, digits, digits_grid, fashion_mnist, "
            r'folder_categories, ganomaly_paper, mnist, skip_ganomaly_paper, textures',
        ),
        ('digits:bogus=1', r'unknown option\(s\) bogus'),
        ('digits:classes=11', r"classes='11' names \['11'\]; the suite has 0\+1"),
        ('digits:seeds=x', r"seeds='x' is not a list of ints"),
        ('folder_categories', 'needs one folder'),
        ('folder_categories:/no/such/dir', 'is not a folder'),
        ('fashion_mnist:oops', 'the only positional argument is npz:PATH'),
    ],
)
def test_bad_suites_fail_with_one_line(spec, match):
  with pytest.raises(suites.SuiteError, match=match):
    suites.load_suite(spec)


def test_folder_categories_and_textures_expand_to_category_folders(tmp_path):
  for name in ('bottle', 'screw'):
    os.makedirs(tmp_path / 'mvtec' / name / 'train' / 'good')
  os.makedirs(tmp_path / 'mvtec' / 'not_a_category')
  suite = suites.load_suite(f'folder_categories:{tmp_path / "mvtec"},seeds=0,steps=5')
  assert suite.classes == ['bottle', 'screw']
  runs = suites.expand(suite, str(tmp_path / 'root'))
  assert len(runs) == 2 * 14  # 7 methods, 3 re-evaluated read-outs, 2 autoencoders, 2 baselines
  assert runs[0].config.dataset.name == f'folder:{tmp_path / "mvtec" / "bottle"}'
  textures = suites.load_suite('textures:seeds=0')
  assert textures.classes == ['brick', 'grass', 'gravel', 'camera'] and textures.prepare
  (run,) = [r for r in suites.expand(textures, '/w') if r.cls == 'grass' and r.method.name == 'pca']
  assert run.config.dataset.name == 'folder:/w/data/grass' and run.config.model.channels == 1
  # CPU-sized by default; width= and batch= options resize it (MVTec folders keep study widths).
  (gan,) = [
      r for r in suites.expand(textures, '/w') if r.cls == 'grass' and r.method.name == 'ganomaly'
  ]
  assert (
      gan.config.model.ngf,
      gan.config.model.ndf,
      gan.config.train.batch_size,
      gan.config.train.num_steps,
  ) == (16, 16, 32, 300)
  small = suites.load_suite('textures:seeds=0,classes=brick,width=8,batch=16')
  (gan,) = [r for r in suites.expand(small, '/w') if r.method.name == 'ganomaly']
  assert (gan.config.model.ngf, gan.config.train.batch_size) == (8, 16)
  assert runs[0].config.model.ngf == 64


@pytest.mark.slow
def test_dry_run_lists_the_runs(tmp_path):
  root = tmp_path / 'bench'
  proc = subprocess.run(
      [
          sys.executable,
          '-m',
          'ganomaly_jax.experiments.benchmark',
          '--suite=digits:classes=2,seeds=0+1',
          f'--workdir={root}',
          '--dry_run',
      ],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=120,
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  lines = proc.stdout.splitlines()
  assert len(lines) == 29 and lines[-1].startswith(
      '28 runs: 18 trained at 300 steps, 4 baseline, 6 re-evaluated'
  )
  assert lines[0].startswith('2/ganomaly/seed-0: python -m ganomaly_jax.main --config=')
  assert f'--workdir={root}/runs/2/ganomaly/seed-0' in lines[0]
  assert '--config.dataset.abnormal=2' in lines[0] and '--config.seed=0' in lines[0]
  assert lines[27].startswith('2/knn/seed-1: baseline knn on the splits of')
  assert lines[5] == (
      f'2/masked+auto/seed-0: re-evaluates {root}/runs/2/masked/seed-0 with eval '
      'readout=auto (nothing trained)'
  )
  assert not root.exists()

  bad = subprocess.run(
      [
          sys.executable,
          '-m',
          'ganomaly_jax.experiments.benchmark',
          '--suite=nope',
          f'--workdir={root}',
          '--dry_run',
      ],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=120,
  )
  assert bad.returncode == 1 and bad.stderr.strip().splitlines() == [
      "error: Unknown suite 'nope': use one of cifar10, digits, digits_grid, fashion_mnist, folder_categories, "
      'ganomaly_paper, mnist, skip_ganomaly_paper, textures, textures_grid or a path to a '
      'suite file.'
  ]


# ------------------------------------------------------------------ tables


def test_tables_mean_std_bold_best_and_na(tmp_path):
  rows = []
  for cls, shift in (('1', 0.0), ('2', 0.1)):
    for seed, noise in enumerate((-0.01, 0.01)):
      rows.append(
          {
              'suite': 's',
              'class': cls,
              'seed': seed,
              'method': 'gan',
              'status': 'done',
              'image_auroc': 0.8 + shift + noise,
              'image_ap': 0.5,
              'wall_time_s': 10.0,
          }
      )
      rows.append(
          {
              'suite': 's',
              'class': cls,
              'seed': seed,
              'method': 'pca',
              'status': 'done',
              'image_auroc': 0.7 + shift,
              'image_ap': 0.6,
              'pixel_auroc': 0.9,
              'wall_time_s': 1.0,
          }
      )
  rows.append(
      {
          'suite': 's',
          'class': '2',
          'seed': 2,
          'method': 'gan',
          'status': 'failed: diverged',
          'image_auroc': None,
      }
  )
  summary = tables.summarise(rows)
  mean, std, n = summary['1']['gan']['image_auroc']
  assert mean == pytest.approx(0.8) and std == pytest.approx(0.02**0.5 / 10) and n == 2
  md = tables.markdown(rows, 'T').splitlines()
  head = md.index('## 1') + 2
  assert md[head].startswith('| method | seeds | image_auroc | image_ap |')
  assert 'pixel_auroc' in md[head] and 'pixel_pro' not in md[head]  # no run reports PRO
  assert md[head + 2] == ('| gan | 2 | **0.8000 ± 0.0141** | 0.5000 ± 0.0000 | n/a | 10.0 |')
  assert md[head + 3] == (
      '| pca | 2 | 0.7000 ± 0.0000 | **0.6000 ± 0.0000** | ' '**0.9000 ± 0.0000** | 1.0 |'
  )
  # Over all classes: the mean of the class means, ± the std over seeds of the mean over classes
  # (seed 0: (0.79 + 0.89) / 2, seed 1: (0.81 + 0.91) / 2), not the spread between classes.
  overall = md.index('## All classes (mean over classes; ± std over seeds of that mean)') + 2
  assert md[overall + 2].startswith('| gan | 2 | **0.8500 ± 0.0141** |')
  by_class = md.index('## image_auroc per class (mean over seeds)') + 2
  assert md[by_class : by_class + 4] == [
      '| method | 1 | 2 | mean |',
      '|---|---|---|---|',
      '| gan | **0.800** | **0.900** | **0.850** |',
      '| pca | 0.700 | 0.800 | 0.750 |',
  ]
  pixel = md.index('## pixel_auroc per class (mean over seeds)') + 2
  assert md[pixel + 2 : pixel + 4] == ['| pca | **0.900** | **0.900** | **0.900** |', '']
  assert '1 run(s) not finished: 2/gan/seed-2 (failed: diverged)' in md
  tables.write_csv(str(tmp_path), rows)
  back = tables.read_csv(str(tmp_path))
  assert list(back[0]) == list(tables.COLUMNS) and len(back) == 9
  assert back[-1]['image_auroc'] == '' and back[0]['class'] == '1'
  # False alarms: the smallest mean is the best.
  fpr_rows = [
      {'class': '1', 'seed': 0, 'method': m, 'status': 'done', 'image_fpr': v}
      for m, v in (('few_alarms', 0.02), ('many_alarms', 0.3))
  ]
  fpr_md = tables.markdown(fpr_rows, 'F').splitlines()
  assert '| few_alarms | 1 | **0.0200 ± 0.0000** | n/a |' in fpr_md
  assert '| many_alarms | 1 | 0.3000 ± 0.0000 | n/a |' in fpr_md
  path = tables.write_plot(str(tmp_path), rows, 'T')
  assert os.path.getsize(path) > 1000


def test_rescore_variants_parse_and_name():
  from ganomaly_jax.experiments import rescore

  assert rescore.parse_variant('eval.map=l1, score=map_mean') == {'map': 'l1', 'score': 'map_mean'}
  assert rescore.variant_name({'score': 'map_mean'}) == 'map_mean'
  assert rescore.variant_name({'score': 'map_max', 'map': 'l1'}) == 'map=l1,score=map_max'
  for bad in ('map', '', '=l1'):
    with pytest.raises(ValueError):
      rescore.parse_variant(bad)


# ------------------------------------------------------------------ running and resuming


def test_finished_runs_are_skipped_and_failures_retried(tmp_path, monkeypatch):
  suite = suites.load_suite('digits:classes=1,seeds=0+1,methods=ganomaly+grid_mask+pca,steps=2')
  root = str(tmp_path / 'bench')
  calls = []
  monkeypatch.setattr(
      benchmark, '_run_baseline', lambda run: calls.append(run.name) or fake_baseline(run)
  )

  def flaky(config, workdir):
    calls.append(workdir)
    if config.method == 'grid_mask' and config.seed == 1:
      raise rundir.TrainingError('Divergence at step 1 (non-finite g_loss); stopping.')
    return fake_train(config, workdir)

  records = benchmark.run_benchmark(suite, root, train_fn=flaky)
  assert [r.status for r in records] == ['done'] * 4 + [
      'failed: Divergence at step 1 (non-finite g_loss); stopping.',
      'done',
  ]
  assert len(calls) == 6
  rows = tables.read_csv(root)
  assert [(r['method'], r['seed']) for r in rows] == [
      ('ganomaly', '0'),
      ('grid_mask', '0'),
      ('pca', '0'),
      ('ganomaly', '1'),
      ('grid_mask', '1'),
      ('pca', '1'),
  ]
  assert rows[0]['suite'] == 'digits' and rows[0]['commit'] and float(rows[0]['wall_time_s']) >= 0
  for name in (tables.RESULTS_MD, tables.RESULTS_PNG):
    assert os.path.exists(os.path.join(root, name))

  calls.clear()
  again = benchmark.run_benchmark(suite, root, train_fn=flaky)
  assert [r.status for r in again] == ['skipped'] * 4 + [
      'failed: Divergence at step 1 (non-finite g_loss); stopping.',
      'skipped',
  ]
  assert calls == [os.path.join(root, 'runs', '1', 'grid_mask', 'seed-1')]
  # A skipped run keeps the wall time and commit of the session that ran it.
  assert [r['commit'] for r in tables.read_csv(root)][:4] == [r['commit'] for r in rows][:4]


def fake_baseline(run):
  results = {'baseline': run.method.baseline, 'image_auroc': 0.6, 'image_ap': 0.5}
  os.makedirs(run.workdir, exist_ok=True)
  rundir.write_json(rundir.path(run.workdir, rundir.RESULTS), results)
  return results


@pytest.mark.slow
def test_micro_suite_trains_once_then_skips(tmp_path, monkeypatch):
  suite = micro_suite(tmp_path)
  root = str(tmp_path / 'bench')
  records = benchmark.run_benchmark(suite, root)
  assert [(r.run.method.name, r.status) for r in records] == [('ganomaly', 'done'), ('pca', 'done')]
  rows = tables.read_csv(root)
  assert [r['method'] for r in rows] == ['ganomaly', 'pca'] and rows[0]['steps'] == '2'
  for row in rows:
    assert 0.0 <= float(row['image_auroc']) <= 1.0 and row['class'] == '1'
  assert rundir.read_results(records[0].run.workdir)['steps'] == 2

  from ganomaly_jax.experiments import baselines

  monkeypatch.setattr(baselines, 'evaluate', lambda *a, **k: pytest.fail('baseline re-ran'))
  again = benchmark.run_benchmark(suite, root, train_fn=never_called)
  assert [r.status for r in again] == ['skipped', 'skipped']
  assert [r['image_auroc'] for r in tables.read_csv(root)] == [r['image_auroc'] for r in rows]

  # ganomaly_jax/experiments/rescore.py: the same checkpoint with another score; its own score reproduces the run.
  from ganomaly_jax.experiments import rescore

  out = str(tmp_path / 'rescored')
  rescored = rescore.rescore(
      root, 'ganomaly', [{'score': 'latent'}, {'score': 'reconstruction'}], out
  )
  assert [(r['method'], r['class'], r['seed']) for r in rescored] == [
      ('ganomaly[latent]', '1', 0),
      ('ganomaly[reconstruction]', '1', 0),
  ]
  own = rundir.read_results(records[0].run.workdir)
  assert own['score'] == 'latent'
  assert rescored[0]['image_auroc'] == pytest.approx(own['image_auroc'], abs=1e-9)
  other = rundir.read_results(rescored[1]['workdir'])
  assert other['score'] == 'reconstruction' and other['selected_step'] == own['selected_step']
  assert other['score_max'] != pytest.approx(own['score_max'])  # another score was computed
  assert '| ganomaly[reconstruction] | 1 |' in rundir.path(out, 'results.md').read_text()
  monkeypatch.setattr(rescore, 'rescore_run', lambda *a: pytest.fail('re-evaluated'))
  assert rescore.rescore(root, 'ganomaly', [{'score': 'latent'}], out)[0]['image_auroc'] == (
      rescored[0]['image_auroc']
  )
  with pytest.raises(ValueError, match='No finished run'):
    rescore.rescore(root, 'masked', [{'score': 'inpaint'}], out)
