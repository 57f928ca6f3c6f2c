"""Training loop and final evaluation: `train_and_evaluate(config, workdir)`."""

from __future__ import annotations

import functools
import json
import os
import signal
import time
from typing import Any

from absl import logging
from clu import metric_writers, periodic_actions
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ganomaly_jax import checkpoint, config_lib, evaluate, parallel, plots, programs
from ganomaly_jax import preemption, state as state_lib, validate
from ganomaly_jax.cpu import host_memory
from ganomaly_jax.data import pipeline, sources

RESULTS_FILE = 'results.json'
CONFIG_FILE = 'config.json'


class TrainingError(RuntimeError):
  """Training cannot go on (divergence, incompatible workdir); the message is one line."""


def write_json(path: str, payload: dict[str, Any]) -> None:
  """Writes JSON atomically (temporary file + rename) so a crash never leaves half a file."""
  tmp = f'{path}.tmp'
  with open(tmp, 'w') as f:
    json.dump(payload, f, indent=2, sort_keys=True, default=str)
  os.replace(tmp, path)


def read_results(workdir: str) -> dict[str, Any] | None:
  path = os.path.join(workdir, RESULTS_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def read_curves(path: str) -> dict[str, list[tuple[int, float]]]:
  """Loss curves logged so far (all sessions of a resumed run; a re-logged step keeps its last value)."""
  if not os.path.exists(path):
    return {}
  by_step: dict[int, dict[str, float]] = {}
  with open(path) as f:
    for line in f:
      try:
        row = json.loads(line)
      except json.JSONDecodeError:  # a line cut short by a kill
        continue
      by_step[int(row.pop('step'))] = row
  curves: dict[str, list[tuple[int, float]]] = {}
  for step in sorted(by_step):
    for k, v in by_step[step].items():
      curves.setdefault(k, []).append((step, v))
  return curves


def _check_parameters(store: checkpoint.CheckpointStore, state_shapes: Any, workdir: str) -> None:
  """Refuses to resume a checkpoint whose parameter tree differs from the config's (names, shapes).

  Runs on shapes alone (the checkpoint's metadata and `jax.eval_shape` of the initialiser), before
  anything compiles. Settings that change no parameter (runtime.*: kernels, compute dtype, cache)
  resume; a real architecture change stops with the differing paths.
  """
  saved = store.saved_shapes()
  if saved is None:
    return
  wanted = checkpoint.tree_shapes(state_shapes)
  diff = sorted(k for k in set(saved) | set(wanted)
                if saved.get(k) != wanted.get(k) and k.split('/')[0] in _PARAMETER_FIELDS)
  if diff:
    shown = ', '.join(f'{k} {saved.get(k, "absent")} -> {wanted.get(k, "absent")}' for k in diff[:4])
    more = f' and {len(diff) - 4} more' if len(diff) > 4 else ''
    raise TrainingError(
        f'{workdir} holds a run with a different architecture (parameters differ: {shown}{more}); '
        'use another --workdir or --config.restart=True to move the old checkpoints aside.')


_PARAMETER_FIELDS = ('g_params', 'd_params', 'g_stats', 'd_stats')


def _log_runtime_changes(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Logs the runtime settings that differ from the ones the workdir was trained with."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return
  with open(path) as f:
    previous = config_lib.upgrade_legacy(json.load(f).get('config', {}))
  old = previous.get('runtime', {})
  for key, value in sorted(config.runtime.to_dict().items()):
    if key in old and old[key] != value:
      logging.warning('Resuming %s with runtime.%s=%r (it was trained with %r).', workdir, key,
                      value, old[key])


def _check_process_count(store: checkpoint.CheckpointStore, workdir: str) -> None:
  """Refuses to resume training with another process count than the checkpoint was written by.

  Each process saves its own input-pipeline position over its own shard of the data; with another
  count those shards and positions no longer exist (grain would fail deep inside the restore).
  """
  saved = store.saved_process_count()
  if saved is not None and saved != jax.process_count():
    raise TrainingError(
        f'{workdir} was checkpointed by {saved} processes and this run has {jax.process_count()}: '
        f'each process saved its own position in the data, so resume training with {saved} '
        'processes (mode=eval runs with any count), or use --config.restart=True to start over.')


def _move_aside(workdir: str) -> None:
  """--config.restart: keep old checkpoints and results under old_<time>/ instead of deleting them."""
  names = ('checkpoints', 'best', RESULTS_FILE, CONFIG_FILE)
  present = [n for n in names if os.path.exists(os.path.join(workdir, n))]
  if not present or jax.process_index() != 0:
    return
  target = os.path.join(workdir, time.strftime('old_%Y%m%d_%H%M%S'))
  os.makedirs(target, exist_ok=True)
  for n in present:
    os.replace(os.path.join(workdir, n), os.path.join(target, n))
  logging.warning('restart: moved %s to %s', ', '.join(present), target)


def _image_grid(eval_fn, state, source, mesh, batch_size: int, n: int) -> np.ndarray:
  """input | reconstruction | anomaly map for the first n images of a split (all processes join)."""
  out = evaluate.run_eval(eval_fn, state, source, mesh, batch_size, keys=('recon', 'map'), limit=n)
  rows = [[pipeline.to_float(source[i]['image']), out['recon'][i], out['map'][i]]
          for i in range(len(out['label']))]
  return plots.image_grid(rows)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains (or resumes) the configured method in `workdir`, then evaluates on the test split.

  Returns the results dict that is also written to `workdir/results.json`.
  """
  # Dataset-dependent keys are filled only now, after every --config override (config_lib.resolve).
  config = config_lib.resolve(config)
  validate.validate_config(config)
  os.makedirs(workdir, exist_ok=True)
  if config.restart:
    _move_aside(workdir)
  previous = read_results(workdir)
  if config.mode == 'train' and previous and previous.get('steps', 0) >= config.train.num_steps:
    logging.info('%s is finished (%d steps); results: %s', workdir, previous['steps'],
                 json.dumps(previous, sort_keys=True))
    return previous
  started = time.time()

  # ---------------- Set up mesh ----------------
  mesh = parallel.make_mesh()
  parallel.check_batch_size(config.train.batch_size)
  parallel.check_batch_size(config.eval.batch_size, 'eval.batch_size')
  is_chief = jax.process_index() == 0

  # ---------------- Input pipeline ----------------
  splits = sources.load_splits(config)
  logging.info('Data: %s', splits.info)
  if splits.report is not None and is_chief:
    write_json(os.path.join(workdir, 'data_report.json'), splits.report)
  make_train_iter = functools.partial(
      pipeline.train_iterator, splits.train,
      batch_size=parallel.local_batch_size(config.train.batch_size), seed=config.seed,
      flip=config.dataset.flip, zoom=config.dataset.zoom, workers=config.dataset.workers)
  train_iter = make_train_iter()

  # ---------------- Create model & optimizer ----------------
  progs = programs.build(config, mesh)
  init_rng, train_rng = jax.random.split(jax.random.key(config.seed))
  init_state, p_train_step = progs.init, progs.train_step
  state_shapes = jax.eval_shape(init_state, init_rng)

  # ---------------- Check the workdir ----------------
  store = checkpoint.CheckpointStore(workdir, keep=config.train.keep_checkpoints)
  _check_parameters(store, state_shapes, workdir)  # before anything compiles
  _log_runtime_changes(config, workdir)
  if config.mode == 'train':
    _check_process_count(store, workdir)
  if config.mode == 'train':
    # Compile the step from shapes alone, before any state exists, and give the compiler's scratch
    # memory back: on CPU the compilation is the run's memory peak, and on top of the state the
    # peak would be higher still (docs/performance.md#host-memory-hand-back).
    image = jax.ShapeDtypeStruct(state_lib.image_shape(config, config.train.batch_size), jnp.float32)
    p_train_step = p_train_step.lower(state_shapes, {'image': image},
                                      jax.eval_shape(jax.random.fold_in, train_rng, 0)).compile()
    host_memory.release_free_memory()
  state = init_state(init_rng)
  host_memory.release_free_memory()
  p_eval, p_eval_maps = progs.eval_step, progs.eval_maps

  # ---------------- Load checkpoint ----------------
  # Evaluation needs no data position (and may run with another process count than training).
  restored = store.restore_latest(state, train_iter if config.mode == 'train' else None)
  if restored is not None:
    state, _ = restored
    logging.info('Resumed from step %d.', int(state.step))
  elif config.mode == 'eval':
    raise TrainingError(f'mode=eval: {workdir} has no checkpoint to evaluate.')
  if is_chief:
    write_json(os.path.join(workdir, CONFIG_FILE), {'config': config.to_dict()})

  # ---------------- Train loop ----------------
  writer = metric_writers.create_default_writer(workdir, just_logging=not is_chief,
                                                asynchronous=True)
  num_steps = config.train.num_steps if config.mode == 'train' else int(state.step)
  if int(state.step) == 0 and is_chief:
    writer.write_hparams(_flat_hparams(config))
  report = periodic_actions.ReportProgress(num_train_steps=num_steps, writer=writer)
  skip_step = jax.jit(lambda s: s.replace(step=s.step + 1, skipped_steps=s.skipped_steps + 1),
                      donate_argnums=0)
  curves_path = os.path.join(workdir, 'train_metrics.jsonl')
  history: list[tuple[int, dict[str, Any]]] = []
  skip_batches: set[int] = set()  # steps whose batch is dropped after a rollback
  rollbacks = 0
  preempted = False
  t = config.train
  with metric_writers.ensure_flushes(writer), preemption.StopRequest() as stop:
    step = int(state.step)
    while step < num_steps:
      step += 1
      batch = next(train_iter)
      if step in skip_batches:
        state = skip_step(state)
        logging.warning('Step %d: skipping the batch that diverged before the rollback.', step)
      else:
        batch = parallel.to_global(batch, mesh)
        state, metrics = p_train_step(state, {'image': batch['image']},
                                      jax.random.fold_in(train_rng, step))
        history.append((step, metrics))
      report(step)

      if step % t.log_every == 0 or step == num_steps:
        fetched = [(s, jax.device_get(m)) for s, m in history]
        history = []
        bad = [(s, m) for s, m in fetched if m['nonfinite'] > 0]
        if bad:
          bad_step, bad_metrics = bad[0]
          what = _divergence(bad_metrics, t.loss_limit)
          if t.on_nonfinite == 'stop' or rollbacks >= t.max_rollbacks:
            store.wait()
            reason = ('stopping' if t.on_nonfinite == 'stop'
                      else f'stopping after {rollbacks} rollbacks')
            raise TrainingError(
                f'Divergence at step {bad_step} ({what}); {reason}. The last checkpoint '
                f'(step {store.latest_step()}) is intact; its update was not applied.')
          store.wait()
          restored = store.restore_latest(state, train_iter)
          rollbacks += 1
          skip_batches.update(s for s, _ in bad)
          if restored is None:  # no checkpoint yet: restart from the initial state
            state, train_iter = init_state(init_rng), make_train_iter()
          else:
            state, _ = restored
          logging.warning('Divergence at step %d (%s): rollback %d/%d to step %d, skipping that '
                          'batch.', bad_step, what, rollbacks, t.max_rollbacks, int(state.step))
          writer.write_scalars(step, {'train/rollbacks': rollbacks})
          step = int(state.step)
          continue
        summary = {k: float(np.mean([m[k] for _, m in fetched])) for k in fetched[0][1]} if fetched else {}
        if summary:
          writer.write_scalars(step, {f'train/{k}': v for k, v in summary.items()})
          if summary.get('d_reinit', 0) > 0:
            logging.warning('Step %d: the discriminator was re-initialised (loss below %g).', step,
                            t.d_reinit_threshold)
          if is_chief:
            with open(curves_path, 'a') as f:
              f.write(json.dumps({'step': step, **summary}) + '\n')

      if step % t.eval_every == 0 or step == num_steps:
        val = evaluate.run_eval(p_eval, state, splits.val, mesh, config.eval.batch_size)
        val_loss = float(np.mean(val['l1'])) if len(val['l1']) else float('nan')
        writer.write_scalars(step, {'val/l1': val_loss, 'val/score_mean': float(np.mean(val['score']))})
        if config.eval.select == 'val_loss' and np.isfinite(val_loss):
          store.save_best(step, state, val_loss)

      if step % t.image_every == 0 or step == num_steps:
        grid = _image_grid(p_eval_maps, state, splits.test, mesh, config.eval.batch_size,
                           config.eval.num_images)
        writer.write_images(step, {'test/input_recon_map': grid[None]})

      saved_now = False
      if step % t.checkpoint_every == 0 or step == num_steps:
        saved_now = store.save(step, state, train_iter, force=(step == num_steps))
      if step == config.debug_kill_at_step:  # test hook: die with no chance to save anything
        os.kill(os.getpid(), signal.SIGKILL)
      if step < num_steps and stop.should_stop(step):
        if not saved_now:  # a checkpoint of this very step may already be on its way
          store.save(step, state, train_iter, force=True)
        preempted = True
        break
  store.wait()
  if preempted:
    writer.flush()
    store.close()
    logging.warning('Preempted (%s) at step %d: checkpoint saved in %s; run the same command to '
                    'resume.', stop.signal_name or 'preemption', step, workdir)
    return {'preempted': True, 'steps': step}

  # ---------------- Final evaluation ----------------
  selected_step = int(state.step)
  if config.eval.select == 'val_loss':
    best = store.restore_best(state)
    if best is not None:
      state, selected_step = best
  run_info = {
      'method': config.method, 'dataset': config.dataset.name, 'abnormal': splits.info['abnormal'],
      'steps': max(num_steps, (previous or {}).get('steps', 0)), 'selected_step': selected_step,
      'd_reinits': int(jax.device_get(state.d_reinits)),
      'skipped_steps': int(jax.device_get(state.skipped_steps)), 'rollbacks': rollbacks,
      'train_wall_time_s': round(time.time() - started, 1),
  }
  results = evaluate.evaluate_and_report(
      config, workdir, state, progs.components, progs.hp, splits, mesh, writer, run_info,
      read_curves(curves_path), eval_maps_fn=p_eval_maps)
  writer.flush()
  if is_chief:
    write_json(os.path.join(workdir, RESULTS_FILE), results)
  store.close()
  logging.info('Results (%s): %s', workdir, json.dumps(results, sort_keys=True))
  return results


def _divergence(metrics: dict[str, Any], limit: float) -> str:
  """Names the loss terms that were non-finite (or beyond the loss limit) in one step."""
  terms = {k: float(v) for k, v in metrics.items() if k not in ('nonfinite', 'd_reinit')}
  bad = [k for k, v in terms.items() if not np.isfinite(v)]
  if bad:
    return 'non-finite ' + ', '.join(sorted(bad))
  big = [k for k in ('g_loss', 'd_loss') if limit > 0 and abs(terms.get(k, 0.0)) >= limit]
  return (f'{", ".join(big)} beyond train.loss_limit={limit:g}' if big
          else 'non-finite gradients')


def _flat_hparams(config: ml_collections.ConfigDict) -> dict[str, Any]:
  flat = {}

  def walk(prefix, node):
    for k, v in node.items():
      if isinstance(v, dict):
        walk(f'{prefix}{k}.', v)
      elif isinstance(v, (int, float, str, bool)):
        flat[f'{prefix}{k}'] = v
  walk('', config.to_dict())
  return flat
