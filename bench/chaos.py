"""Faults a long run meets, on a tiny run (96 px, ch 4, batch 1, --save_freq 1, the tests' nets):

1. ``--kills`` random ``kill -9``s of ``p2c-train``, each landing in the start (restore and
   compile), mid-step or mid-save (an ``*.orbax-checkpoint-tmp*`` folder present), each followed
   by ``--resume true``; the final state against a straight run (arrays, differing arrays) and
   TensorBoard's scalars (each step exactly once);
2. the newest checkpoint damaged (``--damage``: ``truncate`` an array file of train_state,
   delete nets' ``_METADATA``, ``garble`` nets' data file): the run resumes from the one before
   (it moves the damaged one to ``N.corrupt-<time>``) and ends equal to the straight run;
3. a small disk (``--disk``): ``tmpfs`` (root: a tmpfs of 2.5 checkpoints, ENOSPC) or ``efbig``
   (RLIMIT_FSIZE under a checkpoint's largest file, SIGXFSZ ignored as Python does): one line,
   exit status 3, at most 20 lines of output, the last complete checkpoint intact.

    python bench/chaos.py [--kills 5] [--seed 0] [--iteration 10]
                          [--damage truncate,metadata,garble] [--disk tmpfs|efbig|none]
                          [--json chaos.json]

Prints a markdown table and the figures as JSON (docs/reliability.md).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DAMAGES = ("truncate", "metadata", "garble")
PHASES = ("start", "step", "save")
TMP = "orbax-checkpoint-tmp"
STEP_LINE = re.compile(r"^\[\s*(\d+)/\s*\d+\]")


def train_cmd(dataset: Path, workdir: Path, iteration: int, **flags) -> list[str]:
    """``train.py`` with the tests' tiny config, a checkpoint every step, all of them kept."""
    base = {
        "dataset": dataset,
        "workdir": workdir,
        "img_size": 96,
        "ch": 4,
        "batch_size": 1,
        "iteration": iteration,
        "faceid_weight": 0,
        "print_freq": 0,
        "save_freq": 1,
        "keep": 1000,
        "log_every": 1,
        "seed": 3,
        "progress": "false",
    }
    cmd = [sys.executable, str(ROOT / "train.py")]
    for k, v in {**base, **flags}.items():
        cmd += [f"--{k}", str(v)]
    return cmd


class Run:
    """``cmd`` in a process of its own; its output collected by a thread."""

    def __init__(self, cmd: list[str], limit_bytes: int | None = None):
        if limit_bytes:  # POSIX sh: 512-byte blocks; no fork of this (JAX's) process
            cmd = ["sh", "-c", f'ulimit -f {limit_bytes // 512} && exec "$@"', "sh", *cmd]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.t0, self.lines = time.time(), []
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def steps(self) -> list[int]:
        return [int(m.group(1)) for m in map(STEP_LINE.match, list(self.lines)) if m]

    def wait(self, timeout: float = 1800) -> int:
        rc = self.proc.wait(timeout)
        self._reader.join()
        return rc


def _writing(workdir: Path, since: float) -> list[int]:
    """The steps whose checkpoint's temporary folder, made after ``since``, is there (a killed
    run's may stay until the next save of that step)."""
    try:
        found = [p for p in (workdir / "checkpoints").iterdir() if TMP in p.name]
        return [int(p.name.split(".")[0]) for p in found if p.stat().st_mtime >= since]
    except FileNotFoundError:  # not made yet, or renamed meanwhile
        return []


def complete(workdir: Path) -> list[int]:
    """The steps of the complete checkpoints."""
    ckpts = workdir / "checkpoints"
    return (
        sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit()) if ckpts.is_dir() else []
    )


def kill_once(cmd: list[str], workdir: Path, aim: str, rng: random.Random) -> dict:
    """One run of ``cmd`` killed with SIGKILL at ``aim`` (``PHASES``): ``save`` during its
    second save, ``step`` 1 or 2 steps in; where it landed."""
    run = Run(cmd)
    landed, armed, writing, first = None, None, [], None
    after = rng.randint(1, 2)
    while run.proc.poll() is None:
        started = any("training start" in line for line in list(run.lines))
        steps = run.steps()
        writing = _writing(workdir, run.t0)
        first = first or min(writing, default=None)
        if aim == "save" and writing and max(writing) > first:
            landed = "save"  # its second save: the first is complete (Orbax waits for it)
        elif aim == "start" and started:
            armed = armed or time.time() + rng.uniform(0, 0.5)
            if time.time() >= armed:
                landed = "start" if not steps else "step"
        elif aim == "step" and len(steps) >= after:
            armed = armed or time.time() + rng.uniform(0, 0.3)
            if time.time() >= armed:
                landed = "save" if writing else "step"
        if landed:
            run.proc.kill()
            break
        time.sleep(0.001)  # a save's temporary folder lasts far longer; leave the run a core
    run.wait()
    done = complete(workdir)
    return {
        "aim": aim,
        "landed": landed or "ended first",
        "writing": writing if landed == "save" else [],
        "newest_complete": done[-1] if done else None,
        "seconds": round(time.time() - run.t0, 1),
    }


def kill_runs(
    cmd: list[str], workdir: Path, kills: int, seed: int, aims: list[str] | None = None
) -> list[dict]:
    """``kills`` runs of ``cmd`` (resuming) killed at random phases, at least one mid-save, or
    at the phases ``aims`` (of ``PHASES``) in that order."""
    rng = random.Random(seed)
    if aims is None:
        aims = ["save", *rng.choices(PHASES, k=kills - 1)]
        rng.shuffle(aims)
    return [kill_once([*cmd, "--resume", "true"], workdir, aim, rng) for aim in aims]


def finish(cmd: list[str], limit_bytes: int | None = None) -> tuple[int, list[str]]:
    """``cmd`` resumed to its end: (exit status, output lines)."""
    run = Run([*cmd, "--resume", "true"], limit_bytes)
    return run.wait(), run.lines


def arrays(step_dir: Path) -> dict[str, np.ndarray]:
    """Every array of checkpoint ``step_dir``: nets and train state."""
    import jax
    import orbax.checkpoint as ocp

    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
        items = ckptr.restore(
            step_dir,
            ocp.args.Composite(
                nets=ocp.args.StandardRestore(), train_state=ocp.args.StandardRestore()
            ),
        )
    flat = jax.tree_util.tree_flatten_with_path({"nets": items.nets, "ts": items.train_state})[0]
    return {jax.tree_util.keystr(kp): np.asarray(x) for kp, x in flat}


def compare(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict:
    """How many arrays, how many differ (bit for bit, or missing on one side)."""
    differ = [k for k in a.keys() | b.keys() if k not in a or k not in b or not _same(a[k], b[k])]
    return {"arrays": len(a), "differing": len(differ)}


def _same(x: np.ndarray, y: np.ndarray) -> bool:
    return x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()


def scalar_steps(workdir: Path, steps: int) -> dict:
    """TensorBoard's scalars of steps 1..``steps``: how many steps are missing or logged more
    than once, over every tag, reading every event file in name order."""
    from p2c_jax.train.summary import read_scalars

    counts: dict[tuple[str, int], int] = {}
    for tag, step, _ in read_scalars(workdir / "tensorboard"):
        counts[tag, step] = counts.get((tag, step), 0) + 1
    tags = {tag for tag, _ in counts}
    want = {(t, s) for t in tags for s in range(1, steps + 1)}
    return {
        "tags": len(tags),
        "missing": len({s for t, s in want if (t, s) not in counts}),
        "duplicated": len({s for (t, s), n in counts.items() if n > 1}),
        "event_files": len(list((workdir / "tensorboard").glob("events.out.tfevents.*"))),
    }


def damage(step_dir: Path, kind: str, rng: random.Random) -> Path:
    """Damage checkpoint ``step_dir`` the ``kind`` way (``DAMAGES``); the file damaged."""
    if kind == "metadata":
        target = step_dir / "nets" / "_METADATA"
        target.unlink()
        return target
    item = "train_state" if kind == "truncate" else "nets"
    target = max((step_dir / item / "ocdbt.process_0" / "d").iterdir(), key=os.path.getsize)
    size = target.stat().st_size
    if kind == "truncate":
        os.truncate(target, size // 2)
    else:
        target.write_bytes(rng.randbytes(size))
    return target


def damaged_resume(cmd: list[str], workdir: Path, kind: str, last: int, seed: int) -> dict:
    """Checkpoint ``last`` damaged ``kind``; the run resumed from the one before, to ``last``."""
    damaged = damage(workdir / "checkpoints" / str(last), kind, random.Random(seed))
    rc, out = finish(cmd)
    said = [line for line in out if "does not restore" in line]
    return {
        "damage": kind,
        "file": str(damaged.relative_to(workdir)),
        "rc": rc,
        "said": said[0] if said else None,
        "resumed_from": _resumed_from(out),
        "moved": sorted(p.name for p in (workdir / "checkpoints").glob(f"{last}.corrupt-*")),
        "tail": out[-5:] if rc else [],
    }


def _resumed_from(out: list[str]) -> int | None:
    found = [re.search(r"at step (\d+)$", line) for line in out if "resumed from" in line]
    return int(found[-1].group(1)) if found and found[-1] else None


def small_disk(cmd: list[str], workdir: Path, limit_bytes: int | None) -> dict:
    """``cmd`` resumed on a small disk (``limit_bytes``: a file-size limit instead): its exit
    status, output lines and the line saying why it stopped."""
    rc, out = finish(cmd, limit_bytes)
    done = complete(workdir)
    return {
        "rc": rc,
        "lines": len(out),
        "tracebacks": sum("Traceback" in line for line in out),
        "said": [line for line in out if line.startswith("error:")],
        "warnings": [line for line in out if line.startswith("warning:")],
        "last_complete": done[-1] if done else None,
    }


def _mount_tmpfs(where: Path, mb: int) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={mb}m", "tmpfs", str(where)], capture_output=True
    )
    return res.returncode == 0


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _table(r: dict) -> str:
    rows = ["| what | figure |", "|---|---|"]
    for k in r["kills"]:
        rows.append(
            f"| kill -9 aimed at {k['aim']} | landed {k['landed']} (writing {k['writing']}), "
            f"newest complete checkpoint {k['newest_complete']}, {k['seconds']} s after start |"
        )
    f = r["final"]
    rows.append(f"| final state vs straight run | {f['arrays']} arrays, {f['differing']} differ |")
    tb = r["tensorboard"]
    rows.append(
        f"| TensorBoard scalars, steps 1..{r['iteration']} | {tb['tags']} tags, "
        f"{tb['missing']} steps missing, {tb['duplicated']} logged twice, "
        f"{tb['event_files']} event files |"
    )
    for d in r["damage"]:
        rows.append(
            f"| damaged newest checkpoint: {d['damage']} | rc {d['rc']}, resumed from "
            f"{d['resumed_from']}, moved {d['moved']}, final {d.get('final')} |"
        )
    if r.get("disk"):
        d = r["disk"]
        rows.append(
            f"| small disk ({d['mode']}) | rc {d['rc']}, {d['lines']} lines, {d['tracebacks']} "
            f"tracebacks, last complete {d['last_complete']}, intact {d.get('intact')} |"
        )
        rows += [f"| &nbsp; said | `{line}` |" for line in d["said"] + d["warnings"]]
    return "\n".join(rows)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kills", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--iteration", type=int, default=10)
    p.add_argument("--damage", default=",".join(DAMAGES), help="comma-separated, or none")
    p.add_argument("--disk", choices=["tmpfs", "efbig", "none"], default="tmpfs")
    p.add_argument("--json", default=None, help="also write the figures here")
    p.add_argument("--keep_dir", action="store_true", help="keep the work folders")
    args = p.parse_args(argv)
    kinds = [k for k in args.damage.split(",") if k and k != "none"]
    from p2c_jax.data.demo import build_demo

    tmp = Path(tempfile.mkdtemp(prefix="p2c-chaos-"))
    result = {"iteration": args.iteration, "kills_asked": args.kills, "seed": args.seed}
    try:
        dataset = build_demo(tmp / "demo", n_train=6, n_test=2, size=48)
        n = args.iteration
        straight, chaos = tmp / "straight", tmp / "chaos"
        t0 = time.time()
        rc, out = finish(train_cmd(dataset, straight, n))
        assert rc == 0, out[-20:]
        result["straight_s"] = round(time.time() - t0, 1)
        want = {s: arrays(straight / "checkpoints" / str(s)) for s in range(1, n + 1)}
        cmd = train_cmd(dataset, chaos, n)
        result["kills"] = kill_runs(cmd, chaos, args.kills, args.seed)
        rc, out = finish(cmd)
        assert rc == 0, out[-20:]
        result["final"] = compare(want[n], arrays(chaos / "checkpoints" / str(n)))
        result["tensorboard"] = scalar_steps(chaos, n)
        result["damage"] = []
        for i, kind in enumerate(kinds):
            work = tmp / f"damage-{kind}"
            shutil.copytree(chaos, work)
            d = damaged_resume(train_cmd(dataset, work, n), work, kind, n, args.seed + i)
            if d["rc"] == 0:
                d["final"] = compare(want[n], arrays(work / "checkpoints" / str(n)))
            result["damage"].append(d)
        if args.disk != "none":
            result["disk"] = _disk(args.disk, dataset, straight, tmp, n, want)
    finally:
        for m in tmp.glob("disk*"):
            subprocess.run(["umount", str(m)], capture_output=True)
        if not args.keep_dir:
            shutil.rmtree(tmp, ignore_errors=True)
    print(_table(result))
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return result


def _disk(mode: str, dataset: Path, straight: Path, tmp: Path, n: int, want: dict) -> dict:
    """The small-disk run: a fresh run on a tmpfs of 2.5 checkpoints, or a resumed run from
    step n // 2 under a file-size limit below a checkpoint's largest file."""
    ckpt = straight / "checkpoints" / "1"
    where = tmp / "disk"
    limit = None
    if mode == "tmpfs":
        mb = int(2.5 * _size(ckpt) / 2**20) + 1
        if not _mount_tmpfs(where, mb):
            mode = "efbig"  # not root: the file-size limit instead
    if mode == "efbig":
        work = where / "w"
        work.mkdir(parents=True)
        keep = n // 2
        shutil.copytree(straight / "checkpoints" / str(keep), work / "checkpoints" / str(keep))
        limit = max(p.stat().st_size for p in ckpt.rglob("*") if p.is_file()) // 2
    else:
        work = where / "w"
    cmd = train_cmd(dataset, work, n, print_freq=2)
    d = {"mode": mode, **small_disk(cmd, work, limit)}
    if d["last_complete"]:
        step = d["last_complete"]
        d["intact"] = compare(want[step], arrays(work / "checkpoints" / str(step)))
    return d


if __name__ == "__main__":
    main()
