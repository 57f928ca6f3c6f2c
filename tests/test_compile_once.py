"""Each jitted step compiles exactly once per run, through evaluation, checkpoints and logging."""

import logging
import os
import re

import jax
import pytest

from ganomaly_jax import config_lib, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
def test_steps_compile_once_across_eval_and_checkpoints(tmp_path):
  # Six steps with evaluation, images and a checkpoint every two: a recompile (a changed static
  # argument, a weak-typed or differently sharded state coming back from eval or the checkpointer)
  # would show up as a second 'Compiling train_step'.
  config = config_lib.load_config(os.path.join(
      REPO, 'configs/ganomaly.py:quick,steps=6,model.ngf=4,model.ndf=4,batch=8,'
      'dataset.max_train=32,dataset.max_test=16,eval.batch_size=16'))
  config.unlock()
  config.train.eval_every = config.train.checkpoint_every = config.train.image_every = 2
  config.train.log_every = 1
  config.lock()

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
