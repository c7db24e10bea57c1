"""Identity similarity: the cosine of face embeddings of each photo and its cartoon.

Two embedders:

- ``MobileFaceNetIdentity``: the Face-ID loss's own net (InsightFace's MobileFaceNet from the
  user's ``model_mobilefacenet.pth`` or our checkpoint), on the loss's face crop resized to 112
  (``nn.face_id``), jitted and sharded over the devices like the Inception features;
- ``DlibIdentity``: dlib's face-recognition ResNet (``dlib_face_recognition_resnet_model_v1``,
  public domain, shipped by the ``face-recognition-models`` package), offline on the CPU. It is
  run without face detection or landmarks: the evaluated images are aligned portraits (the
  dataset's preprocessing puts every face in the same place), so one fixed box, the one dlib's
  ``get_face_chip`` takes on such portraits, is cut and resized to its 150 x 150 input; a
  cartoon's landmarks would not be reliably found anyway. The values compare checkpoints with
  each other; dlib's 0.6 distance threshold is calibrated on photos, not on cartoons.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import jax
import numpy as np

from p2c_jax.data.augment import to_unit_range
from p2c_jax.eval.features import Sharded
from p2c_jax.nn.face_id import FaceID
from p2c_jax.weights.convert import load_face_id
from preprocessing.extras import missing, require

DLIB_PACKAGE = "face_recognition_models"
DLIB_MODEL = "models/dlib_face_recognition_resnet_model_v1.dat"
DLIB_SIZE = 150


def cosine(a: np.ndarray, b: np.ndarray, eps: float = 1e-8) -> np.ndarray:
    """Row-wise cosine similarity in float64 (``torch.cosine_similarity``'s eps rule)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    norms = np.sqrt(np.maximum((a * a).sum(-1) * (b * b).sum(-1), eps * eps))
    return (a * b).sum(-1) / norms


class MobileFaceNetIdentity:
    """Embeddings ``[N, 512]`` of RGB images in [0, 255] by the Face-ID loss's MobileFaceNet."""

    name = "mobilefacenet"

    def __init__(
        self,
        face: FaceID | str | Path,
        batch_size: int | None = None,
        devices: Sequence | None = None,
    ):
        self.face = face if isinstance(face, FaceID) else load_face_id(face)
        self.state = self.face.state
        self._sharded = Sharded(self.device_fn, self.state, batch_size, devices)

    def device_fn(self, state, images: jax.Array) -> jax.Array:
        """The jittable embedding of a batch (used inside the evaluator's fused program)."""
        return self.face.embed(state, to_unit_range(images))

    def __call__(self, images: np.ndarray, progress: Callable[[int], None] | None = None):
        return self._sharded(images, progress)


def dlib_model_path() -> Path:
    """The face-recognition ResNet file of the installed ``face-recognition-models``."""
    spec = importlib.util.find_spec(DLIB_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise missing("eval", DLIB_PACKAGE, "the dlib identity embedder")
    path = Path(next(iter(spec.submodule_search_locations))) / DLIB_MODEL
    if not path.is_file():
        raise FileNotFoundError(path)
    return path


# dlib's own face chip (get_face_chip_details, padding 0.25) of photo2cartoon's aligned
# portraits, as fractions of the image: measured on aligned 256 x 256 photos and their cartoons
# (left 38-44, top 65-68, side 170-180 px), one fixed box since alignment puts faces alike.
DLIB_CHIP_TOP, DLIB_CHIP_SIDE = 0.265, 0.67


def face_chip(image: np.ndarray, size: int = DLIB_SIZE) -> np.ndarray:
    """dlib's face chip of an aligned uint8 RGB portrait, from a fixed box, ``size`` square."""
    h, w = image.shape[:2]
    side, top = round(DLIB_CHIP_SIDE * h), round(DLIB_CHIP_TOP * h)
    left = (w - side) // 2
    crop = np.ascontiguousarray(image[top : top + side, max(left, 0) : left + side])
    interp = cv2.INTER_AREA if crop.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(crop, (size, size), interpolation=interp)


class DlibIdentity:
    """Embeddings ``[N, 128]`` by dlib's face-recognition ResNet on the face crops (CPU)."""

    name = "dlib"
    device_fn = None

    def __init__(self, model_path: str | Path | None = None):
        dlib = require("eval", "dlib", "the dlib identity embedder")
        self._net = dlib.face_recognition_model_v1(str(model_path or dlib_model_path()))

    def __call__(self, images: np.ndarray, progress: Callable[[int], None] | None = None):
        chips = [face_chip(np.asarray(im, np.uint8)) for im in images]
        out = np.asarray(self._net.compute_face_descriptor(chips), np.float32)
        if progress is not None:
            progress(len(images))
        return out.reshape(len(images), -1)


def default_embedder(
    faceid_weights: str | Path | FaceID | None, batch_size: int | None = None
) -> MobileFaceNetIdentity | DlibIdentity:
    """MobileFaceNet when its weights are given, else dlib's ResNet (ImportError if absent)."""
    if faceid_weights:
        return MobileFaceNetIdentity(faceid_weights, batch_size)
    return DlibIdentity()
