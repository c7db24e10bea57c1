"""Input discovery and atomic writes: the standard library only (and ``etils`` for ``gs://``),
so the training and inference core can write files without the image libraries."""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path


def is_url(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a ``scheme://`` URL (``gs://``) rather than a local path."""
    return "://" in os.fspath(path)


def join(folder: str | os.PathLike, *parts: str) -> str:
    """``folder/part/...`` as a string, for a local folder or a ``gs://`` one."""
    return "/".join([os.fspath(folder).rstrip("/"), *parts])


def as_file(path: str | os.PathLike):
    """``path`` as a ``pathlib.Path``, or an ``etils.epath.Path`` for a ``gs://`` URL (which a
    ``pathlib.Path`` would make the local ``gs:/...``)."""
    if is_url(path):
        from etils import epath

        return epath.Path(path)
    return Path(path)


def _temporary_beside(path: Path) -> Path:
    """A fresh temporary name in ``path``'s folder (``remove_stale_temporaries`` knows it)."""
    return path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp"


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[str]:
    """A local file name to write ``path``'s content to (by a library that writes files, such
    as a record writer); when the block ends it becomes ``path`` whole: renamed into place
    locally, uploaded as one object to ``gs://``. Removed if the block raises."""
    if is_url(path):
        fd, tmp = tempfile.mkstemp(suffix=".tmp")
        os.close(fd)
    else:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        tmp = os.fspath(_temporary_beside(Path(path)))
    try:
        yield tmp
        if is_url(path):
            with open(tmp, "rb") as src, as_file(path).open("wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 22)
        else:
            os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def write_atomic(path: str | os.PathLike, data: bytes, *, fsync: bool = False) -> None:
    """Write bytes so that the path holds either nothing (or its old content) or the whole file.

    A ``gs://`` path (an ``etils.epath.Path`` or a string) is one object upload, which GCS makes
    visible only once complete; a local one a temporary file beside it (the parent created),
    renamed into place, removed on failure. The file gets the mode ``open(path, "w")`` would give
    it, 0o666 less the umask (the kernel applies it; ``mkstemp``'s 0o600 would not follow it).
    ``fsync``: flushed to disk before the rename.
    """
    if is_url(path):
        from etils import epath

        epath.Path(path).write_bytes(data)
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_beside(path)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    fd = os.open(tmp, flags, 0o666)  # O_EXCL: never another's file; not ours to remove if so
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


_WILDCARD = re.compile(r"[*?[]")
_TEMPORARY = re.compile(r"^\..+\.(\d+)\.[0-9a-f]{12}\.tmp$")  # write_atomic's: .NAME.PID.ID.tmp


def remove_stale_temporaries(folder: str | os.PathLike) -> None:
    """Remove the temporary files ``write_atomic`` left under a local ``folder`` when its
    process was killed (those of processes still running stay)."""
    for parent, _, files in os.walk(folder):
        for name in files:
            m = _TEMPORARY.match(name)
            if m and not _running(int(m.group(1))):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(parent, name))


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (on Windows assumed: ``os.kill`` ends it)."""
    if os.name == "nt" or pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        pass
    return True


def discover(inputs: Iterable[str]) -> list[tuple[Path, str]]:
    """Expand files, folders (recursively) and globs into (path, relative name) pairs.

    A folder's files are named relative to it; a file or glob match by its base name.
    Every file is kept, images or not (hidden files aside), so that each gets a result.
    ``gs://`` inputs are listed through ``etils.epath`` (their paths are ``epath.Path``s).
    """
    found: dict[str, Path] = {}
    for spec in inputs:
        p = as_file(spec)
        if p.is_dir():
            for f in _files_under(p):
                if not f.name.startswith("."):
                    found.setdefault(f.relative_to(p).as_posix(), f)
        elif p.exists():
            found.setdefault(p.name, p)
        else:
            matches = _glob(spec)
            for m in matches:
                if m.is_file():
                    found.setdefault(m.name, m)
            if not matches:
                found.setdefault(p.name or spec, p)
    return [(path, rel) for rel, path in sorted(found.items())]


def _files_under(folder) -> list:
    """The files under a folder, recursively, sorted (``gs://``: by listing, epath has no
    recursive glob there)."""
    if isinstance(folder, Path):
        return sorted(f for f in folder.rglob("*") if f.is_file())
    base = os.fspath(folder).partition("://")[2].rstrip("/")
    found = []
    for parent, _, names in folder.walk():
        parent = os.fspath(parent)  # gcsfs gives it without its gs://
        sub = (parent.partition("://")[2] or parent)[len(base) :].strip("/")
        found += [folder / sub / name if sub else folder / name for name in names]
    return sorted(found)


def _glob(spec: str) -> list:
    """The matches of a glob, local (``**`` recursive) or ``gs://`` (the pattern after the
    last folder without a wildcard)."""
    if not is_url(spec):
        return [Path(m) for m in sorted(glob.glob(spec, recursive=True))]
    scheme, _, rest = spec.partition("://")
    parts = rest.split("/")
    fixed = next((i for i, part in enumerate(parts) if _WILDCARD.search(part)), len(parts))
    root = as_file(f"{scheme}://" + "/".join(parts[:fixed]))
    return sorted(root.glob("/".join(parts[fixed:]))) if fixed < len(parts) else []


def report_missing(items: Sequence[tuple[Path, str]], inputs: Sequence[str]) -> bool:
    """An error line on stderr per input of ``discover(inputs)`` that does not exist (the other
    inputs still run); True when nothing is left to run (then none exists, or none was found)."""
    missing = [str(p) for p, _ in items if not p.exists()]
    for path in missing:
        print(f"error: input {path}: no such file, folder or glob match", file=sys.stderr)
    if not items:
        print(f"error: no input files in {' '.join(inputs)}", file=sys.stderr)
    return len(missing) == len(items)


def walk_key(name: str) -> tuple[str, str]:
    """Sort key putting relative names in the training reader's order (`os.walk` sorted, then
    sorted names: by folder path, then name)."""
    parent, _, base = name.rpartition("/")
    return ("/" + parent if parent else "", base)
