"""Each jitted step compiles exactly once per run, through evaluation, checkpoints and logging."""

import logging
import re

import jax
import pytest

from ganomaly_jax import train


class _CompileLog(logging.Handler):
  """Collects JAX's 'Compiling <name> ...' log lines (emitted while `jax.log_compiles` is on)."""

  def __init__(self):
    super().__init__(level=logging.DEBUG)
    self.names: list[str] = []

  def emit(self, record: logging.LogRecord) -> None:
    match = re.match(r'Compiling jit\((\w+)\)', record.getMessage())
    if match:
      self.names.append(match.group(1))


@pytest.mark.slow
def test_steps_compile_once_across_eval_and_checkpoints(tmp_path, tiny_config):
  # Six steps with evaluation, images and a checkpoint every two: a recompile (a changed static
  # argument, a weak-typed or differently sharded state coming back from eval or the checkpointer)
  # would show up as a second 'Compiling train_step'.
  config = tiny_config(
      **{
          'train.num_steps': 6,
          'dataset.max_train': 32,
          'dataset.max_test': 16,
          'eval.batch_size': 16,
          'train.eval_every': 2,
          'train.checkpoint_every': 2,
          'train.image_every': 2,
          'train.log_every': 1,
      }
  )

  handler = _CompileLog()
  logger = logging.getLogger('jax')
  logger.addHandler(handler)
  try:
    with jax.log_compiles(True):
      results = train.train_and_evaluate(config, str(tmp_path))
  finally:
    logger.removeHandler(handler)

  assert results['steps'] == 6
  assert handler.names.count('train_step') == 1, handler.names
  # eval_step twice: scores only (validation) and with maps (image grids and the final test
  # evaluation, which reuses the loop's compiled function).
  assert handler.names.count('eval_step') == 2, handler.names
