"""``p2c-train --compile_only``: a batch that does not split over the chips, and the search
for the largest batch that fits (the refusals of both commands: test_compile_only.py)."""

from __future__ import annotations

import dataclasses
import json

import pytest
from helpers.ci_required import needs_libtpu

from p2c_jax import topology
from p2c_jax.cli import train


@pytest.mark.tpu
@needs_libtpu()
@pytest.mark.parametrize("batch", ["3", "6"])
def test_batch_must_split_over_the_chips(batch, tmp_path, capsys):
    code = train.main(
        [
            "--compile_only",
            "--workdir",
            str(tmp_path / "run"),
            "--topology",
            "v5e-4",
            "--batch_size",
            batch,
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "multiple of the 4 devices" in err and not (tmp_path / "run").exists()


def test_max_batch_search_compiles_until_the_largest_that_fits(tmp_path, capsys, monkeypatch):
    """``--max_batch_search`` on fake compiles of a step that fits up to 6 images per chip,
    refused by the compiler above that as XLA:TPU does: the step compiled for each batch the
    search tries (the first one the flags' batch), each reported as a line, the largest in
    the report."""
    import jax

    from p2c_jax import aot, aot_report
    from p2c_jax.train import compile_report

    largest, compiled_batches = 6, []

    def fake_compile_step(cfg, mesh, specs=None):
        compiled_batches.append(cfg.batch_size)
        need = f"{cfg.batch_size * 1000 / 1024:.2f}K"
        refused = aot.Refused(
            f"RESOURCE_EXHAUSTED: Ran out of memory in memory space hbm. Used {need} of 5.86K hbm."
        )
        return compile_report.CompiledStep(
            None, (), refused if cfg.batch_size > largest else None, 0.0, 1.5
        )

    def fake_costs(compiled, devices, precision, batch_per_chip, num_slices=1):
        total = 1000 * batch_per_chip
        memory = {f.name: 0 for f in dataclasses.fields(aot.Memory)}
        if compiled is not None:  # refused: what the compiler said, as aot_report.costs
            return {
                "usable_bytes": largest * 1000,
                "batch_per_chip": batch_per_chip,
                "memory_bytes": {**memory, "total": compiled.required_bytes},
                "fits": False,
                "refused": compiled.message,
            }
        return {
            "chips": 1,
            "hosts": 1,
            "chip": "v5e",
            "hbm_bytes": largest * 1000,
            "usable_bytes": largest * 1000,
            "global_batch": batch_per_chip,
            "batch_per_chip": batch_per_chip,
            "memory_bytes": {**memory, "total": total},
            "fits": total <= largest * 1000,
            "max_batch_per_chip": None,
            "collectives": [],
            "flops_per_step": 1.0,
            "bytes_accessed_per_step": 1.0,
            "roofline_seconds": 1.0,
            "images_per_second": 1.0,
        }

    # no compiler needed, and the compile cache left on for the other tests
    monkeypatch.setattr(train, "start_compile_only", lambda name: None)
    monkeypatch.setattr(topology, "devices", lambda name, n: jax.devices()[:1])
    monkeypatch.setattr(compile_report, "compile_step", fake_compile_step)
    monkeypatch.setattr(aot_report, "costs", fake_costs)
    argv = ["--topology", "v5e-4", "--batch_size", "2", "--max_batch_search"]
    assert train.main(["--compile_only", "--workdir", str(tmp_path), *argv]) == 0
    assert compiled_batches == [2, 4, 6, 7]  # 2 and its double, the line's 6, then one more
    report = json.loads((tmp_path / "compile_report.json").read_text())
    assert report["max_batch_per_chip"] == largest
    assert [t["batch_per_chip"] for t in report["max_batch_search"]] == compiled_batches
    out = capsys.readouterr().out
    refused = "batch 7 per chip: 6.84 KiB per chip, does not fit (the compiler refused it)"
    assert f"{refused} (compiled in 1.5 s)" in out
    assert (
        report["max_batch_search"][-1]["refused"] and not report["max_batch_search"][-2]["refused"]
    )
    assert "6 per chip fits" in out
