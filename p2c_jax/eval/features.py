"""Features of image sets: batches sharded over every local device, and cached folder statistics.

``Sharded`` runs a jitted ``fn(state, batch)`` on fixed-size batches split over the devices
(state replicated, the last batch padded, so it compiles once), keeping the next batch in
flight while the previous one is fetched. ``reference`` gives the Inception features and
Gaussian statistics of a folder of images, cached as ``.npz`` under a key of the folder's
contents (names and bytes), the image size and the Inception weights, as clean-fid caches its
reference statistics; a ``.npz`` written here can also be passed instead of a folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from etils import epath
from PIL import Image

from p2c_jax.data.input_pipeline import list_images
from p2c_jax.eval import inception, metrics
from p2c_jax.eval.inception_weights import InceptionWeights
from p2c_jax.parallel import batch_sharding, make_mesh, replicated

CACHE_VERSION = "1"  # bump when the input handling of the features changes


def default_batch_size(devices: Sequence[jax.Device]) -> int:
    """Images per batch over ``devices``: 1 per CPU device (XLA:CPU measured fastest one image
    at a time, bench/eval_features.py), 32 per accelerator (by the platform of ``devices[0]``)."""
    per = 1 if devices[0].platform == "cpu" else 32
    return per * len(devices)


class Sharded:
    """``fn(state, x)`` over batches of ``x`` sharded on ``devices`` (default: all local)."""

    def __init__(
        self,
        fn: Callable,
        state: Any,
        batch_size: int | None = None,
        devices: Sequence | None = None,
    ):
        devices = list(devices or jax.local_devices())
        mesh = make_mesh(devices)
        batch_size = batch_size or default_batch_size(devices)
        self.batch_size = math.ceil(max(1, batch_size) / len(devices)) * len(devices)
        self._replicated = replicated(mesh)
        self.state = None if state is None else self.replicate(state)
        self._data = batch_sharding(mesh)
        self._fn = jax.jit(fn)

    def replicate(self, tree: Any) -> Any:
        """``tree`` on every device of the mesh (a state for ``__call__``)."""
        return jax.device_put(tree, self._replicated)

    def _dispatch(self, state: Any, x: np.ndarray):
        pad = np.zeros((self.batch_size - len(x), *x.shape[1:]), x.dtype)
        return self._fn(state, jax.device_put(np.concatenate([x, pad]), self._data))

    def __call__(
        self,
        x: np.ndarray,
        progress: Callable[[int], None] | None = None,
        state: Any = None,
    ) -> Any:
        """``fn`` of every row of ``x``, outputs concatenated on the host (numpy); ``state``
        (from ``replicate``) replaces the one given at construction."""
        if len(x) == 0:
            raise ValueError("no images")
        state = self.state if state is None else state
        outs, pending = [], None
        for start in range(0, len(x), self.batch_size):
            chunk = x[start : start + self.batch_size]
            current = (self._dispatch(state, chunk), len(chunk))
            if pending is not None:
                outs.append(self._fetch(*pending, progress))
            pending = current
        outs.append(self._fetch(*pending, progress))
        return jax.tree.map(lambda *a: np.concatenate(a), *outs)

    @staticmethod
    def _fetch(out, n: int, progress):
        host = jax.tree.map(lambda a: np.asarray(a)[:n], jax.device_get(out))
        if progress is not None:
            progress(n)
        return host


class FeatureExtractor(Sharded):
    """Inception pool features of RGB images in [0, 255] (uint8 or float)."""

    def __init__(
        self,
        weights: InceptionWeights,
        batch_size: int | None = None,
        devices: Sequence | None = None,
    ):
        super().__init__(inception.features_fn(weights.div), weights.state, batch_size, devices)
        self.fingerprint = weights.fingerprint


# --- image folders ------------------------------------------------------------------------------


def load_folder(folder: str | Path, size: int | None = None) -> tuple[list[Path], np.ndarray]:
    """(files, uint8 RGB ``[N, S, S, 3]``) of the images under ``folder`` in the dataset order;
    resized to ``size`` x ``size`` with PIL's bilinear filter (the test transform's) when given."""
    files = list_images(folder)
    if not files:
        raise FileNotFoundError(f"{folder}: no images")
    images = []
    for f in files:
        with Image.open(f) as im:
            im = im.convert("RGB")
            if size is not None and im.size != (size, size):
                im = im.resize((size, size), Image.BILINEAR)
            images.append(np.asarray(im))
    shapes = {a.shape for a in images}
    if len(shapes) > 1:
        raise ValueError(f"{folder}: images of several sizes {sorted(shapes)}; pass a size")
    return files, np.stack(images)


def images_key(images: np.ndarray, fingerprint: str) -> str:
    """A hash of the decoded (and resized) images and the Inception weights: the cache key."""
    h = hashlib.sha1(f"{CACHE_VERSION}/{fingerprint}/{images.shape}/{images.dtype}".encode())
    h.update(np.ascontiguousarray(images).tobytes())
    return h.hexdigest()


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME`` (or ``~/.cache``) ``/p2c-jax/fid_stats``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "p2c-jax" / "fid_stats"


@dataclasses.dataclass
class Reference:
    """Features (when known) and Gaussian statistics of a reference image set."""

    features: np.ndarray | None
    mu: np.ndarray
    sigma: np.ndarray
    fingerprint: str
    source: str

    @classmethod
    def of(cls, features: np.ndarray, fingerprint: str, source: str) -> Reference:
        return cls(features, *metrics.gaussian_stats(features), fingerprint, source)

    def save(self, path: str | os.PathLike) -> None:
        """Write a ``.npz`` (any ``epath`` location: a local path or ``gs://``)."""
        arrays = {"mu": self.mu, "sigma": self.sigma}
        if self.features is not None:
            arrays["features"] = self.features
        buf = io.BytesIO()
        np.savez(buf, fingerprint=self.fingerprint, source=self.source, **arrays)
        path = epath.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(buf.getvalue())

    @classmethod
    def load(cls, path: str | os.PathLike) -> Reference:
        with np.load(io.BytesIO(epath.Path(path).read_bytes())) as z:
            if "mu" not in z or "sigma" not in z:
                raise ValueError(f"{path}: no mu and sigma arrays")
            return cls(
                np.asarray(z["features"]) if "features" in z else None,
                np.asarray(z["mu"], np.float64),
                np.asarray(z["sigma"], np.float64),
                str(z["fingerprint"]) if "fingerprint" in z else "",
                str(z["source"]) if "source" in z else str(path),
            )


def reference_of(
    images: np.ndarray,
    extractor: FeatureExtractor,
    cache_dir: str | os.PathLike | None = None,
    source: str = "",
    progress: Callable[[int], None] | None = None,
) -> Reference:
    """The reference statistics of ``images`` (uint8 RGB), cached under ``cache_dir``."""
    cached = None
    if cache_dir is not None:
        cached = epath.Path(cache_dir) / f"{images_key(images, extractor.fingerprint)}.npz"
        if cached.exists():
            return Reference.load(cached)
    ref = Reference.of(extractor(images, progress), extractor.fingerprint, source)
    if cached is not None:
        ref.save(cached)
    return ref


def reference(
    source: str | Path,
    extractor: FeatureExtractor,
    size: int | None = None,
    cache_dir: str | Path | None = None,
    progress: Callable[[int], None] | None = None,
) -> Reference:
    """The reference statistics of a folder's images (resized to ``size``; cached under
    ``cache_dir``) or of a ``.npz`` written here; one made with other Inception weights is
    refused (its numbers would not compare)."""
    source = Path(source)
    if source.is_file():
        ref = Reference.load(source)
        if ref.fingerprint and ref.fingerprint != extractor.fingerprint:
            raise ValueError(
                f"{source}: made with other Inception weights ({ref.fingerprint}, these are "
                f"{extractor.fingerprint})"
            )
        return ref
    _, images = load_folder(source, size)
    return reference_of(images, extractor, cache_dir, str(source), progress)
