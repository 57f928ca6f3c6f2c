"""gcp-storage-emulator, with the one gap of its API that a run meets filled; run by tests/gcs_emulator.py.

  python tests/helpers/gcs_emulator_server.py --port=P --bucket=B --data-dir=DIR

Two calls of the JSON API that the emulator lacks, answered here as Cloud Storage answers them:

- A media download carries the object's generation in the `x-goog-generation` header.
  tensorstore's OCDBT store (orbax's checkpoint format) reads it to know which version of its
  manifest it holds, and refuses a reply without it ("Malformed StorageGeneration").
- `POST .../o/SRC/moveTo/o/DST` moves an object (gcsfs renames with it). The emulator answers 501,
  which gcsfs retries for half a minute before it copies and deletes instead.

Nothing else changes. Objects are kept on disk under DIR, so a stopped server started again serves
what it held.
"""

import argparse
from http import HTTPStatus
import os
import re
import time

from gcp_storage_emulator import server
from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects

_download = objects.download


def download_with_generation(request, response, storage, *args, **kwargs):
  """The emulator's download, plus the generation headers of GCS's media downloads."""
  _download(request, response, storage, *args, **kwargs)
  try:
    obj = storage.get_file_obj(request.params['bucket_name'], request.params['object_id'])
  except NotFound:
    return
  response['x-goog-generation'] = str(obj['generation'])
  response['x-goog-metageneration'] = str(obj['metageneration'])
  response['x-goog-stored-content-length'] = str(obj['size'])


def move(request, response, storage, *args, **kwargs):
  """The objects.move call: the object under its new name, the old name gone."""
  bucket = request.params['bucket_name']
  try:
    moved = objects._copy(  # pylint: disable=protected-access
        request.base_url,
        storage,
        bucket,
        request.params['object_id'],
        bucket,
        request.params['dest_object_id'],
    )
  except NotFound:
    response.status = HTTPStatus.NOT_FOUND
    return
  objects._delete(storage, bucket, request.params['object_id'])  # pylint: disable=protected-access
  response.json(moved)


_MOVE = (
    rf'^{re.escape("/storage/v1")}/b/(?P<bucket_name>[-.\w]+)/o/(?P<object_id>.*[^/]+)'
    r'/moveTo/o/(?P<dest_object_id>.*[^/]+)$'
)


def _fill_the_gaps() -> None:
  objects.download = download_with_generation  # `objects.get` calls it by its module name
  for _, methods in server.HANDLERS:  # (path pattern, {HTTP method: handler})
    for method, handler in methods.items():
      if handler is _download:
        methods[method] = download_with_generation
  # Before the object route, which has no POST and would answer 501.
  server.HANDLERS = ((_MOVE, {server.POST: move}), *server.HANDLERS)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--port', type=int, required=True)
  parser.add_argument('--bucket', required=True)
  parser.add_argument('--data-dir', required=True)
  args = parser.parse_args()
  _fill_the_gaps()
  os.makedirs(args.data_dir, exist_ok=True)
  emulator = server.create_server(
      '127.0.0.1', args.port, in_memory=False, default_bucket=args.bucket, data_dir=args.data_dir
  )
  emulator.start()
  try:
    while True:
      time.sleep(3600)
  finally:
    emulator.stop()


if __name__ == '__main__':
  main()
