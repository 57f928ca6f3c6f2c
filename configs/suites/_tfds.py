"""Shared by the mnist, fashion_mnist and cifar10 suites (the leading '_' keeps it off the list)."""

import os

from ganomaly_jax.experiments import suites

CONFIGS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def class_suite(name, arg, classes, *, channels, steps):
  """All ten classes of a class-labelled dataset at 32×32 and the study's widths, 3 seeds.

  The argument may start with `npz:PATH` (arrays x_train, y_train, x_test, y_test) instead of tfds.
  """
  positional, options = suites.parse_arg(arg)
  if len(positional) > 1 or (positional and not positional[0].startswith('npz:')):
    raise suites.SuiteError(
        f'suite {name}: the only positional argument is npz:PATH, got ' f'{positional}.'
    )
  dataset = positional[0] if positional else name
  steps = int(options.pop('steps', steps))
  suite = suites.Suite(
      name=name,
      methods=suites.standard_methods(f'dataset={dataset},channels={channels}', CONFIGS),
      classes=list(classes),
      seeds=[0, 1, 2],
      steps=steps,
      overrides={
          'train.eval_every': max(1, steps // 6),
          'train.checkpoint_every': max(1, steps // 6),
      },
      doc=f'{dataset} at 32×32×{channels}, one class abnormal (GANomaly protocol), study widths, '
      f'batch 64, {steps} steps.',
  )
  return suites.restrict(suite, options)
