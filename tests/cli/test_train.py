"""``p2c-train --compile_only``'s refusals: each one line, exit 2, nothing compiled or
written."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.ci_required import needs_libtpu

from p2c_jax import topology
from p2c_jax.cli import train


def _refused(argv: list[str], tmp_path: Path, capsys) -> str:
    code = train.main(["--compile_only", "--workdir", str(tmp_path / "run"), *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert not (tmp_path / "run").exists()
    return err


def test_compile_only_needs_a_topology(tmp_path, capsys):
    assert "--topology" in _refused([], tmp_path, capsys)


def test_unknown_topology_lists_the_known_ones(tmp_path, capsys):
    err = _refused(["--topology", "v5e-3"], tmp_path, capsys)
    assert "unknown TPU topology 'v5e-3'" in err
    assert all(n in err for n in ("v4-8", "v5e-16", "v5litepod-256", "v5p-128", "v6e-64"))


def test_without_libtpu_names_the_install(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(topology, "has_libtpu", lambda: False)
    err = _refused(["--topology", "v5e-16"], tmp_path, capsys)
    assert topology.TPU_EXTRA in err and 'pip install "jax[tpu]==' in err


@pytest.mark.tpu
@needs_libtpu()
@pytest.mark.parametrize("batch", ["3", "6"])
def test_batch_must_split_over_the_chips(batch, tmp_path, capsys):
    err = _refused(["--topology", "v5e-4", "--batch_size", batch], tmp_path, capsys)
    assert "multiple of the 4 devices" in err
