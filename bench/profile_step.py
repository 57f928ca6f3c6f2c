"""Where the time of one jitted step goes: a jax.profiler trace and a wall-time breakdown by op kind.

  python bench/profile_step.py                                  # GANomaly 32x32x1 training step
  python bench/profile_step.py --case=ganomaly-64x64x3 --mode=infer --trace_dir=/tmp/trace

The trace (TensorBoard's profile plugin or Perfetto read it) covers `--steps` steps after warm-up.
The table splits the traced wall time between op kinds: at each instant the time is shared among
the XLA ops running then; 'no op traced' is time when none was (dispatch, synchronisation, thread
hand-offs). FLOPs per image come from XLA's cost analysis.
"""

import argparse
import collections
import glob
import os
import re
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import throughput  # noqa: E402  (the case list and the benchmark configs)


def _fusion_kinds(hlo_text: str) -> dict[str, str]:
  """Maps each fusion instruction to 'conv' or 'dot' when its fused computation contains one."""
  bodies, current = {}, None
  for line in hlo_text.splitlines():
    if line and not line.startswith(' ') and '{' in line:
      current = line.split()[0].lstrip('%')
      bodies[current] = []
    elif current and line.strip():
      bodies[current].append(line)
  kinds = {}
  for lines in bodies.values():
    for line in lines:
      m = re.match(r'\s*(?:ROOT )?%?([\w.\-]+) = .*calls=%?([\w.\-]+)', line)
      if m:
        body = '\n'.join(bodies.get(m.group(2), []))
        kinds[m.group(1)] = 'conv' if ' convolution(' in body else 'dot' if ' dot(' in body else ''
  return kinds


def _kind(name: str, fusion_kinds: dict[str, str]) -> str:
  if fusion_kinds.get(name):
    return fusion_kinds[name]
  if name.startswith(('convolution', 'conv_general_dilated')):
    return 'conv'
  if name.startswith('dot'):
    return 'dot'
  return re.sub(r'\.\d+$', '', name)  # fusion kind, e.g. transpose_copy_fusion


def wall_time_by_kind(
    trace_dir: str, fusion_kinds: dict[str, str]
) -> tuple[float, dict[str, float]]:
  """(traced span in s, {kind: wall seconds}) from the newest .xplane.pb under trace_dir."""
  import jax

  path = sorted(glob.glob(os.path.join(trace_dir, '**', '*.xplane.pb'), recursive=True))[-1]
  events = []
  for plane in jax.profiler.ProfileData.from_file(path).planes:
    for line in plane.lines:
      if line.name == 'python':
        continue
      for ev in line.events:
        # Executor bookkeeping and zero-length markers are not ops.
        if (
            any(s in ev.name for s in ('Execute', 'Await', 'ThreadpoolListener'))
            or not ev.duration_ns
        ):
          continue
        events.append((ev.start_ns, ev.start_ns + ev.duration_ns, _kind(ev.name, fusion_kinds)))
  boundaries = collections.defaultdict(list)
  for start, end, kind in events:
    boundaries[start].append((kind, 1))
    boundaries[end].append((kind, -1))
  active, shares, previous = collections.Counter(), collections.Counter(), None
  for t in sorted(boundaries):
    if previous is not None:
      running = sum(active.values())
      if running == 0:
        shares['no op traced'] += t - previous
      for kind, count in active.items():
        if count:
          shares[kind] += (t - previous) * count / running
    for kind, delta in boundaries[t]:
      active[kind] += delta
    previous = t
  span = (max(e for _, e, _ in events) - min(s for s, _, _ in events)) / 1e9
  return span, {k: v / 1e9 for k, v in shares.items()}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--case', default='ganomaly-32x32x1', choices=sorted(throughput.CASES))
  parser.add_argument('--mode', default='train', choices=('train', 'infer'))
  parser.add_argument('--steps', type=int, default=5, help='traced steps (after 3 warm-up steps)')
  parser.add_argument(
      '--trace_dir', default='', help='where to keep the trace (default: a temp dir)'
  )
  parser.add_argument('--top', type=int, default=15, help='rows of the breakdown')
  parser.add_argument('--set', action='append', default=[], help='config override key=value')
  args = parser.parse_args()
  from ganomaly_jax.cpu import xla_flags

  xla_flags.apply_cpu_defaults()  # as main does, before JAX starts its backend

  import jax

  # The same key every step, as one training step repeated.
  step, state, compiled, batch = throughput.compiled_step(args.case, args.mode, args.set)

  for _ in range(3):
    state, out = step(state, 1)
  jax.block_until_ready(out)
  trace_dir = args.trace_dir or tempfile.mkdtemp(prefix='profile_step_')
  jax.profiler.start_trace(trace_dir)
  for _ in range(args.steps):
    state, out = step(state, 1)
  jax.block_until_ready(out)
  jax.profiler.stop_trace()

  span, shares = wall_time_by_kind(trace_dir, _fusion_kinds(compiled.as_text()))
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  per_step = span / args.steps
  print(
      f'{args.case} {args.mode}: {per_step * 1e3:.1f} ms/step traced, {batch / per_step:.1f} img/s, '
      f'{cost["flops"] / batch / 1e9:.3f} GFLOP/img, {cost["flops"] / per_step / 1e9:.1f} GFLOP/s'
  )
  print(f'{"op kind":<32}{"ms/step":>9}{"share":>8}')
  for kind, seconds in sorted(shares.items(), key=lambda kv: -kv[1])[: args.top]:
    print(f'{kind:<32}{seconds / args.steps * 1e3:>9.2f}{100 * seconds / span:>7.1f}%')
  print(f'trace: {trace_dir}')


if __name__ == '__main__':
  main()
