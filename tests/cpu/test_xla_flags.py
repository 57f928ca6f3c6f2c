"""The CPU defaults are added to XLA_FLAGS only where measured, and never over a user's choice."""

from ganomaly_jax import xla_flags

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


def test_applied_on_import_in_this_process():
  import os

  import jaxlib.version

  if (jaxlib.version.__version__.startswith(xla_flags.MEASURED_ON)
      and os.environ.get(xla_flags.OPT_OUT) != '0'):
    for flag in xla_flags.CPU_DEFAULTS:
      assert flag.split('=')[0] in os.environ.get('XLA_FLAGS', '')
