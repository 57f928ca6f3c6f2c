"""The smallest config of a method that still trains (`quick`, widths 4, batch 8: 2 CPU cores), and
the compiled programs that tests run it with.

Test functions take these as the `tiny_config` and `build_programs` fixtures (tests/conftest.py);
module-level helpers and the scripts that tests start import them from here.
"""

import jax
import ml_collections

from ganomaly_jax import programs
from ganomaly_jax.config import arguments, checks
from ganomaly_jax.runtime import parallel
from ganomaly_jax.experiments import sweep
from helpers import REPO

# No final PNGs (eval.pictures): matplotlib takes about 2 s of a tiny run that otherwise lasts 2-4 s
# once its programs are compiled. No TensorBoard events (train.tensorboard): clu's writer imports
# TensorFlow, 5 s of every `main` process a test starts. Tests of either turn it on
# (test_counts_and_methods draws every method's pictures, test_train's gs:// run writes both through
# epath; the quick runs of tests/synthetic.py and the commands' own `quick` preset keep both).
TINY_ARG = 'quick,model.ngf=4,model.ndf=4,batch=8,eval.pictures=False,train.tensorboard=False'
# The data caps and evaluation batch of the tests that train and evaluate end to end.
SMALL_DATA = {'dataset.max_train': 64, 'dataset.max_test': 32, 'eval.batch_size': 16}


def arg(**args) -> str:
  """TINY_ARG followed by `args` as `key=value` items: an argument string (`steps=2`, or a dotted
  key through `**{'dataset.max_train': 64}`)."""
  return ','.join([TINY_ARG, *(f'{key}={value}' for key, value in args.items())])


def spec(method: str = 'ganomaly', **args) -> str:
  """`<repository>/configs/<method>.py:<arg(**args)>`, as `--config=` and `load_config` take it.

  Argument-string values are set before the dataset-dependent keys are resolved, so a `dataset=`
  given here also sets the dataset's channels, which a `tiny_config` override would not.
  """
  return f'{REPO / "configs" / method}.py:{arg(**args)}'


def tiny_config(method: str = 'ganomaly', **overrides) -> ml_collections.ConfigDict:
  """configs/<method>.py:TINY_ARG with dotted `overrides` set (checked as a sweep's are), finished
  (`checks.finished`) as an entry point finishes a config before it trains."""
  return checks.finished(sweep.apply_overrides(arguments.load_config(spec(method)), overrides))


def build_programs(config: ml_collections.ConfigDict) -> programs.Programs:
  """`programs.build(config)` on a one-device mesh: the jitted steps that a run uses.

  Its train step donates the state (argument 0): copy a state that the test reads afterwards
  (`jax.tree.map(jnp.copy, state)`).
  """
  return programs.build(config, parallel.make_mesh(jax.devices()[:1]))
