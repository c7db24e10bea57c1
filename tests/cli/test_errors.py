"""Every command's bad input is one error line, exit 2, before any work and with nothing left
behind (issue 30): numeric ranges, ``--img_size``, an ``--output`` that is a file, misspelled
required flags, missing inputs and extras, damaged weights; and what the commands say while
they work (warnings, where outputs went, the compile cache)."""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from preprocessing.flags import Parser

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / "tests" / "data" / "images"

MODULES = {
    "p2c-train": "p2c_jax.cli.train",
    "p2c-infer": "p2c_jax.cli.infer",
    "p2c-convert": "p2c_jax.cli.convert",
    "p2c-evaluate": "p2c_jax.cli.evaluate",
    "p2c-export": "p2c_jax.cli.export",
    "p2c-serve": "p2c_jax.cli.serve",
    "p2c-preprocess": "preprocessing.__main__",
}
REQUIRED = {
    "p2c-train": [],
    "p2c-infer": ["x.jpg", "-o", "out", "--weights", "w"],
    "p2c-convert": ["--src", "a", "--dst", "b"],
    "p2c-evaluate": ["--weights", "w", "--photos", "p", "--cartoons", "c"],
    "p2c-export": ["--weights", "w", "--format", "onnx", "--dst", "d"],
    "p2c-serve": ["--weights", "w"],
    "p2c-preprocess": ["--data_path", "x", "--save_path", "y"],
}

# (command, flag, value out of its range, the range as the error says it)
OUT_OF_RANGE = [
    ("p2c-train", "--batch_size", "0", "an integer >= 1"),
    ("p2c-train", "--faceid_weight", "-1", "a number >= 0"),
    ("p2c-train", "--lr", "0", "a number > 0"),
    ("p2c-train", "--beta2", "1", "a number >= 0 and < 1"),
    ("p2c-train", "--iteration", "0", "an integer >= 1"),
    ("p2c-train", "--print_freq", "-1", "an integer >= 0"),
    ("p2c-train", "--save_freq", "-5", "an integer >= 0"),
    ("p2c-train", "--eval_freq", "-1", "an integer >= 0"),
    ("p2c-train", "--keep", "0", "an integer >= 1"),
    ("p2c-train", "--ch", "0", "an integer >= 1"),
    ("p2c-train", "--num_processes", "0", "an integer >= 1"),
    ("p2c-infer", "--batch_size", "0", "an integer >= 1"),
    ("p2c-infer", "--batch_size", "-1", "an integer >= 1"),
    ("p2c-infer", "--workers", "0", "an integer >= 1"),
    ("p2c-infer", "--max_faces", "0", "an integer >= 1"),
    ("p2c-infer", "--min_face", "-1", "a number >= 0"),
    ("p2c-evaluate", "--batch_size", "0", "an integer >= 1"),
    ("p2c-evaluate", "--kid_subsets", "0", "an integer >= 1"),
    ("p2c-evaluate", "--kid_subset_size", "1", "an integer >= 2"),
    ("p2c-export", "--batch", "0", "an integer >= 1"),
    ("p2c-serve", "--port", "70000", "an integer >= 0 and <= 65535"),
    ("p2c-serve", "--max_upload_mb", "0", "a number > 0"),
    ("p2c-serve", "--max_wait_ms", "-1", "a number >= 0"),
    ("p2c-serve", "--max_pending", "0", "an integer >= 1"),
    ("p2c-serve", "--workers", "0", "an integer >= 1"),
]


def _parser(command: str) -> Parser:
    return importlib.import_module(MODULES[command]).build_parser()


def _parse_error(command: str, argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The stderr of a command line its parser refuses (exit 2)."""
    with pytest.raises(SystemExit) as e:
        _parser(command).parse_args(argv)
    assert e.value.code == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("command", MODULES)
def test_every_numeric_flag_has_a_range(command: str) -> None:
    """No flag is a bare int or float: each is bounded by ``preprocessing.flags.number`` (or
    has its choices)."""
    parser = _parser(command)
    numeric = [a for a in parser._actions if a.type in (int, float) and not a.choices]
    assert not numeric, [a.option_strings for a in numeric]


@pytest.mark.parametrize(("command", "flag", "value", "expected"), OUT_OF_RANGE)
def test_out_of_range_is_one_line(command, flag, value, expected, capsys) -> None:
    err = _parse_error(command, [*REQUIRED[command], flag, value], capsys)
    assert err == f"{command}: error: argument {flag}: expected {expected}, got {value}\n"


def test_in_range_values_parse() -> None:
    args = _parser("p2c-train").parse_args(
        ["--batch_size", "1", "--faceid_weight", "0", "--beta2", "0", "--eval_freq", "0"]
    )
    assert (args.batch_size, args.faceid_weight, args.beta2, args.eval_freq) == (1, 0.0, 0.0, 0)
    assert _parser("p2c-export").parse_args([*REQUIRED["p2c-export"], "--batch", "dynamic"]).batch
    assert _parser("p2c-serve").parse_args([*REQUIRED["p2c-serve"], "--port", "0"]).port == 0


@pytest.mark.parametrize("command", ["p2c-train", "p2c-infer", "p2c-serve", "p2c-export"])
def test_img_size_is_one_check(command: str, capsys) -> None:
    """--img_size 100: the message of ``inference.check_img_size``, while parsing."""
    err = _parse_error(command, [*REQUIRED[command], "--img_size", "100"], capsys)
    assert err == f"{command}: error: argument --img_size: a positive multiple of 16, got 100\n"
    args = _parser(command).parse_args([*REQUIRED[command], "--img_size", "96"])
    assert args.img_size == 96


def test_train_refuses_before_any_work(tmp_path: Path) -> None:
    """The issue's command line: one line, exit 2, no workdir, in well under the 10 s that
    loading the data took before the traceback."""
    workdir = tmp_path / "run"
    argv = ["--dataset", "demo", "--faceid_weight", "0", "--batch_size", "0"]
    proc = subprocess.run(
        [sys.executable, "-m", "p2c_jax.cli.train", *argv, "--workdir", str(workdir)],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2
    assert proc.stderr == (
        "p2c-train: error: argument --batch_size: expected an integer >= 1, got 0\n"
    ), proc.stderr
    assert list(tmp_path.iterdir()) == []  # no workdir, no ./dataset/demo, no ./experiment


@pytest.mark.parametrize(
    ("command", "argv", "suggestion"),
    [
        ("p2c-infer", ["photos", "--weights", "w", "--ouput", "x"], "--ouput (did you mean --output?)"),
        ("p2c-convert", ["--src", "a", "--dts", "b"], "--dts (did you mean --dst?)"),
        ("p2c-export", ["--weights", "w", "--fromat", "onnx", "--dst", "d"], "--fromat (did you mean --format?)"),
        ("p2c-preprocess", ["--data_path", "x", "--save-path", "y"], "--save-path (did you mean --save_path?)"),
    ],
)  # fmt: skip
def test_misspelled_required_flag_suggests(command, argv, suggestion, capsys) -> None:
    err = _parse_error(command, argv, capsys)
    assert err.count("\n") == 1, err
    assert "the following arguments are required" in err
    assert f"unrecognized arguments: {suggestion}" in err, err


def test_missing_required_flag_alone_has_no_suggestion(capsys) -> None:
    err = _parse_error("p2c-convert", ["--src", "a"], capsys)
    assert err == "p2c-convert: error: the following arguments are required: --dst\n"


# ------------------------------------------------------------------------------ p2c-infer


def _never(*args, **kwargs):
    raise AssertionError("the model was loaded")


def test_infer_output_that_is_a_file(tmp_path, capsys, monkeypatch) -> None:
    from p2c_jax.cli.infer import main

    readme = tmp_path / "README.md"
    readme.write_text("kept\n")
    monkeypatch.setattr("p2c_jax.inference.load_generator", _never)
    argv = [str(IMAGES / "aligned_photo_1.png"), "--weights", "w", "--output", str(readme)]
    assert main(argv) == 2
    assert capsys.readouterr().err == f"error: --output {readme}: exists and is not a folder\n"
    assert readme.read_text() == "kept\n"


@pytest.fixture(scope="module")
def checkpoint_64(tmp_path_factory) -> Path:
    """Our checkpoint of a light ngf-8 generator that says it was trained at 64 x 64."""
    from flax import nnx

    from p2c_jax.nn.models import NetSpec, build
    from p2c_jax.weights.checkpoint import save_nets

    spec = NetSpec("generator", 8, 64)
    path = tmp_path_factory.mktemp("ckpt") / "g64"
    save_nets(path, {"genA2B": (spec, nnx.state(build(spec)))})
    return path


@pytest.fixture(scope="module")
def damaged(checkpoint_64, tmp_path_factory) -> dict[str, Path]:
    """A .pt of random bytes, and a copy of ``checkpoint_64`` with every array file cut short."""
    import shutil

    root = tmp_path_factory.mktemp("damaged")
    random_pt = root / "random.pt"
    random_pt.write_bytes(np.random.default_rng(0).bytes(5000))
    truncated = root / "truncated"
    shutil.copytree(checkpoint_64, truncated)
    cut = [f for f in truncated.rglob("*") if f.is_file() and f.parent.name == "d"]
    assert cut, list(truncated.rglob("*"))
    for f in cut:
        f.write_bytes(f.read_bytes()[:100])
    return {"random": random_pt, "truncated": truncated}


@pytest.mark.parametrize("which", ["random", "truncated"])
@pytest.mark.parametrize("command", ["p2c-infer", "p2c-export", "p2c-serve"])
def test_damaged_weights_are_one_line(command, which, damaged, tmp_path, capsys) -> None:
    main = importlib.import_module(MODULES[command]).main
    weights = str(damaged[which])
    argv = {
        "p2c-infer": [str(IMAGES / "aligned_photo_1.png"), "--no_preprocess", "-o", str(tmp_path / "o")],
        "p2c-export": ["--format", "stablehlo", "--dst", str(tmp_path / "g.stablehlo")],
        "p2c-serve": [],
    }[command]  # fmt: skip
    assert main([*argv, "--weights", weights, "--compile_cache", "none"]) == 2
    err = capsys.readouterr().err
    (line,) = [x for x in err.splitlines() if x.startswith("error")]
    assert line.startswith(f"error: unusable weights: {weights}"), err
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_infer_says_warnings_once_and_where_it_wrote(checkpoint_64, tmp_path) -> None:
    """A subprocess, as a user runs it: the warning that the generator runs at 256, not at the
    64 it was trained at, is ``warning: ...`` once (not ``WARNING:p2c_jax.inference:warning:
    ...``), and the last line names the output folder. On the CPU: where libtpu is installed
    (the tpu extra), jax's probe for a TPU on a host without one prints libtpu's own warnings,
    unless another process (a tpu test's worker) holds libtpu at the time."""
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "p2c_jax.cli.infer",
            str(IMAGES / "aligned_photo_1.png"),
            "--weights",
            str(checkpoint_64),
            "--no_preprocess",
            "--no_progress",
            "-o",
            str(out),
        ],
        cwd=ROOT,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines[-1] == f"wrote {out}/: the cartoons and report.jsonl (a line per input)", lines
    assert (out / "aligned_photo_1.png").is_file() and (out / "report.jsonl").is_file()
    warned = [x for x in lines if "trained at 64 x 64" in x]
    assert len(warned) == 1 and warned[0].startswith(f"warning: {checkpoint_64}: genA2B: "), lines
    assert "WARNING" not in proc.stderr, proc.stderr


def test_warning_prints_once_as_warning(tmp_path) -> None:
    """``setup_logging``, then Orbax's import (whose absl message would configure logging
    its own way), then a warning: one line ``warning: ...``."""
    code = (
        "from p2c_jax.cli.common import setup_logging; setup_logging(); "
        "import logging, orbax.checkpoint; "
        "logging.getLogger('p2c_jax.inference').warning('trained at 96 x 96')"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    lines = [x for x in proc.stderr.splitlines() if "96" in x]
    assert lines == ["warning: trained at 96 x 96"], proc.stderr


# ------------------------------------------------------------------------- p2c-preprocess


@pytest.mark.parametrize("tfrecords", [False, True])
@pytest.mark.parametrize("kind", ["missing", "empty"])
def test_preprocess_missing_or_empty_input(kind, tfrecords, tmp_path, capsys, monkeypatch):
    import preprocessing.__main__ as cli

    data = tmp_path / "photos"
    if kind == "empty":
        data.mkdir()
    monkeypatch.setattr(cli, "preprocessor_from_flags", _never)  # no model loads either
    argv = ["--data_path", str(data), "--save_path", str(tmp_path / "X"), "--no_progress"]
    assert cli.main(argv + ["--tfrecords"] * tfrecords) == 2
    err = capsys.readouterr().err
    expected = {
        (False, "missing"): f"error: input {data}: no such file, folder or glob match\n",
        (False, "empty"): f"error: no input files in {data}\n",
    }.get((tfrecords, kind), f"error: --data_path {data}: no trainA/trainB/testA/testB folders\n")
    assert err == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == (["photos"] if kind == "empty" else [])


def test_preprocess_without_dlib_names_the_extra(tmp_path, capsys, monkeypatch) -> None:
    import builtins

    from preprocessing.__main__ import main

    real_import = builtins.__import__

    def no_dlib(name, *args, **kwargs):
        if name.partition(".")[0] == "dlib":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_dlib)
    out = tmp_path / "X"
    argv = ["--data_path", str(IMAGES / "photo_test.jpg"), "--save_path", str(out)]
    assert main([*argv, "--no_progress"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "error: --landmarks dlib needs dlib-bin (module dlib), which is not installed: "
        "pip install 'p2c-jax[preprocess]'\n"
    ), err
    assert not out.exists()


# ------------------------------------------------------------------------------ TensorFlow


def test_tensorflow_starts_quietly() -> None:
    """The TFRecord reader's TensorFlow: no absl / oneDNN / CPU-feature lines on stderr."""
    code = (
        "from p2c_jax.data.tfrecords import _tf; tf = _tf(); "
        "print(int(tf.constant(2) + tf.constant(3)))"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_")}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "5\n"
    assert proc.stderr == "", proc.stderr


def test_tfrecords_writer_says_no_download(tmp_path, capfd) -> None:
    from preprocessing.tfrecords import write_dataset

    for split in ("trainA", "trainB"):
        (tmp_path / "src" / split).mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "src" / split / "a.png")
    capfd.readouterr()
    counts = write_dataset(tmp_path / "src", tmp_path / "tf", ["trainA", "trainB"])
    assert counts == {"trainA": 1, "trainB": 1}
    assert "Downloading and preparing" not in capfd.readouterr().out


# ------------------------------------------------------------------------------- p2c-train


def test_train_has_the_compile_cache_flag() -> None:
    from p2c_jax.cli.common import default_compile_cache

    args = _parser("p2c-train").parse_args([])
    assert args.compile_cache == default_compile_cache()
    assert _parser("p2c-train").parse_args(["--compile_cache", "none"]).compile_cache == "none"


def test_ctrl_c_is_a_stop_request_not_a_keyboard_interrupt() -> None:
    """Ctrl-C (SIGINT), like SIGTERM, asks the loop to stop after the step it is in (which it
    saves); the handlers in place before are back afterwards."""
    from p2c_jax.train.loop import Stop

    before = signal.getsignal(signal.SIGINT)
    with Stop(manager=None) as stop:
        assert not stop.requested(1)
        os.kill(os.getpid(), signal.SIGINT)  # no KeyboardInterrupt: the test goes on
        assert stop.requested(1) and stop.signum == signal.SIGINT
    assert signal.getsignal(signal.SIGINT) is before


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_stopped_training_exits_128_plus_the_signal(signum, monkeypatch, capsys) -> None:
    """A run stopped by a signal, once its step is saved, exits 128 + the signal (130 Ctrl-C,
    143 SIGTERM), so ``p2c-train ... && p2c-export ...`` stops. The whole path, signal to saved
    step to exit status, in a real process: ``tests/train/test_loop.py``'s SIGTERM test."""
    from p2c_jax.cli import train as cli
    from p2c_jax.train import loop
    from p2c_jax.train.loop import Interrupted

    def stopped(cfg) -> None:
        raise Interrupted(signum, 1)

    monkeypatch.setattr(loop, "train", stopped)
    want = {signal.SIGINT: 130, signal.SIGTERM: 143}[signum]
    assert cli.main(["--dataset", "demo", "--compile_cache", "none"]) == want
