"""p2c-preprocess on Beam (FnApiRunner, in memory) over tests/data, against the serial engine
(`pipeline.run` per split, then the TFRecord / ArrayRecord writers): the same PNG bytes,
reports and records; bad photos on the dead-letter output; train.py's reader gets the same
batches; reruns and a crash before a shard's commit; gs:// in and out."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import DATA
from helpers.ci_required import needs_dlib, require
from PIL import Image

from preprocessing.files import discover
from preprocessing.landmarks import make_landmarker
from preprocessing.pipeline import Preprocessor, as_is, run
from preprocessing.segmentation import make_segmenter
from preprocessing.splits import CARTOON_SPLITS, PHOTO_SPLITS, SPLITS

beam = require("apache_beam", "the beam extra")
tfrecords_writer = require("preprocessing.tfrecords", "the preprocess extra")
require("grain", "the grain extra")
from apache_beam.testing import test_pipeline as beam_testing  # noqa: E402
from apache_beam.testing.util import assert_that, equal_to  # noqa: E402

from p2c_jax.data import tfrecords  # noqa: E402
from p2c_jax.data.grain_input import open_split  # noqa: E402
from p2c_jax.data.input_pipeline import held_out_images, train_batches  # noqa: E402
from preprocessing import array_record, beam_pipeline, shards  # noqa: E402
from preprocessing.__main__ import main  # noqa: E402
from preprocessing.beam_runner import pipeline_options  # noqa: E402

pytestmark = [needs_dlib(), pytest.mark.xdist_group("beam_preprocess")]  # fixtures built once

IN_MEMORY = [
    "--direct_running_mode",
    "in_memory",
    "--direct_num_workers",
    "1",
]  # one process: the tests' monkeypatches hold
NUM_SHARDS = 4
BACKEND = {
    "landmarks": "dlib",
    "device": "cpu",
    "segmentation": None,
    "seg_model": None,
    "all_faces": False,
}


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """A dataset folder: real faces and cartoons from tests/data, a corrupt file and a photo
    without a face in trainA, a face in a subfolder of testA."""
    root = tmp_path_factory.mktemp("photos")
    images = DATA / "images"
    for split in SPLITS:
        (root / split).mkdir()
    for i in (1, 2, 3):
        shutil.copy(images / f"aligned_photo_{i}.png", root / "trainA")
        shutil.copy(images / f"official_cartoon_{i}.png", root / "trainB")
    (root / "trainA" / "corrupt.jpg").write_bytes(b"nope")
    Image.new("RGB", (96, 96), (128, 128, 128)).save(root / "trainA" / "blank.png")
    (root / "testA" / "sub").mkdir()
    shutil.copy(images / "aligned_photo_2.png", root / "testA" / "sub" / "face.png")
    shutil.copy(images / "official_cartoon_1.png", root / "testB")
    return root


@pytest.fixture(scope="module")
def serial(photos, tmp_path_factory) -> Path:
    """Today's engine: the serial loop per split, then the TFRecord and ArrayRecord writers."""
    out = tmp_path_factory.mktemp("serial")
    pre = Preprocessor(make_landmarker("dlib"), make_segmenter("grabcut"))
    for split in SPLITS:
        process = pre if split in PHOTO_SPLITS else as_is
        run(discover([str(photos / split)]), out / split, process, progress=False)
    tfrecords_writer.write_dataset(out, out / "tfrecords", SPLITS)
    array_record.write_dataset(out, out / "array_record", SPLITS)
    return out


def beam_run(photos: Path, out: Path, record_format: str):
    """The Beam pipeline over ``photos`` in a TestPipeline, its dead-letter output checked;
    returns its RunSpec and its shards' photos."""
    spec = shards.RunSpec(str(out), NUM_SHARDS, record_format, SPLITS)
    plan = shards.plan({s: discover([str(photos / s)]) for s in SPLITS}, NUM_SHARDS)
    with beam_testing.TestPipeline(options=pipeline_options(IN_MEMORY)) as p:
        written = beam_pipeline.build(p, spec, plan, BACKEND, CARTOON_SPLITS)
        assert_that(
            written[beam_pipeline.FAILED] | beam.MapTuple(lambda split, row: (split, row["name"])),
            equal_to([("trainA", "blank.png"), ("trainA", "corrupt.jpg")]),
            label="dead letter",
        )
    return spec, plan


@pytest.fixture(scope="module")
def beam_tfrecords(photos, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("beam")
    beam_run(photos, out, "tfrecord")
    return out


def files(folder: Path, skip=("report.jsonl",)) -> dict[str, bytes]:
    """Every file under ``folder`` but the skipped names and the shards' markers, by relative name."""
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name not in skip and shards.MARKERS not in p.parts
    }


def tfrecord_examples(folder: Path, split: str) -> list[tuple[str, bytes]]:
    """The split's examples as (name, PNG bytes), sorted: not their serialized bytes, whose
    feature-map order protobuf chooses per process."""
    import tensorflow as tf

    from preprocessing.array_record import decode_example

    found = tfrecords.split_files(tfrecords.find_dataset(folder), split).files
    return sorted(decode_example(r.numpy()) for r in tf.data.TFRecordDataset(list(found)))


def test_outputs_are_todays_bytes(serial, beam_tfrecords):
    for split in SPLITS:
        pngs = files(beam_tfrecords / split)
        assert pngs == files(serial / split) and pngs
        report = (beam_tfrecords / split / "report.jsonl").read_text()
        assert report == (serial / split / "report.jsonl").read_text()
        assert tfrecord_examples(beam_tfrecords, split) == tfrecord_examples(serial, split)
    rows = [json.loads(x) for x in (beam_tfrecords / "trainA" / "report.jsonl").open()]
    failed = {r["name"]: r["reason"] for r in rows if r["status"] == "failed"}
    assert failed == {"blank.png": "no face found", "corrupt.jpg": "not an image"}
    lengths = tfrecords.read_splits(tfrecords.find_dataset(beam_tfrecords))
    assert {s: len(lengths[s].lengths) for s in SPLITS} == dict.fromkeys(SPLITS, NUM_SHARDS)
    assert {s: lengths[s].size for s in SPLITS} == {
        "trainA": 3,
        "trainB": 3,
        "testA": 1,
        "testB": 1,
    }


def test_train_reader_reads_the_same_batches(serial, beam_tfrecords):
    for domain in ("A", "B"):
        got, want = (
            train_batches(d, domain, 2, 32, augment=True, seed=3, workers=1)
            for d in (beam_tfrecords, serial)
        )
        for _ in range(3):
            np.testing.assert_array_equal(next(got), next(want))
        np.testing.assert_array_equal(
            held_out_images(beam_tfrecords, domain, 32, 2), held_out_images(serial, domain, 32, 2)
        )


def stamps(folder: Path) -> dict[str, int]:
    """The modification time of every file under ``folder``, by relative name."""
    return {
        p.relative_to(folder).as_posix(): p.stat().st_mtime_ns
        for p in folder.rglob("*")
        if p.is_file()
    }


def test_rerun_writes_nothing_new(photos, beam_tfrecords, capsys):
    before, content = stamps(beam_tfrecords), files(beam_tfrecords, skip=())
    argv = ["--data_path", str(photos), "--save_path", str(beam_tfrecords), "--tfrecords"]
    assert main([*argv, "--num_shards", str(NUM_SHARDS), *IN_MEMORY]) == 1
    assert stamps(beam_tfrecords) == before and files(beam_tfrecords, skip=()) == content
    err = capsys.readouterr().err
    assert (
        "trainA: 5 inputs: 3 done (3 already), 2 failed [no face found: 1, not an image: 1]" in err
    )
    assert "tfrecords: trainA: 3, trainB: 3, testA: 1, testB: 1" in err


def test_crash_before_a_commit_resumes_that_shard_only(photos, serial, tmp_path, monkeypatch):
    """ArrayRecord output: the shard that commits last (the runner's order is random) fails
    before its marker; the rerun writes that shard again and nothing else, and the outputs are
    the serial engine's."""
    out = tmp_path / "out"
    write_atomic, commits = shards.write_atomic, []

    def crash_at_the_last_commit(path, data):
        commits.append(path)
        if len(commits) == NUM_SHARDS:
            raise RuntimeError("injected crash")
        write_atomic(path, data)

    monkeypatch.setattr(shards, "write_atomic", crash_at_the_last_commit)
    with pytest.raises(Exception, match="injected crash"):
        beam_run(photos, out, "array_record")
    monkeypatch.undo()
    marker = os.path.relpath(commits[-1], out)
    victim = int(os.path.basename(marker)[:5])
    crashed = stamps(out)
    assert all(shards.MARKERS in c for c in commits) and marker not in crashed
    assert len(list((out / shards.MARKERS).iterdir())) == NUM_SHARDS - 1
    spec, plan = beam_run(photos, out, "array_record")
    rewritten = {name for name, t in stamps(out).items() if crashed.get(name) != t}
    result = shards.committed(spec, victim, plan[victim])
    pngs = {f"{s}/{o}" for s, row in result.rows for o in row.get("outputs", [])}
    records = {os.path.relpath(spec.record_path(s, victim), out) for s in SPLITS}
    reports = {f"{s}/report.jsonl" for s in SPLITS}  # written at the end: not by the crashed run
    assert pngs and rewritten == pngs | records | reports | {marker}
    for split in SPLITS:
        got, want = (open_split(d / "array_record", split) for d in (out, serial))
        assert sorted(got[i] for i in range(len(got))) == sorted(want[i] for i in range(len(want)))
    assert all(files(out / s) == files(serial / s) for s in SPLITS)


def test_every_dofn_pickles_small(photos, tmp_path):
    from apache_beam.portability import common_urns
    from apache_beam.portability.api import beam_runner_api_pb2

    p = beam.Pipeline(options=pipeline_options(IN_MEMORY))
    spec = shards.RunSpec(str(tmp_path), NUM_SHARDS, "tfrecord", SPLITS)
    plan = shards.plan({s: discover([str(photos / s)]) for s in SPLITS}, NUM_SHARDS)
    beam_pipeline.build(p, spec, plan, BACKEND, CARTOON_SPLITS)
    sizes = {
        t.unique_name: len(
            beam_runner_api_pb2.ParDoPayload.FromString(t.spec.payload).do_fn.payload
        )
        for t in p.to_runner_api().components.transforms.values()
        if t.spec.urn == common_urns.primitives.PAR_DO.urn
    }
    assert any(name.startswith("write shards") for name in sizes) and len(sizes) >= 5, sizes
    assert max(sizes.values()) < 1 << 20, sizes


def test_gcs_in_and_out(photos, beam_tfrecords, gcs_bucket, capsys):
    """The dataset read from and written to (fake) GCS: the same objects as the local run,
    the reports naming the gs:// inputs."""
    for path in photos.rglob("*"):
        if path.is_file():
            (gcs_bucket / "in" / path.relative_to(photos).as_posix()).write_bytes(path.read_bytes())
    argv = ["--data_path", str(gcs_bucket / "in"), "--save_path", str(gcs_bucket / "out")]
    assert main([*argv, "--tfrecords", "--num_shards", str(NUM_SHARDS), *IN_MEMORY]) == 1
    assert "testB: 1 inputs: 1 done, 0 failed" in capsys.readouterr().err
    out = gcs_bucket / "out"
    got = {
        rel: path.read_bytes()
        for path, rel in discover([str(out)])
        if path.name != "report.jsonl" and not rel.startswith(shards.MARKERS)
    }
    assert got == files(beam_tfrecords)
    report = (out / "trainA" / "report.jsonl").read_text()
    local = (beam_tfrecords / "trainA" / "report.jsonl").read_text()
    assert report == local.replace(str(photos), str(gcs_bucket / "in"))


@pytest.mark.slow
def test_two_worker_processes(photos, tmp_path):
    """The local default runner's workers are processes: two of them write shards."""
    pids = tmp_path / "pids"
    pids.mkdir()
    spec = shards.RunSpec(str(tmp_path / "out"), NUM_SHARDS)
    plan = shards.plan({"": discover([str(photos / "trainB")])}, NUM_SHARDS)
    with beam_testing.TestPipeline(options=pipeline_options(["--direct_num_workers", "2"])) as p:
        written = beam_pipeline.build(p, spec, plan, BACKEND, copy_splits=("",))
        _ = written[beam_pipeline.RESULTS] | beam.Map(
            lambda r, d: (Path(d) / f"{r.index}.pid").write_text(str(os.getpid())), str(pids)
        )
    workers = {p.read_text() for p in pids.iterdir()}
    assert len(workers) == 2 and str(os.getpid()) not in workers, workers
    assert len(list((tmp_path / "out" / shards.MARKERS).iterdir())) == NUM_SHARDS
