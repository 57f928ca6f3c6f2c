"""The smallest config of a method that still trains: `quick`, widths 4, batch 8 (2 CPU cores)."""

import os

from ganomaly_jax import config_lib
from ganomaly_jax.experiments import sweep

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY_ARG = 'quick,model.ngf=4,model.ndf=4,batch=8'


def tiny_config(method: str = 'ganomaly', **overrides):
  """configs/<method>.py:TINY_ARG with dotted `overrides` set (checked as a sweep's are)."""
  config = config_lib.load_config(os.path.join(REPO, 'configs', f'{method}.py:{TINY_ARG}'))
  return sweep.apply_overrides(config, overrides)
