"""Converts pytorch-fid's FID Inception checkpoint into the .npz that `ganomaly_jax.evaluation.fid` loads.

FID is only comparable across papers when it uses the exact Inception graph of the original TF code
(`inception-2015-12-05`). pytorch-fid ported that graph's weights to a PyTorch state_dict; this script
turns that state_dict into flax variables. Nothing in ganomaly_jax downloads weights, so do it once by
hand, on a machine with network access and PyTorch (`pip install torch`, CPU build is enough):

  1. Download the checkpoint from the pytorch-fid GitHub releases (tag `fid_weights`):

       wget https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth

     (By torch.hub convention the `6726825d` in the name is the start of the file's SHA-256.)

  2. Convert it:

       python scripts/convert_fid_weights.py \\
           --input pt_inception-2015-12-05-6726825d.pth --output fid_inception.npz

  3. Point FID at the result, e.g. `ganomaly_jax.evaluation.fid.compute_fid('fid_inception.npz', a, b)`. The .npz is
     plain numpy, so the training machine needs neither torch nor network access.

What the conversion does (the mapping itself is `ganomaly_jax.evaluation.fid.torch_state_dict_to_flax`, pure numpy
and unit-tested): `X.conv.weight` (OIHW) -> `params/X/conv/kernel` (HWIO); `X.bn.weight|bias` ->
`params/X/bn/scale|bias`; `X.bn.running_mean|running_var` -> `batch_stats/X/bn/mean|var`; the 1008-way
classifier `fc.*` and the `num_batches_tracked` counters are dropped. The result is validated key by key
and shape by shape against the flax model before it is written, and read back after.
"""

from __future__ import annotations

import argparse
import os
import sys

from absl import logging
import numpy as np

from ganomaly_jax.evaluation import fid


def read_torch_state_dict(path: str) -> dict[str, np.ndarray]:
  """Reads a .pth state_dict into numpy arrays.

  torch is imported here only, so neither the package nor its tests ever need it.
  """
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise SystemExit(
        'Reading the .pth checkpoint needs PyTorch: pip install torch (the CPU build is enough).'
    ) from e
  # weights_only=True: the checkpoint is a plain tensor dict, so refuse anything that would run code.
  state = torch.load(path, map_location='cpu', weights_only=True)
  if 'state_dict' in state and isinstance(state['state_dict'], dict):
    state = state['state_dict']
  return {k: v.detach().cpu().numpy() for k, v in state.items()}


def convert(input_path: str, output_path: str) -> int:
  """Converts `input_path` (.pth) into `output_path` (.npz); returns the number of arrays written."""
  flat = fid.torch_state_dict_to_flax(read_torch_state_dict(input_path))
  fid.validate_inception_params(flat, source=f'weights converted from {input_path!r}')
  np.savez(output_path, **flat)
  # np.savez appends .npz when missing; read back what was really written.
  written = output_path if output_path.endswith('.npz') else output_path + '.npz'
  fid.load_inception_params(written)
  return len(flat)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
  parser.add_argument(
      '--input', required=True, help=f'pytorch-fid checkpoint, {fid.TORCH_CHECKPOINT_NAME}'
  )
  parser.add_argument('--output', required=True, help='.npz file to write')
  args = parser.parse_args(argv)
  if not os.path.isfile(args.input):
    raise SystemExit(f'{args.input!r} not found; download it from {fid.TORCH_CHECKPOINT_URL}')
  logging.set_verbosity(logging.INFO)
  count = convert(args.input, args.output)
  logging.info('Wrote %d FID Inception arrays to %s.', count, args.output)


if __name__ == '__main__':
  main(sys.argv[1:])
