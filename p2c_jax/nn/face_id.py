"""The Face-ID loss of photo2cartoon (the original's ``models/face_features.py``), NHWC.

Both images are cropped to the face region the original assumes for aligned 256-style portraits,
resized to 112 x 112 (bilinear, ``align_corners=True``), embedded by a frozen MobileFaceNet in
inference mode, and compared: ``loss = mean(1 - cosine(emb(a), emb(b)))`` over the batch.
The original returns the per-sample vector and works only at batch 1; the mean is the same
value there and the global-batch mean elsewhere.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from p2c_jax.nn.models import NetSpec, graphdef
from p2c_jax.nn.numerics import FLOAT32, Numerics

FACE_SIZE = 112


def crop_box(h: int, w: int) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the original's face crop, a centred square."""
    top = int(h / 2.1 * (0.8 - 0.33))
    bottom = int(h - (h / 2.1 * 0.3))
    size = bottom - top
    left = int(w / 2 - size / 2)
    return top, bottom, left, left + size


def _align_corners_matrix(n_in: int, n_out: int, dtype=np.float32) -> np.ndarray:
    """[n_out, n_in] linear-interpolation weights of torch's bilinear, align_corners=True.

    torch computes the source coordinates in the image's precision: so do we, for equal weights.
    """
    f = np.dtype(dtype).type
    m = np.zeros((n_out, n_in), dtype)
    scale = f((n_in - 1) / (n_out - 1)) if n_out > 1 else f(0)
    for o in range(n_out):
        src = f(o) * scale
        i0 = min(int(np.floor(src)), n_in - 1)
        i1 = min(i0 + 1, n_in - 1)
        frac = f(src - f(i0))
        m[o, i0] += 1 - frac
        m[o, i1] += frac
    return m


def face_crop(x: jax.Array, size: int = FACE_SIZE) -> jax.Array:
    """``[N,H,W,C]`` -> the original's face crop resized to ``[N,size,size,C]``."""
    top, bottom, left, right = crop_box(x.shape[1], x.shape[2])
    x = x[:, top:bottom, left:right]
    dtype = np.float64 if x.dtype == jnp.float64 else np.float32
    mh = jnp.asarray(_align_corners_matrix(x.shape[1], size, dtype))
    mw = jnp.asarray(_align_corners_matrix(x.shape[2], size, dtype))
    x = jnp.einsum("oh,nhwc->nowc", mh, x, precision=jax.lax.Precision.HIGHEST)
    return jnp.einsum("pw,nowc->nopc", mw, x, precision=jax.lax.Precision.HIGHEST)


def cosine_similarity(a: jax.Array, b: jax.Array, eps: float = 1e-8) -> jax.Array:
    """``torch.cosine_similarity(a, b, dim=-1)``."""
    dot = jnp.sum(a * b, axis=-1)
    norms = jnp.sqrt(jnp.maximum(jnp.sum(a * a, -1) * jnp.sum(b * b, -1), eps * eps))
    return dot / norms


class FaceID:
    """A frozen MobileFaceNet as pure functions of its state (a pure dict, no gradients).

    From a file: ``p2c_jax.weights.convert.load_face_id``."""

    def __init__(self, spec: NetSpec, state: nnx.State):
        if spec.kind != "mobilefacenet":
            raise ValueError(f"face-ID weights must be a MobileFaceNet, got a {spec.kind}")
        self.spec = spec
        self.state = nnx.to_pure_dict(state)

    def embed(self, state, x: jax.Array, numerics: Numerics = FLOAT32) -> jax.Array:
        """Embeddings ``[N, 512]`` of the face crops of ``x`` ``[N,H,W,3]`` in [-1, 1]."""
        state = jax.lax.stop_gradient(state)
        return nnx.merge(graphdef(self.spec, numerics), state)(face_crop(x))
