"""Training checkpoints: the whole train state round-trips bit for bit, and a format-1
checkpoint (optimizer states flattened, one key per leaf) still resumes with its values."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from helpers.damage import damage

from p2c_jax import parallel
from p2c_jax.data.demo import build_demo
from p2c_jax.nn.models import TRAINING_NETS
from p2c_jax.train import checkpointing, loop
from p2c_jax.train.config import Config, Hparams
from p2c_jax.train.state import TrainModel, fresh_nets
from p2c_jax.weights.checkpoint import nets_to_tree

SIZE, CH, STEP = 96, 4, 7


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return build_demo(tmp_path_factory.mktemp("data") / "demo", n_train=2, n_test=1, size=48)


def _config(dataset: Path, workdir: Path) -> Config:
    return Config.flat(
        dataset=str(dataset),
        workdir=str(workdir),
        img_size=SIZE,
        ch=CH,
        faceid_weight=0.0,
        resume=True,
        progress=False,
        seed=3,
    )


@pytest.fixture(scope="module")
def trained() -> tuple[TrainModel, dict]:
    """A host train state at step ``STEP`` whose optimizer moments are random, not zeros."""
    model = TrainModel(loop.training_specs(CH, SIZE, True))
    state = model.init_state(fresh_nets(model.specs, 1), Hparams(faceid_weight=0.0))
    rng = np.random.default_rng(0)

    def moment(x):
        x = np.asarray(x)
        if not np.issubdtype(x.dtype, np.floating):
            return np.full_like(x, STEP)
        return rng.uniform(0, 1, x.shape).astype(x.dtype)

    for k in ("opt_g", "opt_d"):
        state[k] = jax.tree.map(moment, state[k])
    state["step"] = np.asarray(STEP, np.int32)
    return model, state


def _arrays(tree) -> dict[str, np.ndarray]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {jax.tree_util.keystr(kp): np.asarray(parallel.host_value(x)) for kp, x in flat}


def _assert_equal(got: dict, want: dict) -> None:
    a, b = _arrays(got), _arrays(want)
    assert a.keys() == b.keys() and len(a) > 1000
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def _format1_items(model: TrainModel, state: dict, meta: dict) -> ocp.args.Composite:
    """The items as the format-1 writer laid them out: ``train_state`` one key per leaf of
    {step, opt_g, opt_d} in flattening order, their key paths in ``meta``."""
    rest = {k: state[k] for k in ("step", "opt_g", "opt_d")}
    leaves = jax.tree_util.tree_flatten_with_path(rest)[0]
    nets, config = nets_to_tree(
        {n: (model.specs[n], model.net_state(state, n)) for n in TRAINING_NETS}
    )
    return ocp.args.Composite(
        nets=ocp.args.StandardSave(nets),
        config=ocp.args.JsonSave(config),
        train_state=ocp.args.StandardSave(
            {f"{i:05d}": np.asarray(x) for i, (_, x) in enumerate(leaves)}
        ),
        meta=ocp.args.JsonSave(
            {**meta, "train_state_paths": [jax.tree_util.keystr(kp) for kp, _ in leaves]}
        ),
    )


def _save(cfg: Config, model: TrainModel, state: dict, layout: str = "format2") -> None:
    """Checkpoint ``STEP`` of ``state`` under ``cfg.workdir``, as today's writer lays it out or
    as format 1 did."""
    meta = {"seed": cfg.seed, "batch_size": cfg.batch_size, "step": STEP, "data_position": STEP}
    with ocp.CheckpointManager(
        Path(cfg.workdir) / "checkpoints", item_names=checkpointing.ITEMS
    ) as manager:
        if layout == "format2":
            args = checkpointing.save_args(model, state, meta)
        else:
            args = _format1_items(model, state, meta)
        manager.save(STEP, args=args)
        manager.wait_until_finished()


@pytest.mark.parametrize("layout", ["format2", "format1"])
def test_resume_restores_the_saved_state_exactly(dataset, trained, tmp_path, layout):
    """Saved (today's writer, or the format-1 layout), then resumed by ``loop.setup``: the
    state on the mesh equals the saved one, every array bit for bit, dtypes and shapes too."""
    cfg = _config(dataset, tmp_path / "run")
    model, state = trained
    _save(cfg, model, state, layout)
    run = loop.setup(cfg, mesh=parallel.make_mesh(jax.devices()[:1]), log=lambda _: None)
    try:
        assert run.start == STEP
        _assert_equal(run.state, state)
    finally:
        run.manager.close()


def test_resume_falls_back_for_damage_only(dataset, trained, tmp_path, monkeypatch):
    """Orbax's own refusal (a stored shape this version does not expect: a programming error,
    not damage) raises as it is and moves nothing; the same checkpoint damaged, and no older
    one, is moved aside with its line and the run starts at step 0."""
    cfg = _config(dataset, tmp_path / "run")
    _save(cfg, *trained)
    mesh = parallel.make_mesh(jax.devices()[:1])
    abstract_state = TrainModel.abstract_state

    def one_shape_off(self, hp, mesh):
        state = abstract_state(self, hp, mesh)
        leaves, treedef = jax.tree_util.tree_flatten(state["opt_d"])
        i = max(range(len(leaves)), key=lambda i: leaves[i].size)
        x = leaves[i]
        leaves[i] = jax.ShapeDtypeStruct(
            (x.shape[0] + 1, *x.shape[1:]), x.dtype, sharding=x.sharding
        )
        return {**state, "opt_d": treedef.unflatten(leaves)}

    with monkeypatch.context() as m:
        m.setattr(TrainModel, "abstract_state", one_shape_off)
        with pytest.raises(ValueError, match="not compatible with the stored shape"):
            loop.setup(cfg, mesh=mesh, log=print)
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == [str(STEP)]

    damage(tmp_path / "run" / "checkpoints" / str(STEP), "no_metadata")
    logs: list[str] = []
    run = loop.setup(cfg, mesh=mesh, log=logs.append)
    try:
        assert run.start == 0 and run.manager.all_steps() == []
    finally:
        run.manager.close()
    (aside,) = (tmp_path / "run" / "checkpoints").iterdir()
    (line,) = [m for m in logs if "does not restore" in m]
    assert line == (
        f"p2c-train: checkpoint step {STEP} does not restore (FileNotFoundError: Metadata file "
        f"(named _METADATA) does not exist at nets.); moved it to {aside}; starting from scratch"
    )
