"""A generator scored on a photo set against a cartoon set: FID, KID and identity.

The photos are translated by the generator, each cartoon is quantised as the original's
``test.py`` saves it (``(y + 1) * 127.5`` truncated to uint8), and its Inception features (and
MobileFaceNet embedding) are computed in the same compiled program, on batches sharded over
every local device, so the cartoons never leave the devices as images (dlib's embedder, on the
CPU, gets them on the host). The metrics compare these features with the reference
statistics of the cartoon set, and the embeddings with those of the photos.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from p2c_jax.data.augment import to_unit_range
from p2c_jax.eval import inception, metrics
from p2c_jax.eval.features import Reference, Sharded
from p2c_jax.eval.identity import DlibIdentity, MobileFaceNetIdentity, cosine
from p2c_jax.eval.inception_weights import InceptionWeights
from p2c_jax.inference import forward
from p2c_jax.nn.models import NetSpec

Embedder = MobileFaceNetIdentity | DlibIdentity


def quantize(y: jax.Array) -> jax.Array:
    """Generator output in [-1, 1] -> the uint8 values of the saved cartoon (as float32)."""
    return jnp.clip(jnp.floor((y + 1.0) * 127.5), 0.0, 255.0)


@dataclasses.dataclass
class Scores:
    """One evaluation; ``identity`` is None without an embedder, ``kid`` without reference
    features (a ``.npz`` of statistics only)."""

    fid: float
    kid: float | None
    kid_std: float | None
    identity: float | None
    n_photos: int
    n_reference: int

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def scalars(self) -> dict[str, float]:
        """The metrics that exist, for TensorBoard and checkpoint selection."""
        keys = ("fid", "kid", "kid_std", "identity")
        return {k: float(v) for k, v in self.as_dict().items() if k in keys and v is not None}


class Evaluator:
    """Scores generators on ``photos`` (uint8 ``[N, S, S, 3]``, S the generator's image size)
    against ``reference`` (the cartoon set's features or statistics)."""

    def __init__(
        self,
        weights: InceptionWeights,
        photos: np.ndarray,
        reference: Reference,
        identity: Embedder | None = None,
        batch_size: int | None = None,
        devices: Sequence | None = None,
        kid_subsets: int = metrics.KID_SUBSETS,
        kid_subset_size: int = metrics.KID_SUBSET_SIZE,
    ):
        if reference.fingerprint and reference.fingerprint != weights.fingerprint:
            raise ValueError("the reference statistics were made with other Inception weights")
        if len(photos) < 2:
            raise ValueError(f"FID needs at least 2 photos, got {len(photos)}")
        self.weights, self.reference, self.identity = weights, reference, identity
        self.photos = np.asarray(photos, np.uint8)
        self.kid_subsets, self.kid_subset_size = kid_subsets, kid_subset_size
        self.batch_size, self.devices = batch_size, devices
        self._programs: dict[NetSpec, Sharded] = {}
        self._fixed = None  # replicated inception (and face) state, made with the first program
        self.photo_embeddings = identity(self.photos) if identity is not None else None

    def _program(self, spec: NetSpec) -> Sharded:
        if spec not in self._programs:
            gen = forward(spec)
            feats = inception.features_fn(self.weights.div)
            face = getattr(self.identity, "device_fn", None)

            def run(state, x):
                cartoon = quantize(gen(state["gen"], x)[0])
                out = {"features": feats(state["inception"], cartoon)}
                if face is not None:
                    out["embeddings"] = face(state["face"], cartoon)
                elif self.identity is not None:
                    out["cartoons"] = cartoon.astype(jnp.uint8)
                return out

            self._programs[spec] = Sharded(run, None, self.batch_size, self.devices)
        program = self._programs[spec]
        if self._fixed is None:
            fixed = {"inception": self.weights.state}
            if getattr(self.identity, "device_fn", None) is not None:
                fixed["face"] = self.identity.state
            self._fixed = program.replicate(fixed)
        return program

    def __call__(
        self,
        spec: NetSpec,
        gen_state: nnx.State,
        progress: Callable[[int], None] | None = None,
    ) -> Scores:
        """The scores of the generator ``spec`` with weights ``gen_state``."""
        program = self._program(spec)
        state = {**self._fixed, "gen": program.replicate(gen_state)}
        out = program(to_unit_range(self.photos), progress, state=state)
        fake = out["features"]
        ref = self.reference
        fid = metrics.frechet_distance(ref.mu, ref.sigma, *metrics.gaussian_stats(fake))
        kid = kid_std = None
        if ref.features is not None:
            kid, kid_std = metrics.kid(fake, ref.features, self.kid_subsets, self.kid_subset_size)
        identity = None
        if self.identity is not None:
            emb = out["embeddings"] if "embeddings" in out else self.identity(out["cartoons"])
            identity = float(np.mean(cosine(self.photo_embeddings, emb)))
        n_ref = len(ref.features) if ref.features is not None else 0
        return Scores(fid, kid, kid_std, identity, len(self.photos), n_ref)
