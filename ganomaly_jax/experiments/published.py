"""Published image AUROCs of GANomaly and Skip-GANomaly, each with its source.

The paper suites (`configs/suites/ganomaly_paper.py`, `skip_ganomaly_paper.py`) put these beside
the reference-protocol value (the official code's read-out: test-batch BatchNorm, best test
epoch) and the honest value of the same runs. A value is only ever one that a stated source gives;
none is invented, interpolated or averaged here.

  * Skip-GANomaly (Akçay, Atapour-Abarghouei, Breckon, IJCNN 2019), Table I: CIFAR-10 AUC per
    abnormal class, rows GANomaly and Skip-GANomaly. The values below are as read in issue 30 and
    have not yet been confirmed against the paper itself (no copy of it was at hand): check each
    one before it goes into a report, then change `CIFAR10_SOURCE`.
  * GANomaly (Akçay, Atapour-Abarghouei, Breckon, ACCV 2018) gives MNIST and CIFAR-10 only as bar
    charts (Figure 4, error bars over seeds). No value read off that figure is recorded: `MNIST`
    is empty until someone reads it with a stated method, and must then say "read off Figure 4".
"""

from __future__ import annotations

import dataclasses

from ganomaly_jax.data import sources


@dataclasses.dataclass(frozen=True)
class Published:
  """One published image AUROC and where it comes from."""

  value: float
  source: str  # e.g. 'Skip-GANomaly (IJCNN 2019) Table I, as read in issue 30 (unconfirmed)'
  kind: str  # 'table' (a printed number) or 'figure' (read off a chart)


CIFAR10_SOURCE = (
    'Skip-GANomaly (IJCNN 2019) Table I, as read in issue 30, not yet confirmed '
    'against the paper'
)
# Table I's column order in issue 30: bird car cat deer dog frog horse plane ship truck.
_TABLE_I_ORDER = ('bird', 'car', 'cat', 'deer', 'dog', 'frog', 'horse', 'plane', 'ship', 'truck')
_TABLE_I = {
    'ganomaly': (0.510, 0.631, 0.587, 0.593, 0.628, 0.683, 0.605, 0.633, 0.616, 0.617),
    'skip_ganomaly': (0.448, 0.953, 0.607, 0.602, 0.615, 0.931, 0.788, 0.797, 0.659, 0.907),
}

# class name -> method -> Published (class names as sources.CIFAR10_NAMES spells them).
CIFAR10: dict[str, dict[str, Published]] = {
    name: {
        method: Published(values[_TABLE_I_ORDER.index(name)], CIFAR10_SOURCE, 'table')
        for method, values in _TABLE_I.items()
    }
    for name in sources.CIFAR10_NAMES
}

MNIST_NOTE = (
    'GANomaly (ACCV 2018) shows MNIST only as a bar chart (Figure 4) with error bars '
    'over seeds; no value read off it is recorded here.'
)
# digit (str) -> method -> Published: empty on purpose (see MNIST_NOTE).
MNIST: dict[str, dict[str, Published]] = {}

DATASETS = {'cifar10': CIFAR10, 'mnist': MNIST}


def lookup(dataset: str, cls: str, method: str) -> Published | None:
  """The published value of `method` with class `cls` abnormal on `dataset`, or None.

  `cls` may be a CIFAR-10 name or index ('bird', '2').
  """
  table = DATASETS.get(dataset, {})
  if dataset == 'cifar10' and str(cls).isdigit():
    cls = sources.CIFAR10_NAMES[int(cls)]
  return table.get(str(cls), {}).get(method)
