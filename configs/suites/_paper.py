"""Shared by the ganomaly_paper and skip_ganomaly_paper suites (the leading '_' keeps it off the
list): the papers' runs as the official code ran them, beside ours on the same split (issue 30).

Every row trains on the official split (`dataset.pool_normals=True`: with a seed the official loader
pools the normals of both splits and splits them 80/20; the test split holds that 20 % and every
abnormal image of both splits), at 32×32, batch 64, for a budget in epochs (the official `niter`).
The GAN rows use the official hyper-parameters (Adam 2e-4, β1 0.5, w_adv/w_con/w_enc = 1/50/1,
nz 100, ngf = ndf = 64, D re-initialised below a loss of 1e-5; Skip-GANomaly's 3×3 classifier) and
`eval.protocol=reference`, so each of their runs reports the honest figure (inference-mode
BatchNorm, checkpoint from validation normals) and the official read-out (test-batch BatchNorm,
best test epoch) of the same training. The inpainting rows (masked, grid_mask, RIAD) and the PCA /
k-NN baselines run on the same split with the honest protocol only.

RIAD trains as its paper did, to convergence: up to `RIAD_EPOCH_FACTOR` × the suite's epochs with
early stopping on the validation loss (`train.early_stop_patience`), its cells kept at 2-8 px
(`masks.grid.riad_cells`) and its map smoothed over about the largest cell (`masks.grid.riad_filter`: 11 px);
the `riad_literal` row is today's literal scaling of its 2-16 px cells and 21 px filter, which
leaves one 2 px size and a 3 px filter at 32 px.
"""

import os

from ganomaly_jax.masks import grid
from ganomaly_jax.experiments import published, suites

CONFIGS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ISIZE = 32
# The official GANomaly / Skip-GANomaly settings (run_mnist.sh, run_cifar.sh, options.py).
OFFICIAL_GAN = {
    'optim.g_lr': 2e-4,
    'optim.d_lr': 2e-4,
    'optim.b1': 0.5,
    'optim.b2': 0.999,
    'loss.w_adv': 1.0,
    'loss.w_con': 50.0,
    'loss.w_enc': 1.0,
    'model.latent_dim': 100,
    'model.ngf': 64,
    'model.ndf': 64,
    'train.d_reinit_threshold': 1e-5,
    'eval.protocol': 'reference',
}
# Every row: the official split, size and batch.
SPLIT = {
    'dataset.pool_normals': True,
    'model.isize': ISIZE,
    'train.batch_size': 64,
    'eval.batch_size': 64,
}
# RIAD: at most this many times the suite's epochs, stopped after this many epochs without a
# better validation loss.
RIAD_EPOCH_FACTOR = 10
RIAD_PATIENCE = 5


def methods(arg, gans, epochs, mnist_normalization=False):
  """The rows: the GAN methods `gans` as the official code ran them (with `mnist_normalization`,
  GANomaly once more on the official MNIST input normalisation: `ganomaly_mnist_norm`), then
  masked, grid_mask, RIAD (the 2-8 px rule and the literal one) and the baselines, all with config
  argument `arg`."""
  spec = lambda name: f'{os.path.join(CONFIGS, name)}.py:{arg}'
  rows = [
      suites.Method(
          name,
          spec(name),
          {**OFFICIAL_GAN, **({'model.classifier_kernel': 3} if name == 'skip_ganomaly' else {})},
      )
      for name in gans
  ]
  if mnist_normalization:
    rows.append(
        suites.Method(
            'ganomaly_mnist_norm',
            spec('ganomaly'),
            {**OFFICIAL_GAN, 'dataset.normalization': 'mnist_reference'},
        )
    )
  rows += [suites.Method('masked', spec('masked')), suites.Method('grid_mask', spec('grid_mask'))]
  riad = {'train.epochs': RIAD_EPOCH_FACTOR * epochs, 'train.early_stop_patience': RIAD_PATIENCE}
  rows += [
      suites.Method(
          'riad',
          spec('riad'),
          {
              **riad,
              'mask.cells': grid.riad_cells(ISIZE),
              'eval.map_filter': grid.riad_filter(ISIZE),
          },
      ),
      suites.Method('riad_literal', spec('riad'), {**riad, 'mask.cells': (128, 64, 32, 16)}),
  ]
  rows += [suites.Method(b, spec('ganomaly'), baseline=b) for b in ('pca', 'knn')]
  return rows


def paper_suite(
    name, arg, *, dataset, classes, channels, gans, epochs, doc, mnist_normalization=False
):
  """A paper suite over `classes` of `dataset` (tfds name) or `npz:PATH` given in `arg`.

  Options: epochs=N (default `epochs`), classes=, seeds=, methods=, pictures=1.
  """
  positional, options = suites.parse_arg(arg)
  if len(positional) > 1 or (positional and not positional[0].startswith('npz:')):
    raise suites.SuiteError(
        f'suite {name}: the only positional argument is npz:PATH, got ' f'{positional}.'
    )
  data = positional[0] if positional else dataset
  try:
    epochs = int(options.pop('epochs', epochs))
  except ValueError:
    raise suites.SuiteError(f'suite {name}: epochs must be an integer.') from None
  if epochs < 1:
    raise suites.SuiteError(f'suite {name}: epochs={epochs} must be >= 1.')

  def published_rows(cls):
    found = {m: published.lookup(dataset, cls, m) for m in gans}
    return {m: p for m, p in found.items() if p is not None}

  suite = suites.Suite(
      name=name,
      methods=methods(f'dataset={data},channels={channels}', gans, epochs, mnist_normalization),
      classes=list(classes),
      seeds=[0, 1, 2],
      steps=1,
      epochs=epochs,
      overrides=dict(SPLIT),
      published=published_rows,
      doc=f'{doc} {data} at {ISIZE}×{ISIZE}×{channels}, official split (pooled normals 80/20), '
      f'batch 64, {epochs} epochs; `reference (test-selected)`: the official read-out '
      '(test-batch BatchNorm, best test epoch), not a deployable figure.',
  )
  return suites.restrict(suite, options)
