"""Segmentation backends: a uint8 mask (255 = person) the size of the aligned crop.

- `FrozenGraphSegmenter`: the original's `seg_model_384.pb` (TensorFlow frozen
  graph, input `input_1:0` 1 x 384 x 384 x 3 in [0, 1], output `sigmoid/Sigmoid:0`),
  with the original's resizing around it. Needs the file and TensorFlow.
- `GrabCutSegmenter` (default): OpenCV's GrabCut seeded from the landmarks;
  no model file, so it runs anywhere.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from .extras import tensorflow

SEG_SIZE = 384


class Segmenter(Protocol):
    def __call__(self, face: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """uint8 mask of face.shape[:2]; landmarks are in the crop's pixels."""


def probability_to_mask(prob: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The original's output transform: bilinear resize to the crop, x 255, truncate."""
    prob = np.asarray(prob, np.float32)
    resized = cv2.resize(prob, (shape[1], shape[0]))
    return (resized * 255).astype(np.uint8)


class FrozenGraphSegmenter:
    """Runs the original's TensorFlow frozen graph `seg_model_384.pb`."""

    def __init__(
        self,
        model_path: str | Path,
        input_name: str = "input_1:0",
        output_name: str = "sigmoid/Sigmoid:0",
    ):
        tf = tensorflow("--segmentation pb")
        graph_def = tf.compat.v1.GraphDef.FromString(Path(model_path).read_bytes())
        self._graph = tf.Graph()
        with self._graph.as_default():
            tf.import_graph_def(graph_def, name="")
        self._session = tf.compat.v1.Session(graph=self._graph)
        self._input = self._graph.get_tensor_by_name(input_name)
        self._output = self._graph.get_tensor_by_name(output_name)

    def __call__(self, face: np.ndarray, landmarks: np.ndarray | None = None) -> np.ndarray:
        small = cv2.resize(face, (SEG_SIZE, SEG_SIZE), interpolation=cv2.INTER_AREA)
        prob = self._session.run(self._output, feed_dict={self._input: (small / 255.0)[None]})[0]
        return probability_to_mask(np.squeeze(prob), face.shape)


class GrabCutSegmenter:
    """Person mask by GrabCut on a downscaled crop, seeded from the 68 landmarks.

    Seeds: the face's convex hull is foreground; an ellipse over the head
    (hair) and a band below the chin (neck, shoulders) are probably foreground;
    the top edge and the side edges above the chin are background; the rest is
    probably background. The binary result is feathered for a soft edge.
    """

    def __init__(self, work_side: int = 160, iterations: int = 4, feather: float = 0.01):
        self.work_side = work_side
        self.iterations = iterations
        self.feather = feather

    def seeds(self, shape: tuple[int, int], landmarks: np.ndarray) -> np.ndarray:
        """The GrabCut seed mask for a crop of `shape` with landmarks in its pixels."""
        h, w = shape
        seeds = np.full((h, w), cv2.GC_PR_BGD, np.uint8)
        x0, y0 = landmarks.min(axis=0)
        x1, y1 = landmarks.max(axis=0)
        fw, fh = x1 - x0, y1 - y0
        cx = (x0 + x1) / 2
        head = (round(cx), round(y0 + 0.1 * fh)), (round(0.75 * fw), round(0.95 * fh))
        cv2.ellipse(seeds, head[0], head[1], 0, 0, 360, cv2.GC_PR_FGD, -1)
        body = np.array(
            [
                [x0 + 0.2 * fw, y1 - 0.1 * fh],
                [x1 - 0.2 * fw, y1 - 0.1 * fh],
                [x1 + 0.6 * fw, h],
                [x0 - 0.6 * fw, h],
            ]
        )
        cv2.fillPoly(seeds, [np.round(body).astype(np.int32)], cv2.GC_PR_FGD)
        cv2.fillConvexPoly(seeds, cv2.convexHull(np.round(landmarks).astype(np.int32)), cv2.GC_FGD)
        edge = max(1, round(0.02 * h))
        chin = int(min(h, max(0, y1)))
        seeds[:edge] = cv2.GC_BGD
        seeds[:chin, :edge] = cv2.GC_BGD
        seeds[:chin, w - edge :] = cv2.GC_BGD
        return seeds

    def __call__(self, face: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        h, w = face.shape[:2]
        scale = min(1.0, self.work_side / max(h, w))
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        small = cv2.resize(face, size, interpolation=cv2.INTER_AREA)
        seeds = self.seeds((size[1], size[0]), np.asarray(landmarks, np.float64) * scale)
        bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
        cv2.setRNGSeed(0)
        cv2.grabCut(small, seeds, None, bgd, fgd, self.iterations, cv2.GC_INIT_WITH_MASK)
        prob = np.isin(seeds, (cv2.GC_FGD, cv2.GC_PR_FGD)).astype(np.float32)
        sigma = self.feather * max(size)
        if sigma > 0:
            prob = cv2.GaussianBlur(prob, (0, 0), sigma)
        return probability_to_mask(prob, face.shape)


BACKENDS = ("grabcut", "pb")


def make_segmenter(name: str, model_path: str | Path | None = None) -> Segmenter:
    """Build a segmentation backend by its CLI name."""
    if name == "grabcut":
        return GrabCutSegmenter()
    if name == "pb":
        if model_path is None:
            raise ValueError(
                "the 'pb' segmentation backend needs --seg_model PATH (seg_model_384.pb)"
            )
        return FrozenGraphSegmenter(model_path)
    raise ValueError(f"unknown segmentation backend {name!r}; choose from {BACKENDS}")
