"""Side-by-side speed: ganomaly_jax vs a PyTorch implementation of the same architecture and step.

  pip install -e '.[bench]'     # or, on the 2-core dev machine: pip install torch==2.13.0 (CPU build)
  python bench/compare_torch.py                 # all cases, train and infer
  python bench/compare_torch.py --cases=ganomaly-32x32x1 --rounds=3

The PyTorch side is written the standard way (nn.Conv2d, nn.ConvTranspose2d, nn.BatchNorm2d, Adam),
following the reference GANomaly / Skip-GANomaly code: the G update recomputes D on x and x̂, then the
D update runs D on x and x̂.detach(). Both sides use 2 threads, the same batch and shapes, and run in
fresh subprocesses, alternating, `--rounds` times; the table shows the median of each side and the
ratio ours/theirs. PyTorch is never imported by the package or the tests.

FLOPs per image come from XLA's cost analysis (ours) and torch's FlopCounterMode (theirs); the
reference step runs D four times, ours twice, so the counts differ. `ceiling` divides the float32
matmul peak measured on the same machine by our FLOPs per image and PyTorch's images/s: the ratio
our step would reach if every FLOP ran as fast as a large matmul does here, a practical ceiling.
"""

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import throughput  # noqa: E402  (the JAX side and the case list)

THREADS = 2


def _torch_models(method: str, isize: int, nc: int, ngf: int = 64, nz: int = 100):
  import torch
  from torch import nn

  def encoder(nout: int) -> nn.Sequential:
    layers = [nn.Conv2d(nc, ngf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True)]
    size, ch = isize // 2, ngf
    while size > 4:
      layers += [
          nn.Conv2d(ch, ch * 2, 4, 2, 1, bias=False),
          nn.BatchNorm2d(ch * 2),
          nn.LeakyReLU(0.2, True),
      ]
      size, ch = size // 2, ch * 2
    layers += [nn.Conv2d(ch, nout, 4, 1, 0, bias=False)]
    return nn.Sequential(*layers)

  def decoder() -> nn.Sequential:
    ch, size = ngf // 2, 4
    while size != isize:
      ch, size = ch * 2, size * 2
    layers = [nn.ConvTranspose2d(nz, ch, 4, 1, 0, bias=False), nn.BatchNorm2d(ch), nn.ReLU(True)]
    size = 4
    while size < isize // 2:
      layers += [
          nn.ConvTranspose2d(ch, ch // 2, 4, 2, 1, bias=False),
          nn.BatchNorm2d(ch // 2),
          nn.ReLU(True),
      ]
      ch, size = ch // 2, size * 2
    layers += [nn.ConvTranspose2d(ch, nc, 4, 2, 1, bias=False), nn.Tanh()]
    return nn.Sequential(*layers)

  class NetG(nn.Module):  # GANomaly E-D-E

    def __init__(self):
      super().__init__()
      self.e1, self.dec, self.e2 = encoder(nz), decoder(), encoder(nz)

    def forward(self, x):
      z = self.e1(x)
      rec = self.dec(z)
      return rec, z, self.e2(rec)

  class NetD(nn.Module):  # features = all but the last conv (GANomaly) / the latent (Skip)

    def __init__(self, latent: bool):
      super().__init__()
      enc = encoder(nz if latent else 1)
      layers = list(enc.children())
      if latent:
        self.features = enc
        self.classifier = nn.Conv2d(nz, 1, 4, 1, 'same', bias=False)
      else:
        self.features = nn.Sequential(*layers[:-1])
        self.classifier = layers[-1]

    def forward(self, x):
      f = self.features(x)
      return self.classifier(f).view(-1), f

  class UNetBlock(nn.Module):  # pix2pix UnetSkipConnectionBlock with BatchNorm (no dropout)

    def __init__(self, outer, inner, sub=None, outermost=False, innermost=False, in_ch=None):
      super().__init__()
      self.outermost = outermost
      down = nn.Conv2d(in_ch or outer, inner, 4, 2, 1, bias=False)
      if outermost:
        model = [down, sub, nn.ReLU(True), nn.ConvTranspose2d(inner * 2, outer, 4, 2, 1), nn.Tanh()]
      elif innermost:
        model = [
            nn.LeakyReLU(0.2, False),
            down,
            nn.ReLU(True),
            nn.ConvTranspose2d(inner, outer, 4, 2, 1, bias=False),
            nn.BatchNorm2d(outer),
        ]
      else:
        model = [
            nn.LeakyReLU(0.2, False),
            down,
            nn.BatchNorm2d(inner),
            sub,
            nn.ReLU(True),
            nn.ConvTranspose2d(inner * 2, outer, 4, 2, 1, bias=False),
            nn.BatchNorm2d(outer),
        ]
      self.model = nn.Sequential(*model)

    def forward(self, x):
      return self.model(x) if self.outermost else torch.cat([x, self.model(x)], 1)

  class UNet(nn.Module):

    def __init__(self):
      super().__init__()
      n = int(round(torch.log2(torch.tensor(float(isize))).item()))
      block = UNetBlock(ngf * 8, ngf * 8, innermost=True)
      for _ in range(n - 5):
        block = UNetBlock(ngf * 8, ngf * 8, block)
      block = UNetBlock(ngf * 4, ngf * 8, block)
      block = UNetBlock(ngf * 2, ngf * 4, block)
      block = UNetBlock(ngf, ngf * 2, block)
      self.net = UNetBlock(nc, ngf, block, outermost=True, in_ch=nc)

    def forward(self, x):
      return self.net(x), None, None

  def init(m):
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
      nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
      nn.init.normal_(m.weight, 1.0, 0.02)
      nn.init.zeros_(m.bias)

  skip = method != 'ganomaly'
  g, d = (UNet() if skip else NetG()), NetD(latent=skip)
  g.apply(init)
  d.apply(init)
  return g, d


def run_torch_case(name: str, mode: str, steps: int, reps: int) -> dict:
  import torch
  import torch.nn.functional as F

  torch.set_num_threads(THREADS)
  torch.manual_seed(0)
  method, isize, nc, batch = throughput.CASES[name]
  g, d = _torch_models(method, isize, nc)
  og = torch.optim.Adam(g.parameters(), lr=2e-4, betas=(0.5, 0.999))
  od = torch.optim.Adam(d.parameters(), lr=2e-4, betas=(0.5, 0.999))
  x = torch.rand(batch, nc, isize, isize) * 2 - 1
  masked = method == 'masked'
  half = isize // 2

  def hole(inp):  # one random square hole per image (the masked method's training input)
    out = inp.clone()
    for i in range(inp.shape[0]):
      t, l = torch.randint(0, isize - half + 1, (2,)).tolist()
      out[i, :, t : t + half, l : l + half] = 0.0
    return out

  def train_step():
    g.train()
    d.train()
    rec, z, z_hat = g(hole(x) if masked else x)
    # G update (reference order: G first, D recomputed on x and x̂)
    og.zero_grad()
    logit_fake, f_fake = d(rec)
    _, f_real = d(x)
    if method == 'ganomaly':
      err_g = F.mse_loss(f_fake, f_real.detach()) + 50 * F.l1_loss(rec, x) + F.mse_loss(z_hat, z)
    else:
      err_g = (
          F.binary_cross_entropy_with_logits(logit_fake, torch.ones_like(logit_fake))
          + 50 * F.l1_loss(rec, x)
          + F.mse_loss(f_fake, f_real.detach())
      )
    err_g.backward()
    og.step()
    # D update
    od.zero_grad()
    lr_, _ = d(x)
    lf_, _ = d(rec.detach())
    err_d = 0.5 * (
        F.binary_cross_entropy_with_logits(lr_, torch.ones_like(lr_))
        + F.binary_cross_entropy_with_logits(lf_, torch.zeros_like(lf_))
    )
    err_d.backward()
    od.step()

  @torch.no_grad()
  def infer_step():
    g.eval()
    d.eval()
    if method == 'ganomaly':
      _, z, z_hat = g(x)
      return ((z - z_hat) ** 2).mean(dim=(1, 2, 3))
    if masked:  # every quarter inpainted from context, pasted into one reconstruction
      rec = torch.zeros_like(x)
      for t in (0, half):
        for l in (0, half):
          inp = x.clone()
          inp[:, :, t : t + half, l : l + half] = 0.0
          out, _, _ = g(inp)
          rec[:, :, t : t + half, l : l + half] = out[:, :, t : t + half, l : l + half]
    else:
      rec, _, _ = g(x)
    _, f_real = d(x)
    _, f_fake = d(rec)
    return 0.9 * ((x - rec) ** 2).mean(dim=(1, 2, 3)) + 0.1 * ((f_real - f_fake) ** 2).mean(
        dim=(1, 2, 3)
    )

  fn = train_step if mode == 'train' else infer_step
  t = time.perf_counter()
  fn()  # warm-up (first call allocates)
  first = time.perf_counter() - t
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    for _ in range(steps):
      fn()
    times.append(time.perf_counter() - t)
  peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  # FLOPs of one step as PyTorch counts them (after timing and the RSS reading, so neither sees it).
  from torch.utils.flop_counter import FlopCounterMode

  with FlopCounterMode(display=False) as counter:
    fn()
  return {
      'method': method,
      'size': isize,
      'channels': nc,
      'batch': batch,
      'mode': mode,
      'img_per_s': round(batch * steps / statistics.median(times), 1),
      'best_img_per_s': round(batch * steps / min(times), 1),  # for conv_bound.py
      'compile_s': round(first, 2),
      'peak_rss_mib': round(peak_rss, 1),
      'gflop_per_img': round(counter.get_total_flops() / batch / 1e9, 4),
      'torch': torch.__version__,
  }


def cpu_name() -> str:
  """The CPU model from /proc/cpuinfo (Linux), else what `platform` knows."""
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def measure_matmul_peak() -> float:
  """GFLOP/s of a 2048^3 float32 matmul under JAX on this machine: the compute ceiling."""
  import jax
  import jax.numpy as jnp

  a = jnp.ones((2048, 2048), jnp.float32)
  matmul = jax.jit(lambda a: a @ a)
  matmul(a).block_until_ready()
  times = []
  for _ in range(5):
    t = time.perf_counter()
    matmul(a).block_until_ready()
    times.append(time.perf_counter() - t)
  return 2 * 2048**3 / statistics.median(times) / 1e9


def _child(cmd: list[str]) -> dict:
  return throughput.run_child(cmd, dict(os.environ, OMP_NUM_THREADS=str(THREADS)))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--cases', default=','.join(throughput.CASES))
  parser.add_argument('--modes', default='train,infer')
  parser.add_argument('--rounds', type=int, default=3, help='alternating runs per side')
  parser.add_argument('--steps', type=int, default=5)
  parser.add_argument('--reps', type=int, default=3)
  parser.add_argument('--json', action='store_true')
  parser.add_argument(
      '--compile_cache',
      default='',
      help='our persistent compilation cache directory, filled by one untimed run '
      'per case first: compile time and peak RSS are then those of a rerun',
  )
  parser.add_argument('--_torch_child', nargs=2, help=argparse.SUPPRESS)
  parser.add_argument('--_peak_child', action='store_true', help=argparse.SUPPRESS)
  args = parser.parse_args()
  from ganomaly_jax.cpu import xla_flags

  xla_flags.apply_cpu_defaults()  # as main does, before JAX starts its backend

  if args._torch_child:
    print(json.dumps(run_torch_case(*args._torch_child, args.steps, args.reps)))
    return
  if args._peak_child:
    print(json.dumps({'matmul_gflop_per_s': round(measure_matmul_peak(), 1)}))
    return
  try:
    import torch  # noqa: F401  (only to say clearly when it is missing)
  except ImportError:
    sys.exit(
        "error: PyTorch is not installed; install the optional extra: pip install -e '.[bench]' "
        '(on the 2-core dev machine: pip install torch==2.13.0, a CPU build).'
    )

  peak = _child([sys.executable, __file__, '--_peak_child'])['matmul_gflop_per_s']
  header = (
      f'{"case":<24}{"mode":>6}{"ours img/s":>12}{"torch img/s":>13}{"ratio":>7}'
      f'{"GFLOP/img ours|torch":>22}{"GFLOP/s ours|torch":>20}{"ceiling":>9}'
      f'{"ours compile s":>16}{"ours RSS MiB":>14}{"torch RSS MiB":>15}'
  )
  if not args.json:
    print(
        f'{cpu_name()}, {os.cpu_count()} cores; float32 matmul '
        f'peak (JAX, 2048^3): {peak:.0f} GFLOP/s',
        flush=True,
    )
    print(header, flush=True)
  for name in args.cases.split(','):
    if name not in throughput.CASES:
      sys.exit(f'error: unknown case {name!r}; known: {", ".join(throughput.CASES)}')
    for mode in args.modes.split(','):
      ours, theirs = [], []
      common = [f'--steps={args.steps}', f'--reps={args.reps}']
      ours_cmd = throughput.child_command(name, mode, args.steps, args.reps, args.compile_cache)
      if args.compile_cache:  # fill the cache, untimed
        _child(throughput.child_command(name, mode, 1, 1, args.compile_cache))
      for _ in range(args.rounds):  # alternate so drifts in machine load hit both sides alike
        ours.append(_child(ours_cmd))
        theirs.append(_child([sys.executable, __file__, '--_torch_child', name, mode, *common]))
      med = lambda rows, k: statistics.median(r[k] for r in rows)
      row = {
          'case': name,
          'mode': mode,
          'ours_img_per_s': med(ours, 'img_per_s'),
          'torch_img_per_s': med(theirs, 'img_per_s'),
          'ours_compile_s': med(ours, 'compile_s'),
          'ours_peak_rss_mib': max(r['peak_rss_mib'] for r in ours),
          'torch_peak_rss_mib': max(r['peak_rss_mib'] for r in theirs),
          'ours_gflop_per_img': ours[0]['gflop_per_img'],
          'torch_gflop_per_img': theirs[0]['gflop_per_img'],
          'matmul_peak_gflop_per_s': peak,
          'torch_version': theirs[0]['torch'],
      }
      row['ratio'] = round(row['ours_img_per_s'] / row['torch_img_per_s'], 2)
      row['ours_gflop_per_s'] = round(row['ours_img_per_s'] * row['ours_gflop_per_img'], 1)
      row['torch_gflop_per_s'] = round(row['torch_img_per_s'] * row['torch_gflop_per_img'], 1)
      # The ratio we would reach if all of our step's FLOPs ran at the matmul peak.
      row['ceiling'] = round(peak / row['ours_gflop_per_img'] / row['torch_img_per_s'], 2)
      if args.json:
        print(json.dumps(row), flush=True)
      else:
        flop = f'{row["ours_gflop_per_img"]:.3f}|{row["torch_gflop_per_img"]:.3f}'
        rate = f'{row["ours_gflop_per_s"]:.0f}|{row["torch_gflop_per_s"]:.0f}'
        print(
            f'{name:<24}{mode:>6}{row["ours_img_per_s"]:>12.1f}{row["torch_img_per_s"]:>13.1f}'
            f'{row["ratio"]:>7.2f}{flop:>22}{rate:>20}{row["ceiling"]:>9.2f}'
            f'{row["ours_compile_s"]:>16.2f}{row["ours_peak_rss_mib"]:>14.1f}'
            f'{row["torch_peak_rss_mib"]:>15.1f}',
            flush=True,
        )
  if not args.json:
    print('ceiling: the ratio ours/torch if every FLOP of our step ran at the matmul peak.')


if __name__ == '__main__':
  main()
