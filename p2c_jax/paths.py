"""The one place that turns a user's path string into an ``epath.Path``: local or ``gs://``.

Orbax writes arrays through TensorStore, which reaches local files and ``gs://`` only (see
``docs/cloud.md``), so those are the two kinds of path accepted. Any other ``scheme://``
(``memory://``, ``s3://``, ...) is refused with a ``ValueError`` instead of silently becoming
a local folder named ``memory:``. ``gs://`` files go through ``etils.epath`` (gcsfs, or
``tf.io.gfile`` when TensorFlow is installed and ``EPATH_USE_TF`` is not ``false``).
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys

from etils import epath
from etils.epath import backend as _epath_backend

from preprocessing.files import write_atomic

#: Remote schemes whose paths work end to end (epath files and Orbax/TensorStore arrays).
REMOTE_SCHEMES = ("gs",)

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$", re.DOTALL)
# "memory:/bar/w": a URL whose "//" a pathlib.Path collapsed; one letter is a Windows drive
_COLLAPSED_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):/(?!/)")


def _configure_gcsfs() -> None:
    """gcsfs's listing cache never expires by default: a file written by another process
    (another host, a resumed run) stays invisible to ``exists``/``iterdir``/``glob`` here.
    Turn it off unless the user configured it (``FSSPEC_GCS_USE_LISTINGS_CACHE``)."""
    import fsspec.config

    conf = fsspec.config.conf
    if any("use_listings_cache" in conf.get(k, {}) for k in ("gs", "gcs")):
        return
    conf.setdefault("gcs", {})["use_listings_cache"] = False
    gcsfs = sys.modules.get("gcsfs")
    if gcsfs is not None:  # instances made before this point kept the old setting
        gcsfs.GCSFileSystem.clear_instance_cache()
    getter = getattr(type(_epath_backend.fsspec_backend), "_get_filesystem", None)
    if getter is not None and hasattr(getter, "cache_clear"):
        getter.cache_clear()


def _check_gcs_installed(s: str) -> None:
    """Fail at the flag, not mid-run: gs:// needs a GCS client for files (gcsfs, or
    TensorFlow's tf.io.gfile) and google-cloud-storage (Orbax lists steps with it)."""

    def have(mod: str) -> bool:
        try:
            return importlib.util.find_spec(mod) is not None
        except ModuleNotFoundError:  # a parent package (google.cloud) is absent
            return False

    files = have("gcsfs") or have("tensorflow")
    if not (files and have("google.cloud.storage")):
        raise ValueError(f"{s}: gs:// paths need gcsfs: pip install 'p2c-jax[gcs]'")


def as_path(s: str | os.PathLike[str]) -> epath.Path:
    """Returns ``s`` as an ``epath.Path``: local paths absolute (``~`` expanded, ``file://``
    stripped), ``gs://bucket/...`` as is. Raises ``ValueError`` for any other scheme."""
    text = s if isinstance(s, str) else os.fspath(s)
    m = _URL.match(text)
    if m is None:
        m2 = _COLLAPSED_URL.match(text)
        if m2 is not None:
            raise ValueError(
                f"{text}: looks like a {m2.group(1)}:// URL with its '//' collapsed "
                "(use a local path or gs://bucket/...)"
            )
        return epath.Path(os.path.abspath(os.path.expanduser(text)))
    scheme, rest = m.group(1).lower(), m.group(2)
    if scheme == "file":
        return as_path(rest if rest.startswith("/") else "/" + rest)
    if scheme not in REMOTE_SCHEMES:
        raise ValueError(
            f"{text}: unsupported scheme {scheme}:// (use a local path or gs://bucket/...)"
        )
    if not rest.split("/", 1)[0]:
        raise ValueError(f"{text}: a gs:// path needs a bucket: gs://bucket/...")
    _check_gcs_installed(text)
    _configure_gcsfs()
    return epath.Path(f"{scheme}://{rest}")


def is_remote(path: str | os.PathLike[str]) -> bool:
    """True for a ``scheme://`` path (gs://): not a local file, so no ``os``/``cv2`` calls on
    it and no rename-based atomicity."""
    return _URL.match(os.fspath(path)) is not None


def exists(path: str | os.PathLike[str]) -> bool:
    """Whether the file or directory (on gs://: any object under that prefix) exists."""
    return as_path(path).exists()


def read_bytes(path: str | os.PathLike[str]) -> bytes:
    """The whole file, local or remote."""
    return as_path(path).read_bytes()


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> epath.Path:
    """Writes ``data`` so that readers see the old file or the whole new one, never a part.

    ``preprocessing.files.write_atomic`` on ``as_path(path)``: local, a temporary file beside it
    (the parent created; mode 0o666 less the umask, as ``open`` gives), flushed to disk, then
    ``os.replace``; gs://, one object upload, which GCS makes visible only once complete.
    """
    p = as_path(path)
    write_atomic(p, data, fsync=True)
    return p


def write_text_atomic(path: str | os.PathLike[str], text: str) -> epath.Path:
    """``write_bytes_atomic`` of ``text`` in UTF-8."""
    return write_bytes_atomic(path, text.encode("utf-8"))
