"""p2c-infer --runner FnApiRunner (Beam's RunInference, in this process): the cartoons (side by
side) byte for byte and the report rows of today's engine; a re-run writes only what is missing
and appends to the report; the DoFns pickle small; a bad runner or a missing Beam is one error
line."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from apache_beam.internal import pickler

import p2c_jax
from p2c_jax import beam_inference
from p2c_jax.cli.infer import main

IN_PROCESS = ["--runner", "FnApiRunner", "--direct_running_mode", "in_memory"]
FLAGS = ["--no_preprocess", "--no_progress", "--batch_size", "2"]  # test_infer's compiled shape


def files(out: Path) -> dict[str, bytes]:
    """Every file under ``out`` (temporary ones included) but the report, by relative name."""
    return {
        p.relative_to(out).as_posix(): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name != "report.jsonl"
    }


def rows(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "report.jsonl").read_text().splitlines()]


@pytest.fixture
def photos(data_dir, tmp_path) -> Path:
    """Four of tests/data's images (of two sizes; the re-run's last batch of 2 padded), a corrupt
    one and a text file."""
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    for name in ("aligned_photo_1.png", "aligned_photo_2.png", "aligned_photo_3.png"):
        shutil.copy(data_dir / "images" / name, src)
    shutil.copy(data_dir / "images" / "photo_test.jpg", src / "sub")
    (src / "sub" / "corrupt.png").write_bytes((src / "aligned_photo_1.png").read_bytes()[:300])
    (src / "notes.txt").write_text("not a photo")
    return src


def test_beam_equals_todays_engine_and_a_rerun_does_only_what_is_missing(
    tmp_path, photos, weights, capsys
):
    argv = [str(photos), "--weights", str(weights), *FLAGS, "--side_by_side"]
    assert main([*argv, "-o", str(tmp_path / "today")]) == 1  # 2 failed
    want, want_rows = files(tmp_path / "today"), rows(tmp_path / "today")
    assert len(want) == 4 and len(want_rows) == 6
    capsys.readouterr()

    out = tmp_path / "beam"
    first = [str(photos / "aligned_photo_1.png"), str(photos / "notes.txt")]
    assert main([*first, *argv[1:], "-o", str(out), *IN_PROCESS]) == 1
    assert "2 inputs: 1 done, 1 failed [not an image: 1]" in capsys.readouterr().err
    before = (out / "report.jsonl").read_bytes()
    inode = (out / "aligned_photo_1.png").stat().st_ino

    assert main([*argv, "-o", str(out), *IN_PROCESS]) == 1
    err = capsys.readouterr().err
    assert "6 inputs: 4 done (1 already), 2 failed [" in err
    assert files(out) == want  # byte for byte, no temporary file
    assert (out / "aligned_photo_1.png").stat().st_ino == inode  # not written again
    assert (out / "report.jsonl").read_bytes().startswith(before)  # appended to
    by_name = {r["name"]: r for r in want_rows}
    assert sorted(r["name"] for r in rows(out)[:2]) == ["aligned_photo_1.png", "notes.txt"]
    rerun = rows(out)[2:]
    assert sorted(r["name"] for r in rerun) == sorted(set(by_name) - {"aligned_photo_1.png"})
    assert all(r == by_name[r["name"]] for r in rows(out))  # today's rows, as they are


def test_handler_and_dofns_pickle_small_and_batch_to_one_size(tmp_path, weights):
    handler = beam_inference.GeneratorHandler(str(weights), 3, img_size=128)
    fns = [
        handler,
        beam_inference.Prepare(None, 128),
        beam_inference.WriteCartoon(str(tmp_path), side_by_side=True),
        beam_inference.ReportFailure(str(tmp_path)),
    ]
    for fn in fns:
        assert len(pickler.dumps(fn)) < 1_000_000, type(fn).__name__
    again = pickler.loads(pickler.dumps(handler))
    assert again.batch_elements_kwargs() == {"min_batch_size": 3, "max_batch_size": 3}
    gen = again.load_model()
    assert (gen.batch_size, gen.size) == (3, 128)


def test_bad_runner_is_one_error_line(tmp_path, capsys):
    args = [str(tmp_path), "-o", str(tmp_path / "o"), "--weights", "w.pt"]
    assert main([*args, "--runner", "NoSuchRunner"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --runner NoSuchRunner: not a Beam runner (ValueError: ")
    assert len(err.splitlines()) == 1
    with pytest.raises(SystemExit):  # without --runner, an unknown flag is still an error
        main([*args, "--direct_num_workers", "2"])
    assert "unrecognized arguments: --direct_num_workers" in capsys.readouterr().err


def test_without_beam_is_one_error_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "apache_beam", None)  # as if not installed
    monkeypatch.delitem(sys.modules, "p2c_jax.beam_inference")
    monkeypatch.delattr(p2c_jax, "beam_inference")
    args = [str(tmp_path), "-o", str(tmp_path / "o"), "--weights", "w.pt"]
    assert main([*args, "--runner", "FnApiRunner"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: p2c-infer --runner needs apache-beam")
    assert err.endswith("pip install 'p2c-jax[beam]'\n") and len(err.splitlines()) == 1
