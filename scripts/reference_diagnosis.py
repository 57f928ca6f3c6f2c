"""Where the reference protocol's AUROC comes from: one checkpoint read out three ways.

  python scripts/reference_diagnosis.py --workdir=runs/gp/runs/1/ganomaly/seed-0 [--seed=0]

The official GANomaly / Skip-GANomaly test loop normalises each test batch with its own BatchNorm
statistics, and its test split is ordered (normals, then every abnormal image), so most batches hold
one kind only (docs/evaluation.md#reference-protocol). This script scores the test split of a run
trained with `--config.eval.protocol=reference` from its latest checkpoint (the state the last
reference point was computed on) and prints one JSON line with the official read-out's AUROC:

  * `official_order`: test-batch statistics, the official order (equals results.json's
    `reference.last_image_auroc` for the same checkpoint);
  * `shuffled_order`: test-batch statistics, the same images in a random order, so batches mix
    normals and abnormals as in any deployment;
  * `inference_mode`: BatchNorm in inference mode (the running statistics), the same score.

The gap between the first two is what the ordering of the test split adds; between the last two
what test-batch statistics add on their own. Nothing is trained and the run directory is not written.
"""

from __future__ import annotations

import json

from absl import app, flags
import jax
import numpy as np

# Flags are defined only when run as a program, so that importing `diagnose` (tests) defines no
# global absl flag that could clash with another tool's --workdir.
_FLAGS = {}


def diagnose(workdir: str, seed: int = 0) -> dict[str, float | int | str]:
  """The three read-outs of `workdir`'s latest checkpoint (see the module docstring)."""
  from ganomaly_jax import programs
  from ganomaly_jax.data import pipeline, sources
  from ganomaly_jax.evaluation import reference
  from ganomaly_jax.inference import finished_run

  config, _ = finished_run.load_run(workdir)
  _, state, step, _ = finished_run.restore_state(config, workdir, 'latest')
  progs = programs.build(config)
  test = sources.load_splits(config).test
  reference_fn = reference.program(config, progs)
  scores, labels = reference.test_scores(reference_fn, state, test)
  order = np.random.default_rng(seed).permutation(len(test))
  shuffled = [[], []]
  for start in range(0, len(order), reference.OFFICIAL_BATCH):
    idx = order[start : start + reference.OFFICIAL_BATCH]
    images = np.stack([pipeline.to_float(test[int(i)]['image']) for i in idx])
    shuffled[0].append(np.asarray(jax.device_get(reference_fn(state, images)), np.float64))
    shuffled[1].append(np.asarray([test[int(i)]['label'] for i in idx], np.int32))
  inference_mode = []
  for start in range(0, len(test), reference.OFFICIAL_BATCH):
    images = np.stack(
        [
            pipeline.to_float(test[i]['image'])
            for i in range(start, min(start + reference.OFFICIAL_BATCH, len(test)))
        ]
    )
    out = progs.eval_step(state, {'image': images})
    inference_mode.append(np.asarray(jax.device_get(out['score']), np.float64))
  return {
      'workdir': workdir,
      'step': step,
      'num_test': int(len(labels)),
      'official_order': reference.official_auc(labels, scores),
      'shuffled_order': reference.official_auc(
          np.concatenate(shuffled[1]), np.concatenate(shuffled[0])
      ),
      'inference_mode': reference.official_auc(labels, np.concatenate(inference_mode)),
  }


def main(argv: list[str]) -> None:
  del argv
  from ganomaly_jax.runtime import cli, startup

  startup.configure_process()
  try:
    print(json.dumps(diagnose(_FLAGS['workdir'].value, _FLAGS['seed'].value)))
  except ValueError as e:  # finished_run.InferError and config errors: one line
    cli.exit_with_error(str(e))


if __name__ == '__main__':
  _FLAGS['workdir'] = flags.DEFINE_string(
      'workdir', None, 'A run trained with eval.protocol=reference.'
  )
  _FLAGS['seed'] = flags.DEFINE_integer('seed', 0, 'Seed of the shuffled order.')
  flags.mark_flag_as_required('workdir')
  app.run(main)
