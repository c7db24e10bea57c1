"""p2c-infer run again into the same --output: after a real kill -9 (of the command, or of it
and its Beam workers) it does only what is missing and ends with the outputs of a run never
stopped; a finished job is skipped whole; --overwrite does it all again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.faces import synthetic_photo
from PIL import Image

from p2c_jax.cli.infer import main

REPO = Path(__file__).resolve().parents[2]
COUNT = 8
# test_infer's compiled shape; one worker: the killed run stalls with 4 cartoons written
FLAGS = ["--no_preprocess", "--no_progress", "--batch_size", "2", "--workers", "1"]
ENGINES = {  # the flags of the killed run and of the re-run (Beam's: in this process)
    "default": ([], []),
    "beam": (
        ["--runner", "FnApiRunner", "--direct_num_workers", "2"],
        ["--runner", "FnApiRunner", "--direct_running_mode", "in_memory"],
    ),
}


def report_lines(out: Path) -> list[str]:
    return (out / "report.jsonl").read_text().splitlines()


def files(out: Path) -> dict[str, bytes]:
    """Every file under ``out`` (temporary ones included) but the report, by relative name."""
    return {
        p.relative_to(out).as_posix(): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name != "report.jsonl"
    }


@pytest.fixture
def photos(tmp_path) -> Path:
    src = tmp_path / "in"
    src.mkdir()
    for i in range(COUNT):
        Image.fromarray(synthetic_photo(256, 256, 40 + i)).save(src / f"p{i}.png")
    return src


def kill_once_some_are_done(argv: list[str], out: Path, last: Path) -> None:
    """Run p2c-infer in a process group of its own and SIGKILL it (its Beam workers too) once
    some cartoons are written.

    ``last`` (the last input) is a FIFO that nothing writes to, so the run stalls on it and
    the kill always comes mid-job, with the earlier batches done."""
    last.unlink()
    os.mkfifo(last)
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "p2c_jax.cli.infer", *argv],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while len(list(out.glob("p*.png"))) < 3:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "no cartoons after 120 s"
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.slow  # a CLI process of its own: about 20 s of CPU (with two Beam workers: 40 s)
@pytest.mark.parametrize("engine", ENGINES)
def test_rerun_after_kill_does_only_what_is_missing(tmp_path, photos, weights, capsys, engine):
    argv = [str(photos), "--weights", str(weights), *FLAGS]
    straight = tmp_path / "straight"
    assert main([*argv, "-o", str(straight)]) == 0  # today's engine: the outputs wanted
    killed_flags, rerun_flags = ENGINES[engine]
    want = files(straight)
    assert sorted(want) == [f"p{i}.png" for i in range(COUNT)]

    out = tmp_path / "out"
    last = photos / f"p{COUNT - 1}.png"
    last_bytes = last.read_bytes()
    kill_once_some_are_done([*argv, *killed_flags, "-o", str(out)], out, last)
    last.unlink()
    last.write_bytes(last_bytes)  # the photo has arrived
    killed = {n: b for n, b in files(out).items() if not n.startswith(".")}  # whole ones
    assert 3 <= len(killed) < COUNT and all(want[n] == b for n, b in killed.items())
    # what a kill in the middle of a write leaves: the report's last line cut short, and a
    # temporary file beside the cartoon being written (named as write_atomic names them)
    done = [json.loads(x)["name"] for x in report_lines(out)]
    assert len(done) >= 2
    text = (out / "report.jsonl").read_text()
    (out / "report.jsonl").write_text(text[: text.rindex("\n", 0, -1) + 20])
    missing = [f"p{i}.png" for i in range(COUNT) if f"p{i}.png" not in done[:-1]]
    dead_pid = 2**22 + 1  # above Linux's pid_max: never a running process
    (out / f".{missing[-1]}.{dead_pid}.0123456789ab.tmp").write_bytes(b"\x89PNG half")
    stamps = {n: (out / n).stat().st_mtime_ns for n in done[:-1]}
    capsys.readouterr()

    assert main([*argv, *rerun_flags, "-o", str(out)]) == 0
    assert f"{COUNT} inputs: {COUNT} done ({len(done) - 1} already), 0 failed" in (
        capsys.readouterr().err
    )
    assert files(out) == want  # byte for byte, and no temporary file left
    assert {n: (out / n).stat().st_mtime_ns for n in stamps} == stamps  # not written again
    lines = report_lines(out)
    assert [json.loads(x)["name"] for x in lines[: len(done) - 1]] == done[:-1]  # kept
    with pytest.raises(ValueError):
        json.loads(lines[len(done) - 1])  # the line cut short, left as it was
    rerun = [json.loads(x) for x in lines[len(done) :]]
    assert sorted(r["name"] for r in rerun) == missing
    assert all(r["status"] == "done" for r in rerun)


def test_rerun_of_a_finished_job_writes_nothing_and_overwrite_does_it_again(
    tmp_path, photos, weights, capsys
):
    n = 4
    inputs = [str(photos / f"p{i}.png") for i in range(n)]
    out = tmp_path / "out"
    argv = [*inputs, "--weights", str(weights), *FLAGS, "-o", str(out)]
    assert main(argv) == 0
    report = (out / "report.jsonl").read_bytes()
    first = files(out)
    inodes = {name: (out / name).stat().st_ino for name in first}
    capsys.readouterr()

    assert main(argv) == 0
    assert f"{n} inputs: {n} done ({n} already), 0 failed" in capsys.readouterr().err
    assert (out / "report.jsonl").read_bytes() == report
    assert {name: (out / name).stat().st_ino for name in first} == inodes  # none replaced

    assert main([*argv, "--overwrite"]) == 0
    assert f"{n} inputs: {n} done, 0 failed" in capsys.readouterr().err
    assert files(out) == first
    assert all((out / name).stat().st_ino != inodes[name] for name in first)  # written again
    assert len(report_lines(out)) == n
