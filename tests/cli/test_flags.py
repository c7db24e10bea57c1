"""The commands' shared parser: defaults in ``--help``, "did you mean" for a
misspelled flag, for each of the seven commands."""

from __future__ import annotations

import argparse
import importlib
import re
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

from preprocessing.flags import Parser

ROOT = Path(__file__).resolve().parents[2]


class Command(NamedTuple):
    module: str
    required: list[str]  # the command's required arguments
    flag: str  # a flag, and the text its help line ends with
    help_end: str
    wrong: list[str]  # a misspelled flag (and its value), and the flag it should suggest
    right: str
    value: str  # a value of ``right`` (none: a store_true flag), and what it parses to
    parsed: object


COMMANDS = {
    "p2c-train": Command("p2c_jax.cli.train", [], "--lr", "learning rate (default: 0.0001)",
                         ["--lrr", "1"], "--lr", "0.5", 0.5),
    "p2c-infer": Command("p2c_jax.cli.infer", ["x.jpg", "-o", "out", "--weights", "w"],
                         "--max_faces", "largest first (default: 10)", ["--wokers", "2"],
                         "--workers", "3", 3),
    # p2c-convert has no flag with a default: --best (store_true) shows none
    "p2c-convert": Command("p2c_jax.cli.convert", ["--src", "a", "--dst", "b"], "--best",
                           "instead of the latest", ["--bset"], "--best", "", True),
    "p2c-evaluate": Command("p2c_jax.cli.evaluate",
                            ["--weights", "w", "--photos", "p", "--cartoons", "c"],
                            "--kid_subsets", "KID subsets (default: 100)", ["--ouptut", "m.json"],
                            "--output", "m.json", "m.json"),
    "p2c-export": Command("p2c_jax.cli.export", ["--weights", "w", "--format", "onnx", "--dst", "d"],
                          "--precision", "stablehlo only (default: float32)",
                          ["--presicion", "float32"], "--precision", "bfloat16", "bfloat16"),
    "p2c-serve": Command("p2c_jax.cli.serve", ["--weights", "w"], "--device",
                         "device of the face-alignment backend (default: cpu)", ["--prot", "1"],
                         "--port", "9000", 9000),
    "p2c-preprocess": Command("preprocessing.__main__", ["--data_path", "x", "--save_path", "y"],
                              "--cartoons", "align them like photos (default: copy)",
                              ["--al_faces"], "--all_faces", "", True),
}  # fmt: skip


def _parser(command: str) -> argparse.ArgumentParser:
    return importlib.import_module(COMMANDS[command].module).build_parser()


def _help_of(help_: str, flag: str) -> str:
    """The help entry of ``flag`` (its option strings and help) on one line."""
    entries = re.split(r"\n(?=  \S)", help_)
    (entry,) = [e for e in entries if re.match(rf"  (\S+, )*{flag}\b", e)]
    return " ".join(entry.split())


@pytest.mark.parametrize("command", COMMANDS)
def test_help_shows_defaults_once(command: str) -> None:
    c = COMMANDS[command]
    parser = _parser(command)
    assert isinstance(parser, Parser) and parser.prog == command
    help_ = parser.format_help()
    line = _help_of(help_, c.flag)
    assert line.endswith(c.help_end), line
    assert line.count("default") <= 1, line  # a hand-written default is not repeated
    assert "(default: None)" not in help_ and "(default: )" not in help_


def test_help_says_nothing_of_store_true() -> None:
    help_ = _parser("p2c-infer").format_help()
    assert _help_of(help_, "--no_progress") == "--no_progress hide the progress bar"
    train = _parser("p2c-train").format_help()
    assert _help_of(train, "--img_size") == "--img_size IMG_SIZE image size (default: 256)"


@pytest.mark.parametrize("command", COMMANDS)
def test_misspelled_flag_suggests(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    c = COMMANDS[command]
    with pytest.raises(SystemExit) as e:
        _parser(command).parse_args([*c.required, *c.wrong])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"unrecognized arguments: {c.wrong[0]} (did you mean {c.right}?)" in err, err


def test_several_unknown_flags(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        _parser("p2c-train").parse_args(["--iteraton", "5", "--zzzz", "--imgsize=96"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert (
        "unrecognized arguments: --iteraton (did you mean --iteration?) 5 --zzzz "
        "--imgsize=96 (did you mean --img_size?)\n"
    ) in err, err


@pytest.mark.parametrize("command", COMMANDS)
def test_unrelated_flag_has_no_suggestion(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        _parser(command).parse_args([*COMMANDS[command].required, "--zzzz"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments: --zzzz\n" in err and "did you mean" not in err, err


@pytest.mark.parametrize("command", COMMANDS)
def test_correct_command_line_parses(command: str) -> None:
    c = COMMANDS[command]
    parser = _parser(command)
    args = parser.parse_args([*c.required, c.right, *([c.value] if c.value else [])])
    assert getattr(args, parser._option_string_actions[c.right].dest) == c.parsed


def test_train_py_misspelled_flag() -> None:
    r = subprocess.run(
        [sys.executable, "train.py", "--imgsize", "96"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2, r.stderr
    assert "unrecognized arguments: --imgsize (did you mean --img_size?) 96" in r.stderr, r.stderr


def test_infer_with_a_runner_passes_beams_flags_and_refuses_others(capsys) -> None:
    """p2c-infer --runner hands Beam's pipeline options to Beam, and refuses a flag that is
    neither its own nor Beam's, as p2c-preprocess does (Beam itself would drop it)."""
    from p2c_jax.cli.infer import parse

    required = [*COMMANDS["p2c-infer"].required, "--runner", "FnApiRunner"]
    args, beam = parse(_parser("p2c-infer"), [*required, "--direct_num_workers", "2"])
    assert args.runner == "FnApiRunner" and beam == ["--direct_num_workers", "2"]
    with pytest.raises(SystemExit) as e:
        parse(_parser("p2c-infer"), [*required, "--direct_num_worker", "2", "--wokers", "1"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert (
        "unrecognized arguments: --direct_num_worker 2 --wokers (did you mean --workers?) 1" in err
    )
