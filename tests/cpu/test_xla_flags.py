"""The CPU defaults are added to XLA_FLAGS only where measured, and never over a user's choice."""

import os
import subprocess
import sys

from ganomaly_jax.cpu import xla_flags

FLAG, SCHEDULER = xla_flags.CPU_DEFAULTS
ALL = ' '.join(xla_flags.CPU_DEFAULTS)


def test_added_to_empty_or_unrelated_flags():
  env = {}
  assert xla_flags.apply_cpu_defaults(env, jaxlib_version='0.10.2') == [FLAG, SCHEDULER]
  assert env['XLA_FLAGS'] == ALL
  env = {'XLA_FLAGS': '--xla_force_host_platform_device_count=8'}
  xla_flags.apply_cpu_defaults(env, jaxlib_version='0.10.2')
  assert env['XLA_FLAGS'] == f'--xla_force_host_platform_device_count=8 {ALL}'


def test_user_choice_opt_out_and_unmeasured_versions_are_left_alone():
  name = FLAG.split('=')[0]
  env = {'XLA_FLAGS': f'{name}=dot'}
  assert xla_flags.apply_cpu_defaults(env, jaxlib_version='0.10.2') == [SCHEDULER]
  assert env['XLA_FLAGS'] == f'{name}=dot {SCHEDULER}'
  scheduler_choice = SCHEDULER.split('=')[0] + '=CPU_SCHEDULER_TYPE_DEFAULT'
  env = {'XLA_FLAGS': scheduler_choice}
  assert xla_flags.apply_cpu_defaults(env, jaxlib_version='0.10.2') == [FLAG]
  assert env['XLA_FLAGS'] == f'{scheduler_choice} {FLAG}'
  env = {xla_flags.OPT_OUT: '0'}
  assert xla_flags.apply_cpu_defaults(env, jaxlib_version='0.10.2') == [] and 'XLA_FLAGS' not in env
  env = {}
  assert xla_flags.apply_cpu_defaults(env, jaxlib_version='0.11.0') == [] and env == {}


def test_config_switch_turns_them_off():
  env = {}
  assert (
      xla_flags.apply_cpu_defaults(env, jaxlib_version='0.10.2', enabled=False) == [] and env == {}
  )


def test_importing_the_package_leaves_the_environment_alone():
  # Entry points apply the flags; importing the package, its models, steps or programs must not.
  # (jax itself sets a few variables on import, so the baseline is taken after importing it.)
  code = (
      'import os, sys, jax; before = dict(os.environ); import ganomaly_jax, ganomaly_jax.models, '
      'ganomaly_jax.programs, ganomaly_jax.cpu.kernels, ganomaly_jax.config.schema; '
      'sys.exit(0 if dict(os.environ) == before else 1)'
  )
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  assert subprocess.run([sys.executable, '-c', code], env=env).returncode == 0
