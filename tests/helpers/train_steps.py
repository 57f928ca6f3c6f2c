"""Drives a few training steps exactly as `train.train_and_evaluate` does, on a chosen device mesh.

Shared by tests/test_parallel.py and tests/test_multihost.py. Run as a script in a fresh process, it
fakes `--devices` CPU devices (possible only before JAX starts its backend, hence the subprocess),
trains the same steps on a 1-device mesh and on a mesh over all devices, and writes both outcomes:

  python tests/helpers/train_steps.py --devices=8 --steps=3 --out=/tmp/x

writes /tmp/x/one.npz, /tmp/x/all.npz (final state leaves + per-step metrics) and /tmp/x/info.json
(device count and the error raised for a batch size the devices cannot split).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any
from unittest import mock

if __name__ == '__main__':  # run as a script, sys.path[0] is tests/helpers: import `helpers` too
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from helpers import tiny  # noqa: E402

# The tiny GANomaly on a small share of the data, as the end-to-end tests train it.
TINY = tiny.spec(**tiny.SMALL_DATA)


def load(spec: str = TINY):
  """The config of a spec (as `--config=` would load it)."""
  from ganomaly_jax.config import arguments

  return arguments.load_config(spec)


def global_batches(config, num_steps: int, num_processes: int = 1) -> list:
  """Images of the first `num_steps` global batches as `num_processes` processes assemble them.

  Each process reads its own slice of the training set (`pipeline.train_iterator` slices by
  `jax.process_index()`), and the global batch is the processes' local batches in process order:
  the order of `jax.devices()` and so of `make_array_from_process_local_data`. Patching the process
  index while building the iterators reproduces that in one process.
  """
  import jax
  import numpy as np

  from ganomaly_jax.data import pipeline, sources

  splits = sources.load_splits(config)
  iterators = []
  for p in range(num_processes):
    with (
        mock.patch.object(jax, 'process_index', lambda p=p: p),
        mock.patch.object(jax, 'process_count', lambda: num_processes),
    ):
      iterators.append(
          pipeline.train_iterator(
              splits.train,
              batch_size=config.train.batch_size // num_processes,
              seed=config.seed,
              flip=config.dataset.flip,
              zoom=config.dataset.zoom,
              workers=0,
          )
      )
  return [np.concatenate([next(it)['image'] for it in iterators]) for _ in range(num_steps)]


def run_steps(config, batches: list, mesh) -> tuple[Any, list[dict[str, float]]]:
  """Initial state and `len(batches)` train steps with train.py's programs (`programs.build`) and keys.

  Returns (final state, on the mesh; per-step metrics).
  """
  import jax

  from ganomaly_jax import programs
  from ganomaly_jax.runtime import parallel

  progs = programs.build(config, mesh)
  init_rng, train_rng = jax.random.split(jax.random.key(config.seed))
  state = progs.init(init_rng)
  train_step = progs.train_step
  history = []
  for step, images in enumerate(batches, start=1):
    batch = parallel.to_global({'image': images}, mesh)
    state, metrics = train_step(state, batch, jax.random.fold_in(train_rng, step))
    history.append({k: float(v) for k, v in jax.device_get(metrics).items()})
  return state, history


def flat_leaves(tree: Any) -> dict[str, Any]:
  """{'path/to/leaf': array} for every array leaf of a pytree (typed PRNG keys excluded)."""
  import jax
  import numpy as np

  flat = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    if hasattr(leaf, 'dtype') and not jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
      flat[jax.tree_util.keystr(path)] = np.asarray(leaf)
  return flat


def _save(path: str, state: Any, history: list[dict[str, float]]) -> None:
  import numpy as np

  import jax

  arrays = {f'state{k}': v for k, v in flat_leaves(jax.device_get(state)).items()}
  for key in history[0]:
    arrays[f'metric/{key}'] = np.asarray([h[key] for h in history])
  np.savez(path, **arrays)


def main(argv: list[str]) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--devices', type=int, default=8)
  parser.add_argument('--steps', type=int, default=3)
  parser.add_argument('--out', required=True)
  args = parser.parse_args(argv)

  import jax

  # Before anything touches the backend: the fake devices must exist when it starts.
  jax.config.update('jax_num_cpu_devices', args.devices)
  jax.config.update('jax_platforms', 'cpu')
  from ganomaly_jax import train
  from ganomaly_jax.runtime import parallel

  os.makedirs(args.out, exist_ok=True)
  config = load()
  batches = global_batches(config, args.steps)
  for name, devices in (('one', jax.devices()[:1]), ('all', jax.devices())):
    state, history = run_steps(config, batches, parallel.make_mesh(devices))
    _save(os.path.join(args.out, f'{name}.npz'), state, history)

  # A global batch the devices cannot split must fail before any work, naming the key.
  bad = load(tiny.spec(**tiny.SMALL_DATA, batch=args.devices + args.devices // 2))
  try:
    train.train_and_evaluate(bad, os.path.join(args.out, 'bad_batch'))
    error = None
  except ValueError as e:
    error = str(e)
  with open(os.path.join(args.out, 'info.json'), 'w') as f:
    json.dump({'device_count': jax.device_count(), 'batch_error': error}, f)


if __name__ == '__main__':
  main(sys.argv[1:])
