"""Weights between the original PyTorch checkpoints and ours.

Our state paths are the torch keys split on dots (Sequential indices as ints), so the whole
conversion is the key rule below plus one layout rule per parameter name (``LAYOUTS``).
Two original formats are read and written:

- ``photo2cartoon_weights.pt``: ``{net_name: state_dict}`` for any of genA2B, genB2A, disGA,
  disGB, disLA, disLB;
- InsightFace's ``model_mobilefacenet.pth``: a bare MobileFaceNet state_dict (net ``facenet``).

The command line is ``p2c_jax.cli.convert`` (``convert_weights.py``).
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
from flax import nnx

from p2c_jax import paths
from p2c_jax.nn.face_id import FaceID
from p2c_jax.nn.models import FACENET, TRAINING_NETS, NetSpec, abstract
from p2c_jax.weights import checkpoint, torch_file
from p2c_jax.weights.checkpoint import CheckpointError, NetWeights

# --- layout rules: our array <-> torch tensor, by parameter name ------------------------------


def _matrix_to_torch(a: np.ndarray) -> np.ndarray:
    """Conv HWIO -> OIHW; linear [in, out] -> [out, in]; vectors unchanged."""
    return {4: lambda: a.transpose(3, 2, 0, 1), 2: lambda: a.T}.get(a.ndim, lambda: a)()


def _matrix_from_torch(t: np.ndarray) -> np.ndarray:
    return {4: lambda: t.transpose(2, 3, 1, 0), 2: lambda: t.T}.get(t.ndim, lambda: t)()


def _reshaper(torch_shape: Callable[[int], tuple[int, ...]]):
    return (lambda a: a.reshape(torch_shape(a.size)), lambda t: t.reshape(-1))


# name -> (ours_to_torch, torch_to_ours); names not listed are stored as they are.
LAYOUTS: dict[str, tuple[Callable, Callable]] = {
    "weight": (_matrix_to_torch, _matrix_from_torch),
    "weight_orig": (_matrix_to_torch, _matrix_from_torch),
    "rho": _reshaper(lambda c: (1, c, 1, 1)),
    "gamma": _reshaper(lambda c: (1, c, 1, 1)),
    "beta": _reshaper(lambda c: (1, c, 1, 1)),
    "w_gamma": _reshaper(lambda c: (1, c)),
    "w_beta": _reshaper(lambda c: (1, c)),
    "num_batches_tracked": (lambda a: a.astype(np.int64), lambda t: t.astype(np.int32)),
}
_IDENTITY = (lambda a: a, lambda t: t)


def torch_key(path: tuple) -> str:
    return ".".join(map(str, path))


def to_torch_array(path: tuple, a: np.ndarray) -> np.ndarray:
    return LAYOUTS.get(path[-1], _IDENTITY)[0](np.asarray(a))


def from_torch_array(path: tuple, t: np.ndarray) -> np.ndarray:
    return np.array(LAYOUTS.get(path[-1], _IDENTITY)[1](np.asarray(t)), order="C")


# --- reading a spec off a state_dict ----------------------------------------------------------


def spec_from_state_dict(net: str, sd: Mapping[str, np.ndarray]) -> NetSpec:
    """Kind and hyper-parameters (ngf, light, img_size / ndf, n_layers / embedding size)."""
    if "ConvBlock1.1.weight" in sd and "FC.0.weight" in sd:
        ngf = sd["ConvBlock1.1.weight"].shape[0]
        fc_in = sd["FC.0.weight"].shape[1]
        if fc_in == 4 * ngf:
            return NetSpec("generator", ngf, light=True)
        side = math.isqrt(fc_in // (4 * ngf))
        if side * side * 4 * ngf != fc_in:
            raise CheckpointError(
                f"{net}: FC.0.weight {tuple(sd['FC.0.weight'].shape)} fits no "
                f"img_size for ngf={ngf}"
            )
        return NetSpec("generator", ngf, img_size=4 * side, light=False)
    if "model.1.weight_orig" in sd:
        n_convs = sum(1 for k in sd if k.startswith("model.") and k.endswith(".weight_orig"))
        return NetSpec("discriminator", sd["model.1.weight_orig"].shape[0], n_layers=n_convs + 1)
    if "conv_6_dw.conv.weight" in sd and "linear.weight" in sd:
        return NetSpec("mobilefacenet", sd["linear.weight"].shape[0])
    raise CheckpointError(
        f"{net}: not a photo2cartoon generator, discriminator or MobileFaceNet "
        f"state_dict (first keys: {list(sd)[:3]})"
    )


def expected_layout(spec: NetSpec) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """torch key -> (shape, dtype) that a state_dict for ``spec`` must have."""
    out = {}
    for path, var in nnx.to_flat_state(nnx.state(abstract(spec))):
        dummy = np.zeros(var.shape, var.dtype)
        t = to_torch_array(path, dummy)
        out[torch_key(path)] = (t.shape, t.dtype)
    return out


def _problems(net: str, spec: NetSpec, sd: Mapping[str, np.ndarray]) -> tuple[list[str], list[str]]:
    """(problems that make ``sd`` unusable, notes on floating-point dtypes that are converted)."""
    expected = expected_layout(spec)
    problems = [
        f"{net}: missing key {k} (expected shape {s})"
        for k, (s, _) in expected.items()
        if k not in sd
    ]
    problems += [f"{net}: unexpected key {k}" for k in sd if k not in expected]
    present = [(k, s, d) for k, (s, d) in expected.items() if k in sd]
    problems += [
        f"{net}: {k} has shape {tuple(sd[k].shape)}, expected {s}"
        for k, s, _ in present
        if tuple(sd[k].shape) != s
    ]
    notes = []
    for k, _, d in present:
        found = np.asarray(sd[k]).dtype
        if found == d:
            continue
        if np.issubdtype(found, np.floating) == np.issubdtype(d, np.floating):
            notes.append(f"{net}: {k} is {found}, converted to {np.dtype(d)}")
        else:
            problems.append(f"{net}: {k} has dtype {found}, expected {np.dtype(d)}")
    return problems, notes


def state_from_torch(spec: NetSpec, sd: Mapping[str, np.ndarray]) -> nnx.State:
    """Our state for ``spec`` from a checked torch state_dict (numpy arrays)."""
    flat = [
        (path, var.replace(from_torch_array(path, sd[torch_key(path)]).astype(var.dtype)))
        for path, var in nnx.to_flat_state(nnx.state(abstract(spec)))
    ]
    return nnx.from_flat_state(flat)


def state_to_torch(state: nnx.State) -> dict[str, np.ndarray]:
    """torch key -> numpy array in torch's layout and dtype."""
    return {
        torch_key(path): to_torch_array(path, np.asarray(var[...]))
        for path, var in nnx.to_flat_state(state)
    }


# --- .pt / .pth files ------------------------------------------------------------------------


def _torch():
    """torch, or a CheckpointError naming the extra that brings it."""
    try:
        import p2c_jax.pytorch  # noqa: F401 - raises the one message naming the extra
    except ImportError as e:
        raise CheckpointError(f"writing a .pt file: {e}") from None
    import torch

    return torch


def read_torch_file(path: str | Path) -> dict[str, dict[str, np.ndarray]]:
    """``{net: {key: array}}`` from an original ``.pt``/``.pth``; needs no torch and never
    unpickles code (``torch_file``)."""
    try:
        obj = torch_file.read(path)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except torch_file.TorchFileError as e:
        raise CheckpointError(f"{path}: not a PyTorch checkpoint ({e})") from None
    except ValueError as e:  # an unsupported path scheme (paths.as_path)
        raise CheckpointError(str(e)) from None
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(
            f"{path}: not a PyTorch checkpoint of state_dicts (holds {type(obj).__name__})"
        )
    if all(isinstance(v, np.ndarray) for v in obj.values()):
        return {FACENET: dict(obj)}
    bad = [
        k
        for k, v in obj.items()
        if not (isinstance(v, Mapping) and all(isinstance(t, np.ndarray) for t in v.values()))
    ]
    if bad:
        raise CheckpointError(f"{path}: entries {bad} are not state_dicts")
    return {net: dict(sd) for net, sd in obj.items()}


def load_torch(
    path: str | Path, nets: list[str] | None = None, *, log: Callable[[str], None] | None = None
) -> NetWeights:
    """Our weights for every net (or ``nets``) in an original checkpoint, all checked first.

    Raises ``CheckpointError`` listing every missing key, unexpected key and shape mismatch.
    """
    raw = read_torch_file(path)
    if nets is not None:
        absent = [n for n in nets if n not in raw]
        if absent:
            raise CheckpointError(f"{path}: has no {', '.join(absent)} (it holds {', '.join(raw)})")
        raw = {n: raw[n] for n in nets}
    unknown = [n for n in raw if n not in TRAINING_NETS and n != FACENET]
    if unknown:
        raise CheckpointError(f"{path}: unknown nets {unknown}; expected some of {TRAINING_NETS}")
    specs, problems, notes = {}, [], []
    for net, sd in raw.items():
        try:
            specs[net] = spec_from_state_dict(net, sd)
        except CheckpointError as e:
            problems.append(str(e))
            continue
        net_problems, net_notes = _problems(net, specs[net], sd)
        problems, notes = problems + net_problems, notes + net_notes
    if problems:
        raise CheckpointError(
            f"{path}: does not fit the photo2cartoon networks:\n  " + "\n  ".join(problems)
        )
    if notes:
        kinds = sorted({n.split(" is ")[1] for n in notes})
        warnings.warn(
            f"{path}: {len(notes)} tensors converted ({'; '.join(kinds)}), e.g. {notes[0]}",
            stacklevel=2,
        )
    if log is not None and FACENET not in raw:
        missing = [n for n in TRAINING_NETS if n not in raw]
        log(
            f"{path}: found {', '.join(raw)}"
            + (f"; missing {', '.join(missing)}" if missing else "")
        )
    return {net: (specs[net], state_from_torch(specs[net], sd)) for net, sd in raw.items()}


def save_torch(path: str | Path, weights: NetWeights) -> None:
    """Write what the original loads: a bare state_dict for ``facenet``, else ``{net: state_dict}``."""
    torch = _torch()
    sds = {
        net: {k: torch.from_numpy(np.array(a, order="C")) for k, a in state_to_torch(st).items()}
        for net, (_, st) in weights.items()
    }
    obj = sds[FACENET] if set(sds) == {FACENET} else sds
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    paths.write_bytes_atomic(path, buffer.getvalue())


def load_any(
    path: str | Path, nets: list[str] | None = None, *, log: Callable[[str], None] | None = None
) -> NetWeights:
    """Weights from an original ``.pt``/``.pth`` file, our checkpoint directory or a training
    workdir (local or ``gs://``)."""
    try:
        is_dir = paths.as_path(path).is_dir()
    except ValueError as e:  # an unsupported path scheme
        raise CheckpointError(str(e)) from None
    if is_dir:
        return checkpoint.load_nets(path, nets)
    return load_torch(path, nets, log=log)


def load_face_id(path: str | Path) -> FaceID:
    """The Face-ID net from InsightFace's ``model_mobilefacenet.pth`` or our checkpoint (or
    training workdir) holding ``facenet``."""
    spec, state = load_any(path, [FACENET])[FACENET]
    if spec.kind != "mobilefacenet":
        raise CheckpointError(f"{path}: face-ID weights must be a MobileFaceNet, got a {spec.kind}")
    return FaceID(spec, state)
