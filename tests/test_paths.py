"""p2c_jax.paths: scheme validation, atomic writes, and gs:// end to end on a fake GCS server
(epath files, Orbax checkpoints restored in a fresh process, listings fresh across processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from etils import epath

from p2c_jax import paths

ROOT = Path(__file__).resolve().parents[1]


def _run(code: str, *args: str, timeout: float = 120) -> str:
    """Runs ``code`` in a fresh Python (the gs:// environment inherited) and returns stdout."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    r = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    assert r.returncode == 0, r.stderr[-4000:]
    return r.stdout


# --- validation (no server) ------------------------------------------------------------------


def test_local_paths_become_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert paths.as_path("runs/w") == epath.Path(tmp_path / "runs" / "w")
    assert paths.as_path("~/w") == epath.Path(tmp_path / "home" / "w")
    assert paths.as_path(Path("a/../b")) == epath.Path(tmp_path / "b")
    assert paths.as_path(f"file://{tmp_path}/x") == epath.Path(tmp_path / "x")
    assert not paths.is_remote(paths.as_path("runs/w"))
    assert isinstance(paths.as_path("runs/w"), epath.Path)


@pytest.mark.parametrize(
    "s", ["memory://bar/w", "s3://b/w", "az://c/w", "hf://org/repo", "ram://w", "http://h/w"]
)
def test_other_schemes_refused(s: str) -> None:
    scheme = s.split("://")[0]
    with pytest.raises(ValueError, match=f"unsupported scheme {scheme}://") as e:
        paths.as_path(s)
    assert str(e.value).startswith(f"{s}: ") and "gs://" in str(e.value)


def test_collapsed_url_and_bucketless_gs_refused() -> None:
    # Path("memory://bar/w") is "memory:/bar/w": it must not become a local folder "memory:"
    with pytest.raises(ValueError, match=r"memory:/bar/w: looks like a memory:// URL"):
        paths.as_path(str(Path("memory://bar/w")))
    for s in ("gs://", "gs:///x"):
        with pytest.raises(ValueError, match="needs a bucket"):
            paths.as_path(s)


def test_gs_paths_kept_and_remote() -> None:
    p = paths.as_path("gs://bucket/run/w")
    assert str(p) == "gs://bucket/run/w" and paths.is_remote(p) and paths.is_remote(str(p))
    assert str(p / "checkpoints") == "gs://bucket/run/w/checkpoints"
    assert paths.as_path(p) == p


def test_write_atomic_local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "new" / "dir" / "a.json"
    paths.write_text_atomic(str(f), '{"a": 1}')
    assert f.read_text() == '{"a": 1}' and paths.exists(f)
    paths.write_bytes_atomic(f, b"\x00\x01")
    assert paths.read_bytes(f) == b"\x00\x01"

    def fail(*_: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        paths.write_bytes_atomic(f, b"half")
    assert f.read_bytes() == b"\x00\x01"  # the old file, whole
    assert sorted(p.name for p in f.parent.iterdir()) == ["a.json"]  # no temporary left


# --- gs:// on the fake server ---------------------------------------------------------------


def test_epath_operations_on_gcs(gcs_bucket: epath.Path) -> None:
    d = gcs_bucket / "x"
    d.mkdir(parents=True, exist_ok=True)  # no-op on GCS: a "directory" is a prefix
    (d / "a.txt").write_text("hello")
    (d / "b.bin").write_bytes(b"\x00\x01")
    (d / "sub" / "c.txt").write_text("deep")
    assert (d / "a.txt").read_text() == "hello" and (d / "b.bin").read_bytes() == b"\x00\x01"
    assert (d / "a.txt").exists() and not (d / "nope").exists()
    assert d.is_dir() and (d / "sub").is_dir() and not (d / "a.txt").is_dir()
    assert sorted(p.name for p in d.iterdir()) == ["a.txt", "b.bin", "sub"]
    assert [str(p) for p in d.glob("*.txt")] == [f"{d}/a.txt"]
    (d / "a.txt").rename(d / "r.txt")
    assert (d / "r.txt").read_text() == "hello" and not (d / "a.txt").exists()
    (d / "r.txt").unlink()
    assert sorted(p.name for p in d.iterdir()) == ["b.bin", "sub"]
    d.rmtree()
    assert not d.exists()


def test_paths_helpers_on_gcs(gcs_bucket: epath.Path) -> None:
    f = paths.write_text_atomic(f"{gcs_bucket}/meta/a.json", '{"a": 1}')
    assert str(f) == f"{gcs_bucket}/meta/a.json" and paths.is_remote(f)
    assert paths.exists(f) and paths.read_bytes(str(f)) == b'{"a": 1}'
    paths.write_bytes_atomic(f, b"2")  # overwrite
    assert paths.read_bytes(f) == b"2" and not paths.exists(f"{gcs_bucket}/meta/b.json")


def test_listing_sees_another_process(gcs_bucket: epath.Path) -> None:
    # gcsfs's listing cache (never expiring by default) would hide b.txt; paths turns it off
    (gcs_bucket / "a.txt").write_text("1")
    assert [p.name for p in gcs_bucket.iterdir()] == ["a.txt"] and not (
        gcs_bucket / "b.txt"
    ).exists()
    code = "import sys; from p2c_jax.paths import as_path; (as_path(sys.argv[1]) / 'b.txt').write_text('2')"
    _run(code, str(gcs_bucket))
    assert sorted(p.name for p in gcs_bucket.iterdir()) == ["a.txt", "b.txt"]
    assert (gcs_bucket / "b.txt").exists() and (gcs_bucket / "b.txt").read_text() == "2"


_RESTORE = """
import json, sys
import numpy as np
import orbax.checkpoint as ocp
from p2c_jax.paths import as_path

with ocp.CheckpointManager(as_path(sys.argv[1]), item_names=("state", "meta")) as m:
    step = m.latest_step()
    r = m.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
    out = {"steps": list(m.all_steps()), "step": step, "meta": r.meta,
           "state": {k: [str(np.asarray(v).dtype), np.asarray(v, np.float64).tolist()]
                     for k, v in r.state.items()}}
print(json.dumps(out))
"""


def test_orbax_checkpoints_on_gcs(gcs_bucket: epath.Path) -> None:
    """Async Composite(StandardSave + JsonSave) saves through TensorStore's GCS driver, with
    max_to_keep deleting on GCS, restored by a new manager in a new process."""
    import jax.numpy as jnp
    import orbax.checkpoint as ocp

    def state(i: int) -> dict:
        w = np.arange(12, dtype=np.float32).reshape(3, 4) / 7 + i
        return {"w": w, "b": jnp.full((5,), 0.1 * i, jnp.bfloat16), "n": np.int64(i)}

    root = gcs_bucket / "run" / "checkpoints"
    opts = ocp.CheckpointManagerOptions(max_to_keep=2, create=True, enable_async_checkpointing=True)
    with ocp.CheckpointManager(root, options=opts, item_names=("state", "meta")) as m:
        for i in (1, 2, 3):
            args = ocp.args.Composite(
                state=ocp.args.StandardSave(state(i)), meta=ocp.args.JsonSave({"step": i})
            )
            m.save(i, args=args)
        m.wait_until_finished()
        assert m.all_steps() == [2, 3]
    assert sorted(p.name for p in root.iterdir() if p.name.isdigit()) == ["2", "3"]

    out = json.loads(_run(_RESTORE, str(root)).strip().splitlines()[-1])
    assert out["steps"] == [2, 3] and out["step"] == 3 and out["meta"] == {"step": 3}
    for k, v in state(3).items():
        dtype, values = out["state"][k]
        assert dtype == str(np.asarray(v).dtype), k
        np.testing.assert_array_equal(np.asarray(values), np.asarray(v, np.float64), err_msg=k)
