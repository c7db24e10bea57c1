"""``p2c-train --compile_only`` and ``p2c-infer --compile_only``'s refusals: each one line,
exit 2, nothing compiled or written; p2c-infer's photos still need inputs and weights."""

from __future__ import annotations

from pathlib import Path

import pytest

from p2c_jax import topology
from p2c_jax.cli import infer, train
from p2c_jax.nn.models import NetSpec

# command -> (its main, the flag of the folder the report goes to)
COMMANDS = {"p2c-train": (train.main, "--workdir"), "p2c-infer": (infer.main, "--output")}


def _refused(command: str, argv: list[str], tmp_path: Path, capsys) -> str:
    main, folder = COMMANDS[command]
    code = main(["--compile_only", folder, str(tmp_path / "out"), *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert not (tmp_path / "out").exists()
    return err


@pytest.mark.parametrize("command", COMMANDS)
def test_compile_only_needs_a_topology(command, tmp_path, capsys):
    assert "--topology" in _refused(command, [], tmp_path, capsys)


@pytest.mark.parametrize("command", COMMANDS)
def test_unknown_topology_lists_the_known_ones(command, tmp_path, capsys):
    err = _refused(command, ["--topology", "v5e-3"], tmp_path, capsys)
    assert "unknown topology 'v5e-3'" in err
    names = ("v4-8", "v5e-16", "v5litepod-256", "v5p-128", "v6e-64", "h100-8", "h200-1")
    assert all(n in err for n in names)


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize(("name", "extra"), [("v5e-16", "TPU_EXTRA"), ("h100-8", "CUDA_EXTRA")])
def test_without_the_compiler_names_the_install(
    command, name, extra, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(topology, "has_libtpu", lambda: False)
    monkeypatch.setattr(topology, "has_cuda_plugin", lambda: False)
    err = _refused(command, ["--topology", name], tmp_path, capsys)
    assert getattr(topology, extra) in err and "pip install" in err


def test_photos_still_need_inputs_and_weights(tmp_path, capsys):
    with pytest.raises(SystemExit):
        infer.main(["--output", str(tmp_path / "out"), "--weights", "w"])
    assert "required: inputs" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        infer.main(["x.jpg", "--output", str(tmp_path / "out")])
    assert "required: --weights" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flags", "spec"),
    [
        (["--ch", "16", "--img_size", "128"], NetSpec("generator", 16, img_size=128)),
        (["--light", "false"], NetSpec("generator", 32, img_size=256, light=False)),
        (["--weights", "WEIGHTS", "--img_size", "64"], NetSpec("generator", 8, img_size=64)),
    ],
)
def test_p2c_infer_compiles_the_generator_it_would_run(flags, spec, weights, capsys, monkeypatch):
    """The generator compiled: ``--weights``' (the conftest's ngf 8 file, light), else
    ``--ch`` and ``--light``'s, at ``--img_size``; with the flags' batch and topology."""
    from p2c_jax import inference_report

    asked = []

    def no_compile(spec, precision, name, num_slices, batch_size, max_batch_search):
        asked.append((spec, precision, name, num_slices, batch_size, max_batch_search))
        raise ValueError("compiled nothing")

    monkeypatch.setattr(infer, "start_compile_only", lambda name: None)
    monkeypatch.setattr(inference_report, "report", no_compile)
    flags = [str(weights) if f == "WEIGHTS" else f for f in flags]
    argv = ["--compile_only", "--topology", "v5e-4", "-o", "out", "--batch_size", "3", *flags]
    assert infer.main(argv) == 2 and "compiled nothing" in capsys.readouterr().err
    assert asked == [(spec, "float32", "v5e-4", 1, 3, False)]
