"""A Google Cloud Storage emulator on localhost, so tests write `gs://` paths through the very stacks a
TPU VM uses, without network or credentials: orbax's tensorstore `gcs` kvstore driver for arrays,
and etils.epath (fsspec -> gcsfs) for everything else (orbax's metadata, our logs, grids, outputs).

The server is gcp-storage-emulator's JSON API (objects, resumable and multipart uploads, listings
with prefix and delimiter, deletes, copies), in memory, on a free loopback port, one per test, with
two additions tensorstore needs (`_patch_emulator`): generations on reads, and `ifGenerationMatch`
on media uploads and deletes. It serves one request at a time, so it proves where bytes go and that
conditional commits succeed, not how concurrent writers race. orbax finalizes a `gs://` checkpoint
with a `commit_success.txt` file, not a rename,
so no rename is needed on the bucket (the emulator has no `moveTo`; gcsfs would fall back to
copy + delete after retries).

Each client is pointed at the emulator by environment variables, returned in `GcsEmulator.env` for
child processes. Nothing reaches a non-loopback address: gcsfs is anonymous, tensorstore uses a
test token, and any metadata-server lookup is sent to a closed loopback port.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import http.server
import json
import logging
import os
import threading
import urllib.parse
import urllib.request
import uuid

_CLOSED = "127.0.0.1:9"  # discard port: a metadata-server lookup fails at once, on this machine


def _client_env(url: str) -> dict[str, str]:
    return {
        "STORAGE_EMULATOR_HOST": url,                     # gcsfs, google-cloud-storage
        "TENSORSTORE_GCS_HTTP_URL": url,                  # tensorstore's gcs kvstore (orbax arrays)
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",      # tensorstore: no credential lookup
        "FSSPEC_GCS_TOKEN": "anon",                       # gcsfs in a child process: anonymous
        # gcsfs >= 2026 probes a bucket's layout through the Storage Control gRPC API, a real
        # endpoint: the plain JSON-API filesystem is what an emulator serves (read at gcsfs import).
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        "NO_GCE_CHECK": "true",
        "GCE_METADATA_HOST": _CLOSED, "GCE_METADATA_IP": _CLOSED, "GCE_METADATA_ROOT": _CLOSED,
    }


class _Server(http.server.HTTPServer):
    # One request at a time (the emulator's store is not thread-safe), but tensorstore opens tens
    # of connections at once: a deep accept queue, or the kernel drops SYNs and each costs 1 s.
    request_queue_size = 256

    def handle_error(self, request, client_address):
        # tensorstore and gcsfs close connections they no longer need (a cancelled read): not an
        # error of the code under test.
        import sys

        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


@dataclasses.dataclass
class GcsEmulator:
    """A running emulator with one bucket. `root`: the test's `gs://bucket/test` URL; `env`: the
    variables that point a child process at it (already set in this one for the test)."""

    url: str
    bucket: str
    root: str
    env: dict

    def names(self, prefix: str = "") -> list[str]:
        """Object names in the bucket under `prefix` (read from the server, not through gcsfs, whose
        listing cache would not see a child process's writes)."""
        names, token = [], None
        while True:
            query = {"prefix": prefix, **({"pageToken": token} if token else {})}
            with urllib.request.urlopen(f"{self.url}/storage/v1/b/{self.bucket}/o?"
                                        f"{urllib.parse.urlencode(query)}", timeout=30) as r:
                page = json.load(r)
            names += [item["name"] for item in page.get("items", [])]
            token = page.get("nextPageToken")
            if not token:
                return sorted(names)

    def read(self, name: str) -> bytes:
        quoted = urllib.parse.quote(name, safe="")
        with urllib.request.urlopen(f"{self.url}/download/storage/v1/b/{self.bucket}/o/{quoted}?alt=media",
                                    timeout=30) as r:
            return r.read()


def _generation(storage, bucket: str, name: str) -> str:
    from gcp_storage_emulator.exceptions import NotFound

    try:
        return str(storage.get_file_obj(bucket, name)["generation"])
    except NotFound:
        return "0"  # GCS's generation of an absent object


def _patch_emulator() -> None:
    """Two things of the real service the emulator lacks and tensorstore relies on: every media read
    names its object's generation (`x-goog-generation`: OCDBT's manifest reads fail as a "Malformed
    StorageGeneration" without it), and writes and deletes honour `ifGenerationMatch` (412 when the
    object changed; 0 = must not exist), the conditional writes OCDBT commits its manifest with."""
    from http import HTTPStatus

    from gcp_storage_emulator import server
    from gcp_storage_emulator.handlers import objects

    if getattr(objects, "_lip_jax_patched", False):
        return
    download, insert, delete = objects.download, objects.insert, objects.delete

    def precondition(request, response, storage, name) -> bool:
        want = request.query.get("ifGenerationMatch")
        if want and name and _generation(storage, request.params["bucket_name"], name) != want[0]:
            response.status = HTTPStatus.PRECONDITION_FAILED
            response.json({"error": {"code": 412, "message": "Precondition Failed"}})
            return False
        return True

    def download_with_generation(request, response, storage, *args, **kwargs):
        generation = _generation(storage, request.params["bucket_name"], request.params["object_id"])
        not_match = request.query.get("ifGenerationNotMatch")
        if not_match and generation != "0" and not_match[0] == generation:
            response.status = HTTPStatus.NOT_MODIFIED
            return None
        download(request, response, storage, *args, **kwargs)
        if response.status in (HTTPStatus.OK, HTTPStatus.PARTIAL_CONTENT):
            response["x-goog-generation"] = generation
            response["x-goog-metageneration"] = "1"

    def insert_if(request, response, storage, *args, **kwargs):
        name = (request.query.get("name") or [None])[0]
        if precondition(request, response, storage, name):
            insert(request, response, storage, *args, **kwargs)

    def delete_if(request, response, storage, *args, **kwargs):
        if precondition(request, response, storage, request.params["object_id"]):
            delete(request, response, storage, *args, **kwargs)

    swap = {download: download_with_generation, insert: insert_if, delete: delete_if}
    objects.download, objects.insert, objects.delete = download_with_generation, insert_if, delete_if
    for _, methods in server.HANDLERS:  # the routes hold the functions themselves
        for method, fn in methods.items():
            methods[method] = swap.get(fn, fn)
    objects._lip_jax_patched = True


def _reset_clients() -> None:
    """Forget cached gcsfs instances: each holds the endpoint it was created with (a previous
    test's emulator) and a listing cache."""
    import fsspec
    import gcsfs.core
    from etils.epath import backend

    # In this process gcsfs may be imported already: the plain JSON-API class, as in a child.
    for protocol in ("gs", "gcs"):
        fsspec.register_implementation(protocol, gcsfs.core.GCSFileSystem, clobber=True)
    gcsfs.core.GCSFileSystem.clear_instance_cache()
    backend.fsspec_backend._get_filesystem.cache_clear()


@contextlib.contextmanager
def gcs_emulator(prefix: str = "test"):
    """Start an emulator on a free loopback port with a fresh bucket; set the client variables for
    the duration; yield a GcsEmulator."""
    import fsspec.config
    from gcp_storage_emulator.handlers import buckets
    from gcp_storage_emulator.server import RequestHandler
    from gcp_storage_emulator.storage import Storage

    logging.getLogger("gcp_storage_emulator").setLevel(logging.CRITICAL)  # 404s are expected answers
    _patch_emulator()
    storage = Storage(use_memory_fs=True)
    bucket = f"lip-jax-{uuid.uuid4().hex[:12]}"
    buckets.create_bucket(bucket, storage)
    server = _Server(("127.0.0.1", 0), functools.partial(RequestHandler, storage))
    thread = threading.Thread(target=server.serve_forever, name="gcs-emulator", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    env = _client_env(url)
    saved_env = {k: os.environ.get(k) for k in env}
    saved_conf = fsspec.config.conf.get("gcs")
    os.environ.update(env)
    # fsspec read FSSPEC_GCS_* at its import, long before this test.
    fsspec.config.conf["gcs"] = {**(saved_conf or {}), "token": "anon"}
    _reset_clients()
    try:
        yield GcsEmulator(url=url, bucket=bucket, root=f"gs://{bucket}/{prefix}", env=env)
    finally:
        _reset_clients()
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if saved_conf is None:
            fsspec.config.conf.pop("gcs", None)
        else:
            fsspec.config.conf["gcs"] = saved_conf
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
