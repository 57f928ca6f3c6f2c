"""Peak RSS and images/s of `python -m ganomaly_jax.infer` on generated folders of two sizes.

  python bench/infer_memory.py --workdir=RUN                       # 1,000 and 20,000 images
  python bench/infer_memory.py --workdir=RUN --sizes=1000 --decode_threads=0,4

RUN is a trained run directory of the model to score with, e.g. a 64x64 RGB GANomaly at the study's
widths (the model of bench/throughput.py's ganomaly-64x64x3 case, which has the rate to compare with):

  python -m ganomaly_jax.main --config=configs/ganomaly.py:quick,isize=64,channels=3 \\
      --config.model.ngf=64 --config.model.ndf=64 --config.model.latent_dim=100 \\
      --config.eval.batch_size=64 --workdir=/tmp/bench_run --config.compile_cache_dir=''
  python bench/throughput.py --cases=ganomaly-64x64x3 --modes=infer

Each folder holds `isize`x`isize` PNGs (smooth random blobs over noise, so decoding and PNG writing
cost what real photos of that size would) and is generated once into --scratch. Each inference runs
in a fresh process; peak RSS is that child's `ru_maxrss` (read from a wrapper process, so the figure
belongs to the one child alone), images/s is scored images over the child's wall time, start-up,
restore and compilation included, and also over the streaming part alone (from the log: the time
between the "Scoring" line and the end).
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs one command and prints its own wall time and its child's peak RSS as JSON: RUSAGE_CHILDREN of
# this small wrapper covers exactly the one inference process.
_WRAPPER = r"""
import json, resource, subprocess, sys, time
t = time.perf_counter()
proc = subprocess.run(sys.argv[1:], capture_output=True, text=True)
wall = time.perf_counter() - t
print(json.dumps({'rc': proc.returncode, 'wall_s': wall,
                  'peak_rss_mib': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
                  'stdout': proc.stdout[-2000:], 'stderr': proc.stderr[-4000:]}))
"""


def make_folder(path: str, n: int, isize: int, seed: int = 0) -> str:
  """n RGB PNGs of isize x isize in path/<k // 1000>/img_<k>.png (kept if already complete)."""
  from PIL import Image

  done = os.path.join(path, '.complete')
  if os.path.exists(done):
    return path
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:isize, 0:isize]
  for k in range(n):
    sub = os.path.join(path, f'{k // 1000:03d}')
    os.makedirs(sub, exist_ok=True)
    cy, cx, r = rng.uniform(0, isize, 2).tolist() + [rng.uniform(4, isize / 3)]
    blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))[..., None]
    colour = rng.uniform(0, 255, 3)
    image = 40 + blob * colour + rng.normal(0, 12, (isize, isize, 3))
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(
        os.path.join(sub, f'img_{k:06d}.png')
    )
  open(done, 'w').close()
  return path


def run_infer(workdir: str, images: str, out: str, decode_threads: int) -> dict:
  cmd = [
      sys.executable,
      '-m',
      'ganomaly_jax.infer',
      f'--workdir={workdir}',
      f'--images={images}',
      f'--out={out}',
      f'--decode_threads={decode_threads}',
  ]
  env = dict(
      os.environ,
      TF_CPP_MIN_LOG_LEVEL='3',
      PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''),
  )
  result = subprocess.run(
      [sys.executable, '-c', _WRAPPER, *cmd],
      cwd=REPO,
      env=env,
      capture_output=True,
      text=True,
      check=True,
  )
  return json.loads(result.stdout)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--workdir', required=True, help='trained run directory')
  parser.add_argument('--sizes', default='1000,20000', help='comma-separated folder sizes')
  parser.add_argument('--isize', type=int, default=64, help='side of the generated images')
  parser.add_argument('--decode_threads', default='4', help='comma-separated values to compare')
  parser.add_argument('--scratch', default='/tmp/infer_memory', help='where folders are generated')
  args = parser.parse_args()
  rows = []
  for n in [int(s) for s in args.sizes.split(',')]:
    t = time.perf_counter()
    images = make_folder(os.path.join(args.scratch, f'images_{n}_{args.isize}'), n, args.isize)
    print(f'# folder of {n} images ready ({time.perf_counter() - t:.0f} s)', file=sys.stderr)
    for threads in [int(s) for s in args.decode_threads.split(',')]:
      out = os.path.join(args.scratch, f'out_{n}_{threads}')
      subprocess.run(['rm', '-rf', out], check=True)
      r = run_infer(args.workdir, images, out, threads)
      if r['rc'] != 0:
        sys.exit(f'error: inference failed on {n} images:\n{r["stderr"]}')
      row = {
          'images': n,
          'decode_threads': threads,
          'peak_rss_mib': round(r['peak_rss_mib'], 1),
          'wall_s': round(r['wall_s'], 2),
          'images_per_s': round(n / r['wall_s'], 1),
      }
      stream_s = _streaming_seconds(r['stderr'])
      if stream_s:
        row['stream_s'] = round(stream_s, 2)
        row['stream_images_per_s'] = round(n / stream_s, 1)
      rows.append(row)
      print(json.dumps(row), flush=True)


def _streaming_seconds(log: str) -> float | None:
  """Seconds from infer's 'Scoring ...' log line to its 'Finished ...' line (absl timestamps)."""
  import re

  stamps = {}
  for line in log.splitlines():
    m = re.match(r'I\d{4} (\d\d):(\d\d):(\d\d\.\d+) .*scoring\.py:\d+\] (Scoring|Finished)', line)
    if m:
      h, mnt, sec, what = m.groups()
      stamps[what] = int(h) * 3600 + int(mnt) * 60 + float(sec)
  if 'Scoring' in stamps and 'Finished' in stamps:
    return stamps['Finished'] - stamps['Scoring']
  return None


if __name__ == '__main__':
  main()
