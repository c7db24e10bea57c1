"""infer.py: PNGs equal our PyTorch port's output post-processed as the original test.py does
(within 1 grey level), with and without preprocessing; every error path and exit code; the
batch padded, compiled once and sharded over two devices."""

from __future__ import annotations

import gc
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from helpers.ci_required import needs
from helpers.faces import StubLandmarker, face_points, soft_mask, synthetic_photo
from helpers.reference import make_weights
from PIL import Image

from p2c_jax import load_generator
from p2c_jax.cartoonize import Preparer, run
from p2c_jax.cli.infer import main
from p2c_jax.inference import BatchedGenerator, forward
from p2c_jax.pytorch import nets as torch_port
from p2c_jax.weights.checkpoint import save_nets
from p2c_jax.weights.convert import load_torch
from preprocessing import geometry
from preprocessing.pipeline import Preprocessor
from preprocessing.report import last_records, read_report

REPO = Path(__file__).resolve().parents[2]
BATCH = ["--batch_size", "2"]  # one compiled shape shared by the ngf=8 tests


@pytest.fixture(autouse=True, scope="module")
def torch_one_thread():
    """The reference runs single-threaded: on 2 shared cores, torch's threads mostly wait."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    path = tmp_path_factory.mktemp("weights") / "photo2cartoon_weights.pt"
    return path, make_weights(path, ngf=8)


@pytest.fixture(scope="module")
def small_checkpoint(small, tmp_path_factory) -> Path:
    """``small``'s generator as our checkpoint directory."""
    ckpt = tmp_path_factory.mktemp("ckpt") / "ckpt"
    save_nets(ckpt, load_torch(small[0], ["genA2B"]))
    return ckpt


# ------------------------------------------------- the original test.py, independently written


def torch_cartoon(model: torch.nn.Module, face: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """256 x 256 uint8 RGB face (+ uint8 mask) -> the original's uint8 RGB cartoon."""
    m = np.ones((256, 256, 1)) if mask is None else mask[:, :, None] / 255.0
    x = (face * m + (1 - m) * 255) / 127.5 - 1
    with torch.no_grad():
        y = model(torch.from_numpy(x.transpose(2, 0, 1)[None].astype(np.float32)))[0][0]
    cartoon = (y.numpy().transpose(1, 2, 0) + 1) * 127.5
    return (cartoon * m + 255 * (1 - m)).astype(np.uint8)  # astype truncates, as the original


def aligned_reference(model: torch.nn.Module, image: np.ndarray) -> np.ndarray:
    return torch_cartoon(model, cv2.resize(image, (256, 256), interpolation=cv2.INTER_AREA), None)


def png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def assert_within_one(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1


def report(out: Path) -> dict[str, dict]:
    return last_records(read_report(out))


# ------------------------------------------------- generated faces and stand-in backends


def stub_preparer() -> Preparer:
    return Preparer(lambda: Preprocessor(StubLandmarker(), soft_mask))


# ------------------------------------------------- equality with the PyTorch port


def test_aligned_photos_real_config(data_dir, tmp_path):
    """ngf=32 light (the released config), weights as .pt, --no_preprocess, last batch padded."""
    model = make_weights(tmp_path / "w.pt", ngf=32, seed=1)
    photos = sorted((data_dir / "images").glob("aligned_photo_*.png"))
    assert photos
    out = tmp_path / "out"
    rc = main(
        [
            *map(str, photos),
            "-o",
            str(out),
            "--weights",
            str(tmp_path / "w.pt"),
            "--no_preprocess",
            "--batch_size",
            "2",
            "--no_progress",
        ]
    )
    assert rc == 0
    for p in photos:
        assert_within_one(png(out / p.name), aligned_reference(model, png(p)))


def test_generated_faces_with_preprocessing(tmp_path, small):
    """Aligned crop + soft mask resized to 256 (INTER_AREA), composited before and after."""
    path, model = small
    sizes = [(300, 260), (700, 640), (333, 301)]
    items = []
    for i, (h, w) in enumerate(sizes):
        f = tmp_path / "in" / f"face_{i}.png"
        f.parent.mkdir(exist_ok=True)
        Image.fromarray(synthetic_photo(h, w, i)).save(f)
        items.append((f, f.name))
    gen = BatchedGenerator(load_generator(path), batch_size=2)
    compiled = forward(gen.spec)._cache_size()
    summary, _ = run(items, tmp_path / "out", gen, stub_preparer(), workers=2, progress=False)
    assert (summary.done, summary.failed, summary.exit_code) == (3, 0, 0)
    assert forward(gen.spec)._cache_size() - compiled <= 1  # 2 + padded 1: one batch shape
    for f, _ in items:
        image = png(f)
        alignment = geometry.align(image.shape, face_points(image))
        crop = geometry.aligned_crop(image, alignment)
        mask = soft_mask(crop, None)
        rgba = cv2.resize(np.dstack((crop, mask)), (256, 256), interpolation=cv2.INTER_AREA)
        want = torch_cartoon(model, rgba[:, :, :3], rgba[:, :, 3])
        got = png(tmp_path / "out" / f.name)
        assert_within_one(got, want)
        assert (got[:4, :4] == 255).all()  # masked out: white


def test_preparer_hands_its_first_preprocessor_to_a_worker(tmp_path):
    """The Preprocessor built up front (so that an unusable backend fails at once) is the one
    the first worker uses: 2 workers over 6 photos build 2 Preprocessors in all, not 3."""
    built, used = [], set()

    class Counted(StubLandmarker):
        def __init__(self, n: int):
            self.n = n

        def __call__(self, image: np.ndarray) -> list[np.ndarray]:
            used.add(self.n)
            return super().__call__(image)

    def make() -> Preprocessor:
        built.append(Preprocessor(Counted(len(built)), soft_mask))
        return built[-1]

    prepare = Preparer(make)
    assert len(built) == 1
    photos = []
    for i in range(6):
        f = tmp_path / f"face_{i}.png"
        Image.fromarray(synthetic_photo(300, 260, i)).save(f)
        photos.append(f)
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(prepare, photos))
    assert 1 <= len(built) <= 2
    assert 0 in used  # the first one went to a worker


def test_side_by_side_compare_torch_and_checkpoint_dir(tmp_path, small, small_checkpoint, capsys):
    """Our checkpoint dir gives the .pt's cartoons; --compare_torch reports per image and
    overall."""
    _, model = small
    ckpt = small_checkpoint
    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        Image.fromarray(synthetic_photo(256, 256, 10 + i)).save(src / f"a{i}.png")
    out = tmp_path / "out"
    rc = main(
        [
            str(src / "*.png"),
            "-o",
            str(out),
            "--weights",
            str(ckpt),
            "--no_preprocess",
            "--side_by_side",
            "--compare_torch",
            "--no_progress",
            *BATCH,
        ]
    )
    assert rc == 0
    err = capsys.readouterr().err
    assert "3 inputs: 3 done, 0 failed; vs torch: max |diff| " in err
    rep = report(out)
    for i in range(3):
        photo = png(src / f"a{i}.png")
        both = png(out / f"a{i}.png")
        assert both.shape == (256, 512, 3)
        np.testing.assert_array_equal(both[:, :256], photo)
        assert_within_one(both[:, 256:], aligned_reference(model, photo))
        assert rep[f"a{i}.png"]["max_abs_diff"] <= 1 and rep[f"a{i}.png"]["psnr"] > 45
        assert f"a{i}.png: max |diff| " in err


# ------------------------------------------------- bad inputs and exit codes


def test_mixed_folder(tmp_path, small, capsys):
    """Good photos (nested too), a corrupt file, a text file, a grayscale and an RGBA image."""
    path, model = small
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    Image.fromarray(synthetic_photo(256, 256, 1)).save(src / "good.png")
    Image.fromarray(synthetic_photo(400, 300, 2)).save(src / "sub" / "big.jpg", quality=95)
    Image.fromarray(synthetic_photo(256, 256, 3)).convert("L").save(src / "gray.png")
    rgba = np.dstack([synthetic_photo(256, 256, 4), np.full((256, 256), 255, np.uint8)])
    rgba[:64, :, 3] = 0  # transparent top: white, as the original's loader does
    Image.fromarray(rgba, "RGBA").save(src / "rgba.png")
    (src / "corrupt.png").write_bytes((src / "good.png").read_bytes()[:300])
    (src / "notes.txt").write_text("not a photo")
    Image.new("RGB", (8, 8)).save(src / "tiny.png")
    out = tmp_path / "out"

    rc = main([str(src), "-o", str(out), "--weights", str(path), "--no_preprocess", *BATCH])

    assert rc == 1
    rep = report(out)
    assert {n: r["status"] for n, r in rep.items()} == {
        "corrupt.png": "failed",
        "good.png": "done",
        "gray.png": "done",
        "notes.txt": "failed",
        "rgba.png": "done",
        "sub/big.jpg": "done",
        "tiny.png": "failed",
    }
    assert rep["notes.txt"]["reason"] == "not an image"
    assert rep["corrupt.png"]["reason"].startswith("corrupt image")
    assert rep["tiny.png"]["reason"] == "image too small (8x8)"
    assert rep["sub/big.jpg"]["outputs"] == ["sub/big.png"]
    expected_inputs = {
        "good.png": png(src / "good.png"),
        "sub/big.png": png(src / "sub" / "big.jpg"),
        "gray.png": np.repeat(np.asarray(Image.open(src / "gray.png"))[:, :, None], 3, axis=2),
        "rgba.png": np.where(rgba[:, :, 3:] == 255, rgba[:, :, :3], 255).astype(np.uint8),
    }
    for name, image in expected_inputs.items():
        assert_within_one(png(out / name), aligned_reference(model, image))
    assert sorted(p.name for p in out.rglob("*")) == [
        "big.png",
        "good.png",
        "gray.png",
        "report.jsonl",
        "rgba.png",
        "sub",
    ]  # no temp files
    err = capsys.readouterr().err
    assert "7 inputs: 4 done, 3 failed [" in err and "not an image: 1" in err


def test_faceless_photos(tmp_path, small):
    path, _ = small
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(synthetic_photo(300, 300, 5)).save(src / "face.png")
    Image.new("RGB", (300, 300), (5, 5, 5)).save(src / "dark.png")
    items = [(src / "dark.png", "dark.png"), (src / "face.png", "face.png")]
    gen = BatchedGenerator(load_generator(path), batch_size=2)
    summary, _ = run(items, tmp_path / "out", gen, stub_preparer(), progress=False)
    assert (summary.done, summary.failed, summary.exit_code) == (1, 1, 1)
    assert report(tmp_path / "out")["dark.png"] == {
        "name": "dark.png",
        "input": str(src / "dark.png"),
        "status": "failed",
        "reason": "no face found",
    }
    none, _ = run(items[:1], tmp_path / "none", gen, stub_preparer(), progress=False)
    assert (none.done, none.exit_code) == (0, 2)
    assert not list((tmp_path / "none").glob("*.png"))


def test_output_on_gcs_as_in_a_local_folder(tmp_path, small, gcs_bucket, capsys):
    """--output gs://... (a fake GCS server on 127.0.0.1), by both engines: the PNGs and the
    report rows of a local run (the report in parts), nothing written to a local "gs:" folder;
    another scheme is refused before any work."""
    path, _ = small
    src = tmp_path / "in"
    src.mkdir()
    for i in (1, 2, 3):
        Image.fromarray(synthetic_photo(256, 256, i)).save(src / f"p{i}.png")
    (src / "notes.txt").write_text("not a photo")
    args = ["--weights", str(path), "--no_preprocess", "--no_progress", *BATCH]
    local = tmp_path / "out"
    assert main([str(src), "-o", str(local), *args]) == 1
    beam = ["--runner", "FnApiRunner", "--direct_running_mode", "in_memory"]
    for remote, engine in ((gcs_bucket / "out", []), (gcs_bucket / "beam", beam)):
        assert main([str(src), "-o", str(remote), *args, *engine]) == 1
        names = sorted(p.name for p in remote.iterdir())
        assert names == ["p1.png", "p2.png", "p3.png", "report.jsonl.parts"]
        for name in names[:3]:
            assert (remote / name).read_bytes() == (local / name).read_bytes()
        assert report(remote) == report(local) and len(report(local)) == 4
    assert not list(Path.cwd().glob("gs:*")) and not (tmp_path / "gs:").exists()
    capsys.readouterr()
    assert main([str(src), "-o", "memory://bar/out", *args]) == 2
    assert "--output memory://bar/out: unsupported scheme memory://" in capsys.readouterr().err


def random_bytes_over(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).bytes(path.stat().st_size))


def unusable_weights(tmp: Path, kind: str, pt: Path, ckpt: Path) -> Path:
    """Weights at ``tmp/w.pt`` (``tmp/w`` for our checkpoints) damaged or wrong as ``kind`` says,
    from the .pt ``pt`` and its checkpoint ``ckpt``."""
    sd = torch_port.ResnetGenerator(8, 256, True).state_dict()
    if kind == "missing":
        return tmp / "nope.pt"
    if kind == "text":
        (tmp / "w.pt").write_text("not a checkpoint")
    if kind == "truncated_zip":  # torch >= 1.6's format
        (tmp / "w.pt").write_bytes(pt.read_bytes()[: pt.stat().st_size // 2])
    if kind == "truncated_legacy":  # the original's weights' format (torch 1.4)
        torch.save({"genA2B": sd}, tmp / "w.pt", _use_new_zipfile_serialization=False)
        (tmp / "w.pt").write_bytes((tmp / "w.pt").read_bytes()[:-1000])
    if kind == "no_genA2B":
        torch.save({"genB2A": sd}, tmp / "w.pt")
    if kind == "wrong_shapes":
        sd["ConvBlock2.1.weight"] = torch.zeros(3, 8, 5, 5)
        torch.save({"genA2B": sd}, tmp / "w.pt")
    if kind == "empty_dir":
        (tmp / "w.pt").mkdir()
    if kind.startswith("checkpoint_"):
        shutil.copytree(ckpt, tmp / "w")
        nets = tmp / "w" / "nets"
        if kind == "checkpoint_no_metadata":
            (nets / "_METADATA").unlink()
        if kind == "checkpoint_random_index":  # OCDBT's b-tree of where each array lies
            (index,) = (nets / "d").iterdir()
            random_bytes_over(index)
        if kind == "checkpoint_random_arrays":
            random_bytes_over(max((nets / "ocdbt.process_0" / "d").iterdir(), key=os.path.getsize))
        return tmp / "w"
    return tmp / "w.pt"


UNUSABLE = {  # kind: what the error line says after the path
    "missing": "no such file",
    "text": "not a PyTorch checkpoint",
    "truncated_zip": "not a PyTorch checkpoint (the file ends early (truncated?))",
    "truncated_legacy": "not a PyTorch checkpoint (the file ends early (truncated?))",
    "no_genA2B": "has no genA2B (it holds genB2A)",
    "wrong_shapes": "does not fit the photo2cartoon networks:",  # then a line per problem
    "empty_dir": "not a p2c-jax checkpoint or training workdir",
    "checkpoint_no_metadata": "does not restore (FileNotFoundError: Metadata file (named "
    "_METADATA) does not exist",
    "checkpoint_random_index": "does not restore (DATA_LOSS: ",
    "checkpoint_random_arrays": "does not restore (FAILED_PRECONDITION: ",
}


@pytest.mark.parametrize("kind", UNUSABLE)
def test_unusable_weights_exit_2(tmp_path, small, small_checkpoint, capsys, kind):
    """Each is one line naming the weights and the reason (TensorStore's spec of the array
    left out), no traceback, exit 2; weights of other nets list what does not fit below it."""
    Image.fromarray(synthetic_photo(256, 256, 0)).save(tmp_path / "a.png")
    weights = unusable_weights(tmp_path, kind, small[0], small_checkpoint)
    args = ["-o", str(tmp_path / "out"), "--weights", str(weights), "--no_preprocess"]
    rc = main([str(tmp_path / "a.png"), *args, "--no_progress"])
    assert rc == 2
    line, *details = capsys.readouterr().err.splitlines()
    assert line.startswith(f"error: unusable weights: {weights}: {UNUSABLE[kind]}"), line
    misfit = ["  genA2B: ConvBlock2.1.weight has shape (3, 8, 5, 5), expected (3, 3, 7, 7)"]
    assert details == (misfit if kind == "wrong_shapes" else [])
    assert "tensorstore_spec" not in line and len(line) < 1000


def test_damaged_checkpoint_says_nothing_later(tmp_path, small_checkpoint, monkeypatch, caplog):
    """When one array of a checkpoint cannot be read, the reads of the others still running
    report nothing once the error is said (Orbax closed their event loop: "Event loop is closed"
    tracebacks and asyncio's "Task exception was never retrieved" errors, printed even after
    the command returned). Timing decides how many reads are still running: four tries."""
    weights = unusable_weights(tmp_path, "checkpoint_random_arrays", None, small_checkpoint)
    late = []
    monkeypatch.setattr(sys, "unraisablehook", late.append)
    for _ in range(4):
        with pytest.raises(ValueError, match="FAILED_PRECONDITION"):  # a CheckpointError
            load_generator(weights)
        time.sleep(0.2)
        gc.collect()
    assert not late, f"{len(late)} late errors, the first {late[0].exc_value!r}"
    assert [r.getMessage() for r in caplog.records if r.name == "asyncio"] == []


def test_unknown_precision_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([str(tmp_path), "-o", str(tmp_path / "o"), "--weights", "w.pt", "--precision", "f16"])
    assert exit_.value.code == 2
    assert "--precision: invalid choice: 'f16'" in capsys.readouterr().err


@pytest.mark.slow
def test_bfloat16_cartoons_near_float32(tmp_path, small):
    """infer.py --precision bfloat16 against float32 on aligned faces: PSNR >= 35 dB."""
    path, _ = small
    src = tmp_path / "in"
    src.mkdir()
    for i in range(2):
        Image.fromarray(synthetic_photo(256, 256, i)).save(src / f"a{i}.png")
    out = {}
    for name in ("float32", "bfloat16"):
        argv = [str(src), "-o", str(tmp_path / name), "--weights", str(path), "--no_preprocess"]
        assert main([*argv, "--precision", name, "--no_progress"]) == 0
        out[name] = [png(tmp_path / name / f"a{i}.png").astype(np.float64) for i in range(2)]
    for a, b in zip(out["float32"], out["bfloat16"]):
        assert 10 * np.log10(255.0**2 / max(np.mean((a - b) ** 2), 1e-12)) >= 35


def test_missing_or_empty_input_is_one_error_before_the_model_loads(
    tmp_path, small, capsys, monkeypatch
):
    path, _ = small
    (tmp_path / "empty").mkdir()
    args = ["-o", str(tmp_path / "out"), "--weights", str(path), "--no_preprocess", "--no_progress"]

    def never(*a, **k):
        raise AssertionError("the model was loaded")

    with monkeypatch.context() as m:
        m.setattr("p2c_jax.inference.load_generator", never)
        assert main([str(tmp_path / "empty"), *args]) == 2
        assert f"error: no input files in {tmp_path / 'empty'}" in capsys.readouterr().err
        assert main([str(tmp_path / "photos"), *args]) == 2
        err = capsys.readouterr().err
        assert err == f"error: input {tmp_path / 'photos'}: no such file, folder or glob match\n"
        assert main([str(tmp_path / "missing_*.jpg"), *args]) == 2
        assert "missing_*.jpg: no such file" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    # a missing input beside real ones: said first, the others done, exit 1
    cv2.imwrite(str(tmp_path / "face.png"), np.full((64, 64, 3), 128, np.uint8))
    assert main([str(tmp_path / "face.png"), str(tmp_path / "photos"), *args, *BATCH]) == 1
    assert report(tmp_path / "out")["photos"]["reason"] == "file not found"
    assert (tmp_path / "out" / "face.png").is_file()


@needs("dlib", "skimage", reason="the preprocess extra (dlib) and scikit-image")
def test_dlib_and_grabcut_end_to_end(tmp_path, small):
    """The default offline backends on a real face, and a photo without one."""
    from skimage import data

    path, _ = small
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(data.astronaut()).save(src / "astronaut.jpg", quality=95)
    Image.fromarray(data.coffee()).save(src / "coffee.png")
    out = tmp_path / "out"
    rc = main(
        [
            str(src),
            "-o",
            str(out),
            "--weights",
            str(path),
            "--workers",
            "1",
            "--no_progress",
            *BATCH,
        ]
    )
    assert rc == 1
    rep = report(out)
    assert rep["astronaut.jpg"]["status"] == "done"
    assert rep["coffee.png"]["reason"] == "no face found"
    cartoon = png(out / "astronaut.png")
    assert cartoon.shape == (256, 256, 3) and (cartoon[:3, :3] == 255).all()


# ------------------------------------------------- sharding over devices


def test_two_devices_give_identical_pngs(tmp_path, small):
    path, _ = small
    src = tmp_path / "in"
    src.mkdir()
    for i in range(5):
        Image.fromarray(synthetic_photo(256, 256, 20 + i)).save(src / f"f{i}.png")
    args = [
        str(src),
        "--weights",
        str(path),
        "--no_preprocess",
        "--no_progress",
        "--batch_size",
        "3",
    ]
    assert main([*args, "-o", str(tmp_path / "one")]) == 0
    code = (
        "import sys, jax; assert len(jax.local_devices()) == 2, jax.local_devices(); "
        "from p2c_jax.cli.infer import main; sys.exit(main(sys.argv[1:]))"
    )
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
        "JAX_PLATFORMS": "cpu",
    }
    proc = subprocess.run(
        [sys.executable, "-c", code, *args, "-o", str(tmp_path / "two")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    for i in range(5):
        np.testing.assert_array_equal(
            png(tmp_path / "two" / f"f{i}.png"), png(tmp_path / "one" / f"f{i}.png")
        )


def test_later_commands_reuse_the_compiled_generator(tmp_path, small):
    path, _ = small
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(synthetic_photo(256, 256, 3)).save(src / "a.png")
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env.update(
        XDG_CACHE_HOME=str(tmp_path / "home_cache"),
        JAX_PLATFORMS="cpu",
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    )  # the small net compiles fast
    code = (
        "import sys, jax; hits = []; jax.monitoring.register_event_listener("
        "lambda event, **_: hits.append(event == '/jax/compilation_cache/cache_hits')); "
        "from p2c_jax.cli.infer import main; rc = main(sys.argv[1:]); "
        "print('cache hits', sum(hits)); sys.exit(rc)"
    )
    args = [str(src), "--weights", str(path), "--no_preprocess", "--no_progress"]
    runs = [
        subprocess.run(
            [sys.executable, "-c", code, *args, "-o", str(tmp_path / f"out{i}")],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        for i in range(2)
    ]
    assert [r.returncode for r in runs] == [0, 0], runs[-1].stderr
    assert any((tmp_path / "home_cache" / "p2c-jax" / "xla").iterdir())  # the default folder
    hits = [int(r.stdout.split("cache hits")[-1]) for r in runs]
    assert hits[0] == 0 and hits[1] > 0, hits
    np.testing.assert_array_equal(
        png(tmp_path / "out1" / "a.png"), png(tmp_path / "out0" / "a.png")
    )
