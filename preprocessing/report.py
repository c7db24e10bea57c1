"""The per-input report of a folder job (preprocessing, inference): ``report.jsonl`` and a summary.

Each finished input is appended to the report at once, so a crash loses nothing already done;
a re-run appends to it (never rewriting it, so a kill in the middle loses nothing either) and
reads it back to skip inputs whose outputs exist; a line cut short by a kill is ignored. In a
``gs://`` folder, whose objects cannot be appended to, the report is written in parts: the lines
of the last ``UPLOAD_EVERY_S`` seconds (and those left when the run ends) become a new object
``report.jsonl.parts/TIME-ID.jsonl``, each uploaded once, never again; ``read_report`` joins
them. A crash loses the last seconds' lines, whose inputs a re-run does again.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .files import is_url
from .io import ImageError

REPORT_NAME = "report.jsonl"
PARTS_SUFFIX = ".parts"  # gs://: the folder of a report's parts, beside where it would be
UPLOAD_EVERY_S = 10.0


def reason_of(exc: BaseException) -> str:
    """The reason an input failed, as the report states it."""
    return str(exc) if isinstance(exc, ImageError) else f"{type(exc).__name__}: {exc}"


def done_record(name: str, path: str | os.PathLike, outputs: list[str], **extra) -> dict:
    """The report's line of an input done: its name, path and outputs (relative names)."""
    return {"name": name, "input": str(path), "status": "done", "outputs": outputs, **extra}


def failed_record(name: str, path: str | os.PathLike, exc: BaseException | str) -> dict:
    """The report's line of an input that failed; ``exc``: the exception, or the reason it gave
    (``reason_of``)."""
    reason = exc if isinstance(exc, str) else reason_of(exc)
    return {"name": name, "input": str(path), "status": "failed", "reason": reason}


@dataclass
class Summary:
    """Counts and failure reasons of one run; ``line()`` is what the command prints."""

    done: int = 0
    skipped: int = 0
    failed: int = 0
    reasons: Counter = field(default_factory=Counter)

    @property
    def exit_code(self) -> int:
        """0: every input done; 1: some failed; 2: none done."""
        if self.done + self.skipped == 0:
            return 2
        return int(self.failed > 0)

    def count(self, record: dict, *, already: bool = False) -> None:
        """Count one report record (``done_record`` / ``failed_record``); ``already``: done by
        a previous run."""
        if record["status"] == "failed":
            self.failed += 1
            self.reasons[record["reason"].split(" (")[0]] += 1
        elif already:
            self.skipped += 1
        else:
            self.done += 1

    def add(self, other: Summary) -> None:
        self.done, self.skipped = self.done + other.done, self.skipped + other.skipped
        self.failed += other.failed
        self.reasons.update(other.reasons)

    def line(self) -> str:
        total = self.done + self.skipped + self.failed
        text = f"{total} inputs: {self.done + self.skipped} done"
        if self.skipped:
            text += f" ({self.skipped} already)"
        text += f", {self.failed} failed"
        if self.reasons:
            text += " [" + ", ".join(f"{r}: {n}" for r, n in self.reasons.most_common()) + "]"
        return text


class ReportWriter:
    """Appends a JSON line per finished input to ``report.jsonl`` in ``folder`` (``fresh``: the
    report of a previous run removed first); on ``gs://``, in parts (see the module). Several
    writers may append at once, in one process or many (one per Beam bundle)."""

    def __init__(self, folder: str | os.PathLike, *, name: str = REPORT_NAME, fresh: bool = False):
        self.path = _report_path(folder, name)
        self.summary = Summary()
        self._file = None
        self._lines: list[str] = []  # gs://: the lines not uploaded yet
        self._uploaded = time.monotonic()
        if is_url(self.path):
            if fresh:
                _remove_remote(self.path)
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "w" if fresh else "a", encoding="utf-8")  # noqa: SIM115 - see close()
        if self._file.tell() and _last_byte(self.path) != b"\n":  # a line cut short by a kill
            self._file.write("\n")  # the next record starts a line of its own

    def _write(self, rec: dict) -> None:
        self.summary.count(rec)
        line = json.dumps(rec) + "\n"
        if self._file is not None:
            self._file.write(line)
            self._file.flush()
            return
        self._lines.append(line)
        if time.monotonic() - self._uploaded >= UPLOAD_EVERY_S:
            self._upload()

    def _upload(self) -> None:
        """The lines not uploaded yet as a new part, named to sort after the parts before it."""
        if self._lines:
            part = f"{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
            (_parts(self.path) / part).write_text("".join(self._lines), encoding="utf-8")
            self._lines = []
        self._uploaded = time.monotonic()

    def done(self, name: str, path: str | os.PathLike, outputs: list[str], **extra) -> None:
        self._write(done_record(name, path, outputs, **extra))

    def failed(self, name: str, path: str | os.PathLike, exc: BaseException | str) -> None:
        self._write(failed_record(name, path, exc))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        else:
            self._upload()

    def __enter__(self) -> ReportWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Report(ReportWriter):
    """The report of a run: a ``ReportWriter`` that, with ``resume``, appends to the report of a
    previous run and knows the last record of each input there (``previous``); a skipped input
    gets no new line, its record is there already. Without, it starts an empty report."""

    def __init__(self, folder: str | os.PathLike, *, resume: bool = True, name: str = REPORT_NAME):
        self.previous = last_records(read_report(folder, name)) if resume else {}
        super().__init__(folder, name=name, fresh=not resume)

    def skipped(self) -> None:
        """An input whose outputs a previous run wrote (its record is in ``previous``)."""
        self.summary.skipped += 1

    def already_done(self, name: str) -> bool:
        """Whether a previous run did ``name``: its record says so and its outputs still exist."""
        rec = self.previous.get(name)
        # "skipped": a record of the reports that re-runs rewrote whole, before they appended
        if not (rec and rec.get("status") in ("done", "skipped") and rec.get("outputs")):
            return False
        return all((self.path.parent / o).is_file() for o in rec["outputs"])


def read_report(folder: str | os.PathLike, name: str = REPORT_NAME) -> str:
    """The text of the report in ``folder`` ("" if none): ``report.jsonl`` then its parts in the
    order written, each piece ending a line; bytes a kill left undecodable are replaced."""
    path = _report_path(folder, name)
    pieces = [path] if path.is_file() else []
    if _parts(path).is_dir():
        pieces += sorted(_parts(path).glob("*.jsonl"), key=lambda p: p.name)
    texts = [p.read_bytes().decode("utf-8", "replace") for p in pieces]
    return "".join(t if t.endswith("\n") else t + "\n" for t in texts if t)


def _report_path(folder: str | os.PathLike, name: str):
    if is_url(folder):
        from etils import epath

        return epath.Path(folder) / name
    return Path(folder) / name


def _parts(path):
    return path.parent / (path.name + PARTS_SUFFIX)


def _remove_remote(path) -> None:
    """A gs:// report and its parts."""
    if path.exists():
        path.unlink()
    if _parts(path).is_dir():
        _parts(path).rmtree()


def _last_byte(path: Path) -> bytes:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1)


def last_records(text: str) -> dict[str, dict]:
    """The last record of each input in a report's text (unreadable lines ignored)."""
    records: dict[str, dict] = {}
    for line in text.splitlines():
        try:
            rec = json.loads(line)
            records[rec["name"]] = rec
        except (ValueError, KeyError, TypeError):
            continue
    return records
