"""The training step compiled for TPU slices on this host: the table of docs/tpu.md.

    python bench/topologies.py                         # v4-8 v5e-16 v5e-256 v5p-128 v6e-16,
                                                       # light and full, float32 and bfloat16
    python bench/topologies.py --topologies v5e-16 --nets light --precisions float32 \\
        --json /tmp/rows.json -- --faceid_weight 0     # one row; flags after -- go to p2c-train

Each row is one ``p2c-train --compile_only --topology NAME`` (``train.py`` of this checkout) in
a process of its own, at ``--batch_per_chip`` images per chip: its compile time, per-chip
memory against the chip's HBM, the all-reduced bytes per step, the roofline and the images per
second it bounds, and this host's peak RSS for the compile. These are compile results, not step
times: nothing runs on a TPU. A row that passes ``--timeout`` or fails is listed with why.
Needs libtpu (``pip install "jax[tpu]==<your jax>"``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from p2c_jax import topology as topo  # noqa: E402 - the checkout's package, as accelerator.py

TOPOLOGIES = ("v4-8", "v5e-16", "v5e-256", "v5p-128", "v6e-16")
GIB, MB = 2**30, 1e6


def compile_row(
    topology: str, light: bool, precision: str, args: argparse.Namespace, extra: list[str]
) -> dict:
    """One ``p2c-train --compile_only`` run: its report, with the host's peak RSS, or the
    reason it gave none."""
    row = {"topology": topology, "light": light, "precision": precision}
    with tempfile.TemporaryDirectory() as workdir:
        cmd = [
            sys.executable,
            str(ROOT / "train.py"),
            "--compile_only",
            "--topology",
            topology,
            f"--light={light}",
            f"--ch={args.ch}",
            f"--img_size={args.img_size}",
            f"--batch_size={args.batch_per_chip * topo.parse(topology).chips}",
            f"--precision={precision}",
            "--workdir",
            workdir,
            *(["--max_batch_search"] if args.max_batch_search else []),
            *extra,
        ]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        log = Path(workdir) / "out.log"
        start = time.perf_counter()
        with log.open("wb") as out:
            proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        timer = threading.Timer(args.timeout, proc.kill)
        timer.start()
        _, status, usage = os.wait4(proc.pid, 0)  # the child's own peak RSS
        timer.cancel()
        code = os.waitstatus_to_exitcode(status)
        row["wall_seconds"] = round(time.perf_counter() - start, 1)
        row["host_peak_rss_bytes"] = usage.ru_maxrss * 1024
        # the batches a --max_batch_search tried, or the last line: what a stopped row leaves
        lines = log.read_text(errors="replace").strip().splitlines()
        said = "; ".join([x for x in lines if x.startswith("batch ")] or lines[-1:])
        if row["wall_seconds"] >= args.timeout:
            return {**row, "error": f"stopped after {args.timeout:.0f} s: {said}"}
        reports = list(Path(workdir).rglob("compile_report.json"))
        if code or not reports:
            return {**row, "error": f"exit {code}: {said}"}
        report = json.loads(reports[0].read_text())
    return {**row, **report}


def markdown(rows: list[dict]) -> str:
    """The rows as docs/tpu.md's table."""
    lines = [
        "| topology | net | precision | compile | GiB per chip | fits | max batch per chip "
        "| all-reduce MB per step | roofline ms | images/s per slice | host peak RSS |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        head = f"| `{r['topology']}` | {'light' if r['light'] else 'full'} | {r['precision']} "
        if "error" in r:
            lines.append(head + f"| {r['error']} | | | | | | | |")
            continue
        best = r.get("max_batch_per_chip")
        best = best if best is not None else "not searched"
        if "refused" in r:  # the compiler would not build it: no program to read
            need = r["memory_bytes"]["total"]
            lines.append(
                head + f"| {r['compile_seconds']:.0f} s "
                f"| {'?' if need is None else f'{need / GIB:.2f}'} | no (refused) | {best} "
                f"| | | | {r['host_peak_rss_bytes'] / 1e9:.1f} GB |"
            )
            continue
        reduced = sum(c["bytes"] for c in r["collectives"] if c["kind"] == "all-reduce")
        lines.append(
            head + f"| {r['compile_seconds']:.0f} s "
            f"| {r['memory_bytes']['total'] / GIB:.2f} | {'yes' if r['fits'] else 'no'} "
            f"| {best} | {reduced / MB:.1f} "
            f"| {r['roofline_seconds'] * 1e3:.1f} | {r['images_per_second']:.0f} "
            f"| {r['host_peak_rss_bytes'] / 1e9:.1f} GB |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--topologies", nargs="+", default=list(TOPOLOGIES))
    p.add_argument("--nets", nargs="+", choices=("light", "full"), default=["light", "full"])
    p.add_argument(
        "--precisions", nargs="+", choices=("float32", "bfloat16"), default=["float32", "bfloat16"]
    )
    p.add_argument("--ch", type=int, default=32)
    p.add_argument("--img_size", type=int, default=256)
    p.add_argument("--batch_per_chip", type=int, default=1)
    p.add_argument("--max_batch_search", action="store_true")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per row")
    p.add_argument("--json", type=Path, help="also write the rows here")
    args = p.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    rows = []
    for topology in args.topologies:
        for net in args.nets:
            for precision in args.precisions:
                row = compile_row(topology, net == "light", precision, args, extra)
                said = ("topology", "light", "precision", "compile_seconds", "fits", "error")
                print(json.dumps({k: row.get(k) for k in said}), flush=True)
                rows.append(row)
                if args.json:
                    args.json.write_text(json.dumps(rows, indent=1))
    print(markdown(rows))
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
