"""The training loop: exact resume, SIGTERM, the CLI end to end and its export.

Both runs use the same nets, hyper-parameters and batch shape, so the CLI's subprocesses find
the step this process compiled in the session's persistent compilation cache (conftest).
"""

from __future__ import annotations

import contextlib
import errno
import importlib.util
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from helpers.ci_required import require
from helpers.damage import KINDS, damage
from helpers.events import scalars

from p2c_jax.data.demo import build_demo
from p2c_jax.nn.models import TRAINING_NETS
from p2c_jax.parallel import host_value, make_mesh
from p2c_jax.pytorch import nets as torch_port
from p2c_jax.train import loop as trainer
from p2c_jax.train.config import Config
from p2c_jax.weights import checkpoint

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return build_demo(tmp_path_factory.mktemp("data") / "demo", n_train=6, n_test=2, size=48)


SIZE, CH, ITERATION = 96, 4, 4  # 96: the smallest size the 7-layer discriminator takes


def _config(dataset: Path, workdir: Path, **kw) -> Config:
    base = dict(
        dataset=str(dataset),
        workdir=str(workdir),
        iteration=ITERATION,
        batch_size=1,
        save_freq=2,
        print_freq=0,
        faceid_weight=0,
        img_size=SIZE,
        ch=CH,
        keep=5,
        log_every=1,
        progress=False,
        seed=3,
    )
    return Config.flat(**{**base, **kw})


@contextlib.contextmanager
def _preempted_after(step: int):
    """``train`` stopped as a preemption would stop it, after ``step``."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trainer.Stop, "requested", lambda self, at: at >= step)
        yield


def _final(workdir: Path) -> dict[str, np.ndarray]:
    """Every array of the latest checkpoint: nets (params + spectral) and train state."""
    return _load(ROOT / "bench" / "chaos.py").arrays(checkpoint.resolve(workdir))


def _assert_same_arrays(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    """``a`` and ``b`` (two ``_final``s) hold the same arrays, bit for bit."""
    assert a.keys() == b.keys() and len(a) > 1000
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.fixture(scope="module")
def straight_workdir(dataset, tmp_path_factory) -> Path:
    """The workdir of a run trained without a stop: checkpoints 2 and 4 (copy it to change it)."""
    workdir = tmp_path_factory.mktemp("straight")
    assert trainer.train(_config(dataset, workdir)) == 4
    assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4"]
    return workdir


@pytest.fixture(scope="module")
def straight(straight_workdir) -> dict[int, dict[str, np.ndarray]]:
    """The arrays of steps 2 and 4 of ``straight_workdir``: the reference of the resumes (4)
    and of the TFRecords run (2)."""
    return {step: _final(straight_workdir / "checkpoints" / str(step)) for step in (2, 4)}


@pytest.mark.slow
@pytest.mark.xdist_group("trainer")
def test_resume_continues_exactly(dataset, straight, tmp_path, caplog):
    """4 steps straight equal 2 steps, stop, resume, 2 steps (lr decay from step 3 included).
    The runs after the first in this process compile nothing: their steps compare equal, so
    they find the staged programs in jax's cache, and the restored state is placed as a fresh
    one."""
    with _preempted_after(2), jax.log_compiles(), caplog.at_level("WARNING"):
        assert trainer.train(_config(dataset, tmp_path / "split")) == 2
    assert sorted(os.listdir(tmp_path / "split" / "checkpoints")) == ["2"]
    with pytest.raises(trainer.TrainError, match="--resume true"):
        trainer.train(_config(dataset, tmp_path / "split"))
    with jax.log_compiles(), caplog.at_level("WARNING"):
        assert trainer.train(_config(dataset, tmp_path / "split", resume=True)) == 4
    _assert_same_arrays(straight[4], _final(tmp_path / "split"))
    compiled = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Compiling")]
    assert not compiled, compiled


@pytest.mark.slow
@pytest.mark.xdist_group("trainer")
@pytest.mark.parametrize("kind", KINDS)
def test_resume_moves_a_damaged_checkpoint_aside(
    dataset, straight_workdir, straight, tmp_path, kind
):
    """Step 4 damaged (issue 28's three ways): --resume moves it aside to 4.corrupt-<UTC time>
    with one line and restores step 2's arrays exactly (as a multiset: the run's state has
    another layout than the checkpoint's items)."""
    workdir = tmp_path / "run"
    shutil.copytree(straight_workdir, workdir)
    damage(workdir / "checkpoints" / "4", kind)
    logs: list[str] = []
    run = trainer.setup(
        _config(dataset, workdir, resume=True), mesh=make_mesh(jax.devices()[:1]), log=logs.append
    )
    try:
        assert run.start == 2 and run.manager.all_steps() == [2]
        assert _leaves(run.state) == _leaves(straight[2])
    finally:
        run.manager.close()
    (aside,) = (workdir / "checkpoints").glob("4.corrupt-*")
    assert sorted(os.listdir(workdir / "checkpoints")) == ["2", aside.name]
    assert re.fullmatch(r"4\.corrupt-\d{8}T\d{6}", aside.name)
    (line,) = [m for m in logs if "does not restore" in m]
    assert re.fullmatch(
        rf"p2c-train: checkpoint step 4 does not restore \(.+\); moved it to "
        rf"{re.escape(str(aside))}; resuming from step 2",
        line,
    ), line


def _leaves(tree) -> list[tuple[str, bytes]]:
    """Every array of ``tree`` as (dtype, bytes), sorted: equal for equal values in any layout."""
    leaves = [np.asarray(host_value(x)) for x in jax.tree.leaves(tree)]
    return sorted((x.dtype.str, x.tobytes()) for x in leaves)


@pytest.mark.slow
@pytest.mark.xdist_group("trainer")
def test_workdir_on_gcs_resumes_exactly_and_exports(dataset, straight, tmp_path, gcs_bucket):
    """A gs:// workdir (a fake GCS server on 127.0.0.1): 2 steps, preempted, resumed for 2 more,
    equal to 4 straight local steps; sample grids, TensorBoard events and checkpoints land in
    the bucket; convert_weights.py --src that workdir exports a .pt the original nets load."""
    workdir = gcs_bucket / "run"
    cfg = _config(dataset, str(workdir), print_freq=2)
    with _preempted_after(2):
        assert trainer.train(cfg) == 2
    assert trainer.train(_config(dataset, str(workdir), print_freq=2, resume=True)) == 4
    _assert_same_arrays(straight[4], _final(workdir))
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["2", "4"]
    assert (workdir / Path(str(dataset)).name / "img" / "A2B_0000002.png").exists()
    assert not list(Path.cwd().glob("gs:*")) and not (tmp_path / "gs:").exists()

    pt = tmp_path / "exported.pt"
    res = subprocess.run(
        [sys.executable, str(ROOT / "convert_weights.py"), "--src", str(workdir), "--dst", str(pt)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    sd = torch.load(pt, weights_only=True)
    torch_port.ResnetGenerator(CH, SIZE, True).load_state_dict(sd["genA2B"], strict=True)


def test_unsupported_workdir_scheme_names_the_flag(dataset, tmp_path, monkeypatch):
    """--workdir memory://bar/w is refused before anything is written (it once trained into a
    local folder named memory:)."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(trainer.TrainError, match="--workdir memory://bar/w: unsupported scheme"):
        trainer.train(_config(dataset, "memory://bar/w"))
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
@pytest.mark.xdist_group("trainer")
def test_kill_9_twice_resumes_exactly(dataset, straight, tmp_path):
    """bench/chaos.py, short: train.py killed with SIGKILL twice (while it restores and
    compiles, then while Orbax writes a checkpoint), each time resumed: it ends equal to an uninterrupted run (saving at other steps
    changes no array) and TensorBoard holds each step once. The bench's other faults run here
    in one process each (a start-up of train.py costs about a minute of CI): a file-size limit
    under a save (``test_failed_checkpoint_save_stops_the_run_with_one_line``), each kind of
    damage to the newest step (``test_resume_moves_a_damaged_checkpoint_aside``); the bench runs
    them all through train.py (docs/reliability.md)."""
    chaos = _load(ROOT / "bench" / "chaos.py")
    work = tmp_path / "chaos"
    cmd = chaos.train_cmd(dataset, work, ITERATION)
    kills = chaos.kill_runs(cmd, work, 2, seed=0, aims=["start", "save"])  # the start is cheap
    assert [k["landed"] for k in kills] == ["start", "save"], kills
    rc, out = chaos.finish(cmd)
    assert rc == 0, out[-30:]
    _assert_same_arrays(straight[4], _final(work))
    _assert_each_step_once(work / "tensorboard")


def _assert_each_step_once(logdir: Path) -> None:
    logged = [(tag, step) for tag, step, _ in scalars(logdir)]
    tags = {tag for tag, _ in logged}
    assert len(tags) > 3 and sorted(logged) == sorted(
        (t, s) for t in tags for s in range(1, ITERATION + 1)
    ), logged


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.xdist_group("trainer")
@pytest.mark.parametrize("record_format", ["tfrecords", "array_record"])
def test_trains_from_records_as_from_folders(dataset, straight, tmp_path, record_format):
    """A dataset written as TFRecords or ArrayRecord shards (read through Grain) by
    preprocessing trains exactly like its folders."""
    if record_format == "tfrecords":
        write_dataset = require("preprocessing.tfrecords", "the preprocess extra").write_dataset
        out = records = tmp_path / "records"
    else:
        require("grain", "the grain extra")
        from preprocessing.array_record import write_dataset

        records = tmp_path / "records"
        out = records / "array_record"
    write_dataset(dataset, out)
    assert not list(records.rglob("*.png"))
    with _preempted_after(2):
        assert trainer.train(_config(records, tmp_path / record_format)) == 2
    _assert_same_arrays(straight[2], _final(tmp_path / record_format))


def test_faceid_without_weights_names_the_way_out(dataset, tmp_path):
    with pytest.raises(trainer.TrainError, match="--faceid_weight 0"):
        trainer.train(_config(dataset, tmp_path, faceid_weight=1))


def test_too_small_img_size_names_the_flag(dataset, tmp_path):
    for size in (64, 32):
        with pytest.raises(trainer.TrainError, match=f"--img_size {size} is too small"):
            trainer.train(_config(dataset, tmp_path, img_size=size))


@pytest.mark.slow
@pytest.mark.xdist_group("trainer")
def test_cli_sigterm_leaves_restorable_checkpoint_and_exports(dataset, tmp_path, capsys):
    """train.py with the original's flags, sent SIGTERM as soon as it starts training: it
    finishes the step, writes its sample grids and checkpoint, exits 143; convert_weights.py
    exports the checkpoint to a .pt that the original nets load strictly; --resume continues."""
    workdir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [
        sys.executable,
        str(ROOT / "train.py"),
        "--dataset",
        str(dataset),
        "--img_size",
        str(SIZE),
        "--ch",
        str(CH),
        "--light",
        "true",
        "--iteration",
        str(ITERATION),
        "--batch_size",
        "1",
        "--faceid_weight",
        "0",
        "--print_freq",
        "1",
        "--save_freq",
        "1000",
        "--log_every",
        "1",
        "--gpu_ids",
        "0",
        "--benchmark_flag",
        "false",
        "--workdir",
        str(workdir),
    ]
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "training start" in line:  # the progress bar may precede it on this line
            proc.send_signal(signal.SIGTERM)
            break
    out = "".join(lines) + proc.communicate(timeout=600)[0]
    assert proc.returncode == 128 + signal.SIGTERM, out[-3000:]
    assert "preempted: saving step 1" in out, out[-3000:]
    assert sorted(os.listdir(workdir / "checkpoints")) == ["1"]
    assert set(checkpoint.load_nets(workdir)) == set(TRAINING_NETS)
    for direction in ("A2B", "B2A"):
        assert (workdir / "demo" / "img" / f"{direction}_0000001.png").exists()
    assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))

    pt = tmp_path / "photo2cartoon_weights.pt"
    res = subprocess.run(
        [sys.executable, str(ROOT / "convert_weights.py"), "--src", str(workdir), "--dst", str(pt)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    sd = torch.load(pt, weights_only=True)
    for name in ("genA2B", "genB2A"):
        torch_port.ResnetGenerator(CH, SIZE, True).load_state_dict(sd[name], strict=True)
    for name, n_layers in (("disGA", 7), ("disGB", 7), ("disLA", 5), ("disLB", 5)):
        torch_port.Discriminator(3, CH, n_layers).load_state_dict(sd[name], strict=True)

    # --resume true, in this process (the same main(); no second start-up and compile)
    train_cli = _load(ROOT / "train.py")
    assert train_cli.main([*cmd[2:], "--resume", "true", "--print_freq", "0"]) == 0
    assert "at step 1" in capsys.readouterr().out
    assert sorted(os.listdir(workdir / "checkpoints")) == ["1", str(ITERATION)]


def test_train_cli_error_paths(dataset, tmp_path, capsys):
    """train.py's refusals: exit status 2 and one line naming the flag, nothing written."""
    from p2c_jax.cli.train import main

    base = ["--dataset", str(dataset), "--img_size", str(SIZE), "--ch", str(CH)]
    cases = [
        (["--phase", "test"], "--phase test is infer.py's job"),
        ([*base, "--precision", "float16"], "--precision: unknown precision 'float16'"),
        ([*base, "--plan", "gpu", "--faceid_weight", "0"], "--plan gpu: expected one of auto"),
        ([*base, "--workdir", "memory://bar/w", "--faceid_weight", "0"], "unsupported scheme"),
        ([*base, "--workdir", str(tmp_path / "w")], "--faceid_weights model_mobilefacenet.pth"),
        (["--dataset", str(tmp_path / "nothing"), "--faceid_weight", "0"], "--dataset"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        assert message in capsys.readouterr().err, argv
    assert not (tmp_path / "w").exists()
    with pytest.raises(SystemExit):
        main(["--light", "maybe"])
    assert "expected true or false" in capsys.readouterr().err


def test_demo_run_says_where_its_dataset_and_workdir_are(tmp_path, monkeypatch, capsys):
    """--dataset demo builds ./dataset/demo; the run prints that folder and the workdir (the
    original's ./experiment/... one without --workdir) before training starts."""
    from p2c_jax.cli.train import main

    class StopError(Exception):
        """Raised where the step would compile: everything before it has run."""

    def stop(*a, **k):
        raise StopError

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(trainer, "make_step", stop)
    argv = ["--dataset", "demo", "--img_size", str(SIZE), "--ch", str(CH), "--faceid_weight", "0"]
    with pytest.raises(StopError):
        main([*argv, "--workdir", "runs/p2c"])
    out = capsys.readouterr().out
    assert f"dataset: {tmp_path / 'dataset' / 'demo'} (the offline demo" in out
    assert f"workdir: {tmp_path / 'runs' / 'p2c'} (checkpoints" in out
    assert sorted(p.name for p in (tmp_path / "dataset" / "demo").iterdir()) == [
        "testA", "testB", "trainA", "trainB"
    ]  # fmt: skip
    with pytest.raises(StopError):
        main(argv)
    default = Config.flat(img_size=SIZE, ch=CH, faceid_weight=0.0).run_dir()
    assert f"workdir: {tmp_path / default} (checkpoints" in capsys.readouterr().out


def test_light_pretrained_weights_load_at_any_img_size(dataset, tmp_path):
    """A light generator's weights do not depend on img_size (its FC runs on pooled features):
    the original's 256 x 256 .pt initialises a 96 x 96 run, as the original allows."""
    nets = {n: s for n, s in trainer.training_specs(CH, 256, True).items()}
    pt = tmp_path / "w.pt"
    sds = {}
    for name, spec in nets.items():
        m = (
            torch_port.ResnetGenerator(CH, 256, True)
            if spec.kind == "generator"
            else torch_port.Discriminator(3, CH, spec.n_layers)
        )
        sds[name] = m.state_dict()
    torch.save(sds, pt)
    cfg = _config(dataset, tmp_path / "run", pretrained_weights=str(pt))
    loaded = trainer.initial_nets(cfg, trainer.training_specs(CH, SIZE, True), print)
    for name, sd in sds.items():  # each tensor's values, whatever our layout and names
        got = sorted(np.sort(np.ravel(x)).tobytes() for x in jax.tree.leaves(loaded[name]))
        want = sorted(np.sort(t.numpy().ravel()).tobytes() for t in sd.values())
        assert got == want, name
    with pytest.raises(trainer.TrainError, match="check --ch"):
        trainer.initial_nets(
            _config(dataset, tmp_path / "run", ch=8, pretrained_weights=str(pt)),
            trainer.training_specs(8, SIZE, True),
            print,
        )


def test_resume_without_checkpoints_says_it_starts_from_scratch(dataset, tmp_path):
    """--resume true on a workdir with no checkpoint yet: one line saying so, then step 0."""
    logs: list[str] = []
    run = trainer.setup(
        _config(dataset, tmp_path / "fresh", resume=True),
        mesh=make_mesh(jax.devices()[:1]),
        log=logs.append,
    )
    try:
        assert run.start == 0
        assert any(
            line.startswith("--resume: no checkpoint under") and "starting from step 0" in line
            for line in logs
        ), logs
    finally:
        run.manager.close()


def _no_op_step(state, face_state, real_A, real_B):
    """A step that trains nothing and compiles nothing: the loop's own work, in seconds."""
    return state, {"d_loss": jnp.float32(1.0), "g_loss": jnp.float32(2.0)}


def _cli_argv(dataset: Path, workdir: Path, iteration: int, *flags: str) -> list[str]:
    return [
        "--dataset", str(dataset), "--img_size", str(SIZE), "--ch", str(CH),
        "--iteration", str(iteration), "--faceid_weight", "0", "--save_freq", "1",
        "--log_every", "1", "--progress", "false", "--workdir", str(workdir), *flags,
    ]  # fmt: skip


def test_failed_checkpoint_save_stops_the_run_with_one_line(dataset, tmp_path, monkeypatch, capfd):
    """From step 3 on no file may exceed 64 KiB (RLIMIT_FSIZE, below a checkpoint's array
    files; Python ignores SIGXFSZ): Orbax's background write of checkpoint 3 fails with EFBIG.
    Exit status 3 by the next step, one line naming the checkpoint, the errno and the last
    complete checkpoint, which still restores; no traceback (there were thousands)."""
    from p2c_jax.cli.train import main

    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    calls = []

    def step(*args):
        calls.append(None)
        if len(calls) == 3:
            while not (ckpts / "2").is_dir() or any("tmp" in n for n in os.listdir(ckpts)):
                time.sleep(0.01)  # checkpoint 2 complete
            resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, hard))
        return _no_op_step(*args)

    monkeypatch.setattr(trainer, "make_step", lambda *a, **k: step)
    work = tmp_path / "w"
    ckpts = work / "checkpoints"
    try:
        rc = main(_cli_argv(dataset, work, 6))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    out, err = capfd.readouterr()
    assert rc == 3, err[-3000:]
    assert [line for line in err.splitlines() if line.startswith("error:")] == [
        f"error: checkpoint {ckpts}/3 not written: [Errno {errno.EFBIG}] File too large "
        f"(EFBIG); the last complete checkpoint is {ckpts}/2"
    ]
    assert "Traceback" not in out + err and len((out + err).splitlines()) <= 20, out + err
    assert "[    5/    6]" not in out  # stopped by the step after the failed save
    assert sorted(p.name for p in ckpts.iterdir() if p.name.isdigit()) == ["1", "2"]
    assert set(checkpoint.load_nets(ckpts / "2")) == set(TRAINING_NETS)


def test_failed_sample_grid_warns_once_and_training_goes_on(dataset, tmp_path, monkeypatch, capfd):
    """Every sample grid write fails (ENOSPC): one warning line for the run, every step trained,
    the final checkpoint saved, exit status 0."""
    from p2c_jax.cli.train import main

    def full_disk(path, grid):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    def translate(self, gen, x, there, back):
        heat = np.zeros((len(x), 6, 6, 1), np.float32)
        return x, heat, x, heat, x, heat

    monkeypatch.setattr(trainer, "make_step", lambda *a, **k: _no_op_step)
    monkeypatch.setattr(trainer.samples, "save_grid", full_disk)
    monkeypatch.setattr(trainer._Sampler, "_translate", translate)
    work = tmp_path / "w"
    assert main(_cli_argv(dataset, work, 3, "--print_freq", "1", "--save_freq", "0")) == 0
    out, err = capfd.readouterr()
    warnings = [line for line in (out + err).splitlines() if line.startswith("warning:")]
    assert warnings == [
        f"warning: sample grid not written ({work}/demo/img/A2B_0000001.png): [Errno "
        f"{errno.ENOSPC}] No space left on device (ENOSPC); training goes on (said once)"
    ]
    assert "[    3/    3]" in out
    assert sorted(os.listdir(work / "checkpoints")) == ["3"]
