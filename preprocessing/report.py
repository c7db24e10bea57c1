"""The per-input report of a folder job (preprocessing, inference): ``report.jsonl`` and a summary.

Each finished input is appended to the report at once, so a crash loses nothing already done;
a re-run appends to it (never rewriting it, so a kill in the middle loses nothing either) and
reads it back to skip inputs whose outputs exist; a line cut short by a kill is ignored. In a
``gs://`` folder, whose objects cannot be appended to, the whole report is uploaded again at
most every ``UPLOAD_EVERY_S`` seconds and when the run ends: a crash loses the last seconds'
lines, whose inputs a re-run does again.
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from .files import is_url
from .io import ImageError

REPORT_NAME = "report.jsonl"
UPLOAD_EVERY_S = 10.0


def reason_of(exc: BaseException) -> str:
    """The reason an input failed, as the report states it."""
    return str(exc) if isinstance(exc, ImageError) else f"{type(exc).__name__}: {exc}"


def done_record(name: str, path: str | os.PathLike, outputs: list[str], **extra) -> dict:
    """The report's line of an input done: its name, path and outputs (relative names)."""
    return {"name": name, "input": str(path), "status": "done", "outputs": outputs, **extra}


def failed_record(name: str, path: str | os.PathLike, exc: BaseException) -> dict:
    """The report's line of an input that failed, with the reason."""
    return {"name": name, "input": str(path), "status": "failed", "reason": reason_of(exc)}


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


class Report:
    """``report.jsonl`` in ``folder``: one JSON line per input, appended as each finishes.

    With ``resume`` it appends to the report of a previous run and knows the last record of each
    input there (``previous``); a skipped input gets no new line, its record is there already.
    Without, it starts an empty report.
    """

    def __init__(self, folder: str | os.PathLike, *, resume: bool = True, name: str = REPORT_NAME):
        remote = is_url(folder)
        if remote:
            from etils import epath

            self.path = epath.Path(folder) / name
        else:
            self.path = Path(folder) / name
        text = _text(self.path) if resume else ""
        cut_short = bool(text) and not text.endswith("\n")  # the last line, by a kill
        if cut_short:
            text += "\n"  # the next record starts a line of its own
        self.previous = _records(text)
        self.summary = Summary()
        self._lines: list[str] = [text] if remote else []  # the report so far, uploaded whole
        self._uploaded = -float("inf")
        self._file = None
        if not remote:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a" if resume else "w", encoding="utf-8")  # noqa: SIM115 - see close()
            if cut_short:
                self._file.write("\n")

    def _write(self, rec: dict) -> None:
        line = json.dumps(rec) + "\n"
        if self._file is not None:
            self._file.write(line)
            self._file.flush()
            return
        self._lines.append(line)
        if time.monotonic() - self._uploaded >= UPLOAD_EVERY_S:
            self._upload()

    def _upload(self) -> None:
        self.path.write_text("".join(self._lines), encoding="utf-8")
        self._uploaded = time.monotonic()

    def done(self, name: str, path: str | os.PathLike, outputs: list[str], **extra) -> None:
        self._record(done_record(name, path, outputs, **extra))

    def _record(self, record: dict) -> None:
        self.summary.count(record)
        self._write(record)

    def skipped(self) -> None:
        """An input whose outputs a previous run wrote (its record is in ``previous``)."""
        self.summary.skipped += 1

    def failed(self, name: str, path: str | os.PathLike, exc: BaseException) -> None:
        self._record(failed_record(name, path, exc))

    def already_done(self, name: str) -> bool:
        """Whether a previous run did ``name``: its record says so and its outputs still exist."""
        rec = self.previous.get(name)
        # "skipped": a record of the reports that re-runs rewrote whole, before they appended
        if not (rec and rec.get("status") in ("done", "skipped") and rec.get("outputs")):
            return False
        return all((self.path.parent / o).is_file() for o in rec["outputs"])

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        else:
            self._upload()

    def __enter__(self) -> Report:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _text(path) -> str:
    """An existing report's text ("" if none); bytes a kill left undecodable are replaced."""
    return path.read_bytes().decode("utf-8", "replace") if path.is_file() else ""


def _records(text: str) -> dict[str, dict]:
    """The last record of each input in a report's text (unreadable lines ignored)."""
    records: dict[str, dict] = {}
    for line in text.splitlines():
        try:
            rec = json.loads(line)
            records[rec["name"]] = rec
        except (ValueError, KeyError, TypeError):
            continue
    return records
