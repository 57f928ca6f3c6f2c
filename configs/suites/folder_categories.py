"""`folder_categories:PATH`: one class per MVTec-AD style category folder of PATH, every method.

  python -m ganomaly_jax.experiments.benchmark --suite=folder_categories:/data/mvtec --workdir=runs/mvtec
  python -m ganomaly_jax.experiments.benchmark \
      --suite=folder_categories:/data/mvtec,classes=bottle+screw,steps=500 --workdir=runs/mvtec2

A category is a sub-folder of PATH holding train/good (and test/, optionally ground_truth/); each
runs as `dataset.name=folder:PATH/<category>`, so pixel AUROC / PRO come with the masks. 64×64 RGB
(`isize=N`, `channels=1|3` change it), study widths, 3 seeds, 5000 steps; not CPU-sized.
Options (suites.restrict): classes=a+b, seeds=0, methods=ganomaly+pca, steps=N, isize=N,
channels=N, width=N (ngf = ndf), batch=N.
"""

import os

from ganomaly_jax.experiments import suites

CONFIGS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def categories(root):
  """Sorted names of the sub-folders of root that hold train/good."""
  if not os.path.isdir(root):
    raise suites.SuiteError(f'suite folder_categories: {root} is not a folder.')
  found = sorted(
      d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d, 'train', 'good'))
  )
  if not found:
    raise suites.SuiteError(
        f'suite folder_categories: no category folder (NAME/train/good) ' f'in {root}.'
    )
  return found


def folder_suite(
    name,
    classes,
    options,
    *,
    class_value,
    steps,
    isize,
    channels,
    width=None,
    batch=None,
    doc='',
    prepare=None,
):
  """A suite over category folders (also used by the textures suite): `class_value` is the
  `dataset.name` of a class, formatted with {cls} (and {data}, WORKDIR/data). Options `isize`,
  `channels`, `width` (ngf = ndf) and `batch` replace the suite's own values."""
  steps = int(options.pop('steps', steps))
  isize = int(options.pop('isize', isize))
  channels = int(options.pop('channels', channels))
  width = int(options.pop('width', width or 0))
  batch = int(options.pop('batch', batch or 0))
  # `dataset=folder:` keeps the digits preset off; each class then sets its own folder.
  arg = f'dataset=folder:,isize={isize},channels={channels}'
  if width:
    arg += f',model.ngf={width},model.ndf={width}'
  if batch:
    arg += f',batch={batch}'
  width_text = f'ngf = ndf = {width}' if width else 'study widths'
  suite = suites.Suite(
      name=name,
      methods=suites.standard_methods(arg, CONFIGS),
      classes=list(classes),
      seeds=[0, 1, 2],
      steps=steps,
      class_key='dataset.name',
      class_value=class_value,
      overrides={
          'train.eval_every': max(1, steps // 5),
          'train.checkpoint_every': max(1, steps // 5),
      },
      prepare=prepare,
      doc=f'{doc} {isize}×{isize}×{channels}, {width_text}, {steps} steps.'.strip(),
  )
  return suites.restrict(suite, options)


def get_suite(arg=None):
  positional, options = suites.parse_arg(arg)
  if len(positional) != 1:
    raise suites.SuiteError(
        'suite folder_categories needs one folder: '
        '--suite=folder_categories:PATH[,option=value...].'
    )
  root = os.path.abspath(positional[0])
  # Braces in the path must survive the class template's formatting.
  template = 'folder:' + os.path.join(root.replace('{', '{{').replace('}', '}}'), '{cls}')
  return folder_suite(
      'folder_categories',
      categories(root),
      options,
      class_value=template,
      steps=5000,
      isize=64,
      channels=3,
      doc=f'{root}:',
  )
