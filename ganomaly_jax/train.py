"""The training loop: `train_and_evaluate(config, workdir)`. It ends with the final evaluation
(`evaluator.final_evaluation`); a diverged step is handled by `divergence.Rollback`.

The config arrives finished (`checks.finished`: resolved and validated by the entry point). The run
directory (file names, JSON, curves, the finished rule, restarts, the architecture check) belongs to
`rundir`, its disk space to `disk`; this module trains. A workdir may be local or `gs://bucket/run`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import time
from typing import Any, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ganomaly_jax import programs
from ganomaly_jax import scores as scores_lib
from ganomaly_jax import schedule  # train.epochs, train.early_stop_patience
from ganomaly_jax import state as state_lib
from ganomaly_jax.config import schema
from ganomaly_jax.cpu import host_memory
from ganomaly_jax.data import pipeline, sources
from ganomaly_jax.evaluation import evaluator, passes, reference  # reference: eval.protocol
from ganomaly_jax.runtime import checkpoint, disk, divergence, parallel, preemption, rundir
from ganomaly_jax.runtime import step_group, summaries, timing


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, devices: Sequence[jax.Device] | None = None
) -> dict[str, Any]:
  """Trains (or resumes) the configured method in `workdir`, then evaluates on the test split.

  `config` is finished (`checks.finished`: resolved and validated) and is used as it is. The
  run's data-parallel mesh spans `devices` (default: every device of every process); a queue that
  runs several runs at once gives each its own devices.

  Returns the results dict that is also written to `workdir/results.json`, with the wall and CPU
  seconds of the run's phases under `phase_seconds` (`timing`).

  Raises:
    ValueError: the config is not finished (an AUTO key left: call `checks.finished` first).
    rundir.TrainingError: one line: another run holds the workdir, the disk is full, divergence, ...
  """
  # Resolving and validating is the entry point's job (checks.finished), done once; this only
  # refuses a config that skipped it, whose AUTO zeros would otherwise fail far from the cause.
  left = schema.unresolved(config)
  if left:
    raise ValueError(
        f'train_and_evaluate needs a finished config: {", ".join(left)} still AUTO; '
        'pass it through ganomaly_jax.config.checks.finished(config) first.'
    )
  # One run per workdir, claimed before anything there is read or written (rundir.WorkdirLock).
  lock = rundir.WorkdirLock(workdir) if jax.process_index() == 0 else contextlib.nullcontext()
  with lock:
    try:
      return _train_and_evaluate(config, workdir, devices)
    except Exception as e:
      full = disk.out_of_space(
          e, workdir, state_lib.trace(config).state, config.train.keep_checkpoints
      )
      if full is None:
        raise
      raise full from e


def _train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, devices: Sequence[jax.Device] | None
) -> dict[str, Any]:
  """`train_and_evaluate` once the config is valid and the workdir is ours."""
  previous = _prepare_workdir(config, workdir)
  if config.mode == 'train' and rundir.is_finished(previous, config.train.num_steps):
    logging.info(
        '%s is finished (%d steps); results: %s',
        workdir,
        previous['steps'],
        json.dumps(previous, sort_keys=True),
    )
    return previous
  if config.mode == 'train':  # the networks' one trace gives the checkpoint size (state.trace)
    disk.check_free_space(workdir, state_lib.trace(config).state, config.train.keep_checkpoints)
  with timing.record() as phases:
    with timing.phase('setup'):  # what no other phase claims: mesh, state, restore, writer
      results = _run(config, workdir, previous, devices)
  if not results.get('preempted'):
    results['phase_seconds'] = phases.as_dict()
    if jax.process_index() == 0:
      rundir.write_json(rundir.path(workdir, rundir.RESULTS), results)
  return results


def _run(
    config: ml_collections.ConfigDict,
    workdir: str,
    previous: dict[str, Any] | None,
    devices: Sequence[jax.Device] | None,
) -> dict[str, Any]:
  """The run once the workdir is checked: the results to write, or {'preempted': True, ...}."""
  started = time.time()
  t = config.train
  is_chief = jax.process_index() == 0

  # ---------------- Set up mesh ----------------
  mesh = parallel.make_mesh(devices)
  parallel.check_batch_size(t.batch_size, mesh=mesh)
  parallel.check_batch_size(config.eval.batch_size, 'eval.batch_size', mesh=mesh)

  # ---------------- Input pipeline ----------------
  with timing.phase('data'):
    splits = _load_splits(config, workdir, is_chief)
    # train.epochs: the step keys follow from the training split's size (schedule.py).
    epochs = config.train.epochs
    config = schedule.with_epoch_steps(config, len(splits.train))
    t = config.train
    make_train_iter = functools.partial(
        pipeline.train_iterator,
        splits.train,
        batch_size=parallel.local_batch_size(t.batch_size),
        seed=config.seed,
        flip=config.dataset.flip,
        zoom=config.dataset.zoom,
        workers=config.dataset.workers,
    )
    train_iter = make_train_iter()

  # ---------------- Create model & optimizer ----------------
  progs = programs.build(config, mesh)
  init_rng, train_rng = jax.random.split(jax.random.key(config.seed))
  # The shapes of `progs.init`'s state, from the trace the architecture check made (no new one).
  state_shapes = state_lib.trace(config).state

  # ---------------- Check the workdir, compile, initialise ----------------
  store = checkpoint.CheckpointStore(workdir, keep=t.keep_checkpoints)
  _check_workdir(config, store, state_shapes, workdir)  # before anything compiles
  train_step = progs.train_step
  if config.mode == 'train':
    train_step = _compile_train_step(config, progs, state_shapes, train_rng)
  # A run of a group (step_group.run_together): its steps run in one program with the others'.
  membership = step_group.current()
  if membership is not None and config.mode != 'train':
    membership.leave()  # it takes no steps: the others need not wait for it
    membership = None
  if membership is not None:
    train_step = membership.train_step(train_step, programs.group_program(config, progs, mesh))
  state = progs.init(init_rng)
  host_memory.release_free_memory()

  # ---------------- Load checkpoint ----------------
  state = _restore(config, store, state, train_iter, workdir)
  # eval.protocol=reference: the official per-epoch test read-out, beside the honest results.
  reference_curve = reference.ReferenceCurve(
      config, progs, splits.test, len(splits.train), workdir, int(state.step)
  )
  early_stop = schedule.EarlyStop(t.early_stop_patience)
  if is_chief:
    rundir.write_json(
        rundir.path(workdir, rundir.CONFIG),
        {'config': config.to_dict(), 'versions': rundir.library_versions()},
    )

  # ---------------- Train loop ----------------
  # Opened only now: TensorBoard's writer imports TensorFlow (seconds), which a run refused for
  # its data or run directory never pays for.
  writer = summaries.open_writer(str(rundir.path(workdir)), tensorboard=is_chief and t.tensorboard)
  num_steps = t.num_steps if config.mode == 'train' else int(state.step)
  if int(state.step) == 0 and is_chief:
    writer.write_hparams(hparams(config))
  report = summaries.StepRate(num_steps, writer)
  rollback = divergence.Rollback(
      t, store, restart=lambda: (progs.init(init_rng), make_train_iter())
  )
  history: list[tuple[int, dict[str, Any]]] = []
  preempted = False
  with (
      store.saves_finished_on_error(),
      summaries.flushed(writer),
      preemption.StopRequest() as stop,
      timing.phase('train_steps'),
  ):
    step = int(state.step)
    while step < num_steps:
      step += 1
      batch = next(train_iter)
      if step in rollback.skip_batches:
        state = _skip_step(state)
        logging.warning('Step %d: skipping the batch that diverged before the rollback.', step)
      else:
        batch = parallel.to_global({'image': batch['image']}, mesh)
        state, metrics = train_step(state, batch, _step_key(train_rng, step))
        history.append((step, metrics))
      report(step)

      if step % t.log_every == 0 or step == num_steps:
        fetched, history = [(s, jax.device_get(m)) for s, m in history], []
        if any(m['nonfinite'] > 0 for _, m in fetched):
          state, train_iter = rollback(fetched, state, train_iter)
          writer.write_scalars(step, {'train/rollbacks': rollback.count})
          step = int(state.step)
          if is_chief:  # the rolled-back steps are logged again
            rundir.trim_curves(workdir, step)
          continue
        _log_train_metrics(fetched, step, writer, workdir, t.d_reinit_threshold, is_chief)

      if step % t.eval_every == 0 or step % t.checkpoint_every == 0 or step == num_steps:
        # Before orbax meets a full disk.
        disk.check_free_space(workdir, state_shapes, t.keep_checkpoints, store, step)
      if step % t.eval_every == 0 or step == num_steps:
        with _loop_phase('validation', state):
          val_loss = _validate(
              config, progs.eval_step, state, splits.val, mesh, store, writer, step
          )
        if early_stop.update(val_loss):  # train.early_stop_patience: this step is the last
          logging.info(
              'Early stop at step %d: no better validation loss in %d evaluations.',
              step,
              t.early_stop_patience,
          )
          num_steps = step
      if reference_curve.due(step):
        with _loop_phase('reference', state):
          reference_curve.evaluate(state, step)
      if t.image_every > 0 and (step % t.image_every == 0 or step == num_steps):
        with _loop_phase('pictures', state):
          pictures = passes.first_pictures(
              progs.eval_maps,
              state,
              splits.test,
              mesh,
              config.eval.batch_size,
              config.eval.num_images,
          )
          writer.write_images(step, {'test/input_recon_map': evaluator.image_grid(pictures)[None]})

      saved_now = False
      if step % t.checkpoint_every == 0 or step == num_steps:
        with _loop_phase('checkpoints', state):
          saved_now = store.save(step, state, train_iter, force=(step == num_steps))
      if step < num_steps and stop.should_stop(step):
        if not saved_now:  # a checkpoint of this very step may already be on its way
          store.save(step, state, train_iter, force=True)
        preempted = True
        break
  if membership is not None:  # the others go on without this run
    membership.leave()
  with timing.phase('checkpoints'):
    store.wait()
  if preempted:
    writer.flush()
    store.close()
    logging.warning(
        'Preempted (%s) at step %d: checkpoint saved in %s; run the same command to ' 'resume.',
        stop.signal_name or 'preemption',
        step,
        workdir,
    )
    return {'preempted': True, 'steps': step}

  # ---------------- Final evaluation ----------------
  run_info = {
      'method': config.method,
      'dataset': config.dataset.name,
      'abnormal': splits.info['abnormal'],
      'steps': max(num_steps, (previous or {}).get('steps', 0)),
      'rollbacks': rollback.count,
      'train_wall_time_s': round(time.time() - started, 1),
  }
  results = evaluator.final_evaluation(
      config, workdir, state, store, progs, splits, mesh, writer, run_info
  )
  results.update(reference_curve.results())
  if epochs:
    results['epochs'] = epochs
  if t.early_stop_patience:
    results['early_stopped'] = early_stop.waited >= t.early_stop_patience
  with timing.phase('checkpoints'):
    store.close()
  logging.info('Results (%s): %s', workdir, json.dumps(results, sort_keys=True))
  return results


# ---------------------------------------------------------------------------------------------
# Set-up.
# ---------------------------------------------------------------------------------------------


def _prepare_workdir(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any] | None:
  """Creates the workdir, moves an old run aside on --config.restart; returns its results if any."""
  rundir.path(workdir).mkdir(parents=True, exist_ok=True)
  if config.restart and jax.process_index() == 0:
    rundir.move_aside(workdir)
  return rundir.read_results(workdir)


def _load_splits(config: ml_collections.ConfigDict, workdir: str, is_chief: bool):
  """The data splits; what the pipeline skipped or counted goes to data_report.json."""
  splits = sources.load_splits(config)
  logging.info('Data: %s', splits.info)
  if splits.report is not None and is_chief:
    rundir.write_json(rundir.path(workdir, rundir.DATA_REPORT), splits.report)
  return splits


def _check_workdir(
    config: ml_collections.ConfigDict,
    store: checkpoint.CheckpointStore,
    state_shapes: Any,
    workdir: str,
) -> None:
  """Refuses a workdir that holds another architecture (or, to train, another process count);
  logs the runtime settings that changed since it was trained. Runs on shapes alone."""
  rundir.check_parameters(store.saved_shapes(), checkpoint.tree_shapes(state_shapes), workdir)
  for key, now, before in rundir.runtime_changes(config.runtime.to_dict(), workdir):
    logging.warning(
        'Resuming %s with runtime.%s=%r (it was trained with %r).', workdir, key, now, before
    )
  if config.mode == 'train':
    _check_process_count(store, workdir)


def _check_process_count(store: checkpoint.CheckpointStore, workdir: str) -> None:
  """Refuses to resume training with another process count than the checkpoint was written by.

  Each process saves its own input-pipeline position over its own shard of the data; with another
  count those shards and positions no longer exist (grain would fail deep inside the restore).
  """
  saved = store.saved_process_count()
  if saved is not None and saved != jax.process_count():
    raise rundir.TrainingError(
        f'{workdir} was checkpointed by {saved} processes and this run has {jax.process_count()}: '
        f'each process saved its own position in the data, so resume training with {saved} '
        'processes (mode=eval runs with any count), or use --config.restart=True to start over.'
    )


def _compile_train_step(
    config: ml_collections.ConfigDict,
    progs: programs.Programs,
    state_shapes: Any,
    train_rng: jax.Array,
):
  """The train step compiled from shapes alone, before any state exists (once per kept programs).

  The compiler's scratch memory is given back at once: on CPU the compilation is the run's memory
  peak, and on top of the state the peak would be higher still
  (docs/performance.md#host-memory-hand-back).
  """
  image = jax.ShapeDtypeStruct(state_lib.image_shape(config, config.train.batch_size), jnp.float32)
  compiled = progs.compiled(
      'train_step', state_shapes, {'image': image}, jax.eval_shape(jax.random.fold_in, train_rng, 0)
  )
  host_memory.release_free_memory()
  return compiled


def _restore(
    config: ml_collections.ConfigDict,
    store: checkpoint.CheckpointStore,
    state: Any,
    train_iter: Any,
    workdir: str,
) -> Any:
  """The newest checkpoint's state (and the iterator's position, in place, when training)."""
  # Evaluation needs no data position (and may run with another process count than training).
  is_chief = jax.process_index() == 0
  changed = rundir.version_changes(workdir)
  if changed:
    logging.warning('Resuming %s with %s.', workdir, _versions_text(changed))
  had_checkpoints = store.latest_step() is not None
  # A checkpoint that fails to restore under other library releases is not damaged: it stays.
  restored = store.restore_latest(
      state, train_iter if config.mode == 'train' else None, set_aside=is_chief and not changed
  )
  if restored is None and had_checkpoints and changed:
    pins = ' '.join(f"'{name}=={before}'" for name, _, before in changed)
    raise rundir.TrainingError(
        f'{workdir}: no checkpoint restores with {_versions_text(changed)}; install the releases '
        f'that wrote them to resume (pip install {pins}), or use --config.restart=True to start '
        'over.'
    )
  if config.mode == 'eval' and restored is None:
    raise rundir.TrainingError(f'mode=eval: {workdir} has no checkpoint to evaluate.')
  step = 0 if restored is None else int(restored[0].step)
  if config.mode == 'train' and is_chief:
    # Rows past the restored step (a kill after logging them) are trained and logged again.
    rundir.trim_curves(workdir, step)
  if restored is None:
    return state
  logging.info('Resumed from step %d.', step)
  return restored[0]


def _versions_text(changed: list[tuple[str, str, str]]) -> str:
  """'flax 0.13.0 here, 0.12.8 when its checkpoints were written; ...'."""
  return '; '.join(
      f'{name} {now} here, {before} when its checkpoints were written'
      for name, now, before in changed
  )


def hparams(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config's scalar leaves as dotted keys (TensorBoard's hparams take no lists or None)."""
  return {
      k: v
      for k, v in schema.flatten(config.to_dict()).items()
      if isinstance(v, (int, float, str, bool))
  }


# ---------------------------------------------------------------------------------------------
# The loop's pieces.
# ---------------------------------------------------------------------------------------------


# The step's key, `jax.random.fold_in(train_rng, step)`: jitted, it dispatches in microseconds
# instead of milliseconds (docs/performance.md#the-loops-own-time); the key is the same.
_step_key = jax.jit(jax.random.fold_in)


@functools.partial(jax.jit, donate_argnums=0)
def _skip_step(state: Any) -> Any:
  """Advances the step without an update (the batch that diverged before a rollback)."""
  return state.replace(step=state.step + 1, skipped_steps=state.skipped_steps + 1)


def _log_train_metrics(
    fetched: list[tuple[int, dict[str, Any]]],
    step: int,
    writer,
    workdir: str,
    d_reinit_threshold: float,
    is_chief: bool,
) -> None:
  """Averages the metrics since the last log step into TensorBoard and train_metrics.jsonl."""
  if not fetched:
    return
  summary = {k: float(np.mean([m[k] for _, m in fetched])) for k in fetched[0][1]}
  writer.write_scalars(step, {f'train/{k}': v for k, v in summary.items()})
  if summary.get('d_reinit', 0) > 0:
    logging.warning(
        'Step %d: the discriminator was re-initialised (loss below %g).', step, d_reinit_threshold
    )
  if is_chief:
    rundir.append_curves(workdir, step, summary)


def _loop_phase(name: str, state: Any):
  """A phase inside the loop; it first waits for the dispatched steps, which count as steps."""
  jax.block_until_ready(state)
  return timing.phase(name)


def _validate(
    config: ml_collections.ConfigDict,
    eval_fn,
    state: Any,
    source,
    mesh,
    store: checkpoint.CheckpointStore,
    writer,
    step: int,
) -> float:
  """Validation L1 and score on held-out normals; offers the state as the best by val loss.
  Returns the validation loss (mean L1)."""
  # A score that compares with the training normals' bank has none during training: L1 only.
  has_score = scores_lib.SCORES[config.eval.score].feature is None
  keys = ('score', 'l1') if has_score else ('l1',)
  val = passes.run_eval(eval_fn, state, source, mesh, config.eval.batch_size, keys=keys)
  val_loss = float(np.mean(val['l1'])) if len(val['l1']) else float('nan')
  scalars = {'val/l1': val_loss}
  if has_score:
    scalars['val/score_mean'] = float(np.mean(val['score']))
  writer.write_scalars(step, scalars)
  if config.eval.select == 'val_loss' and np.isfinite(val_loss):
    store.save_best(step, state, val_loss)
  return val_loss
