"""Does it learn? Train on the offline demo dataset for a fixed time with ``--eval_freq``, then
plot KID, FID and identity similarity over the steps and draw the test photos' cartoons at the
start, middle and end.

    python bench/learning.py [--minutes 20] [--img_size 96] [--ch 8] [--eval_freq 200] [--lr 1e-4]

Goal: KID against the cartoon test split falls to at most a third of its step-0 value while the
identity similarity stays above its step-0 level. The run is ``train.py`` itself (in this
process): ``--dataset`` a demo dataset with ``--n_test`` test images per domain, Face-ID loss
off (the demo photos are not all faces), constant learning rate, every evaluated checkpoint
kept; it is stopped by SIGTERM after ``--minutes`` (the loop saves and returns). Writes
``<docs>/learning_curve.png``, ``<docs>/learning_samples.png`` and ``<docs>/learning.json``,
with the KID of the test photos themselves (where a generator copying its input would score).
``--replot`` draws them again from an earlier run's ``--workdir`` and ``--docs``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def train(args, data: Path, work: Path) -> float:
    from p2c_jax.cli import train as train_cli

    argv = [
        "--dataset", str(data), "--workdir", str(work), "--img_size", str(args.img_size),
        "--ch", str(args.ch), "--iteration", str(args.iteration), "--batch_size", "1",
        "--lr", str(args.lr),
        "--decay_flag", "false", "--faceid_weight", "0", "--eval_freq", str(args.eval_freq),
        "--select_by", "kid", "--print_freq", str(args.eval_freq), "--save_freq", "0",
        "--keep", "100000", "--log_every", "50", "--progress", "false", "--seed", "0",
    ]  # fmt: skip
    if args.inception:
        argv += ["--inception_weights", args.inception]
    timer = threading.Timer(args.minutes * 60, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    t0 = time.time()
    try:
        if train_cli.main(argv) != 0:
            raise SystemExit("training failed")
    finally:
        timer.cancel()
    return time.time() - t0


def photos_kid(args, data: Path) -> float:
    """KID of the test photos themselves against the test cartoons: where a generator that
    copied its input would score."""
    from p2c_jax.eval import features, metrics
    from p2c_jax.eval.inception_weights import load_inception

    extractor = features.FeatureExtractor(load_inception(args.inception or None))
    photos, cartoons = (extractor(features.load_folder(data / s)[1]) for s in ("testA", "testB"))
    return metrics.kid(photos, cartoons)[0]


def cartoons(args, data: Path, work: Path, steps: list[int]):
    """(test photos uint8, {step: their cartoons uint8}) for step 0 (the seed's fresh nets) and
    each kept checkpoint in ``steps``."""
    import numpy as np

    from p2c_jax.data.augment import to_unit_range
    from p2c_jax.eval.evaluator import quantize
    from p2c_jax.inference import forward
    from p2c_jax.nn.models import training_specs
    from p2c_jax.train.evaluation import held_out_uint8
    from p2c_jax.train.state import fresh_nets
    from p2c_jax.weights.checkpoint import CHECKPOINTS, load_nets

    photos = held_out_uint8(data, "A", args.img_size, 8)
    spec = training_specs(args.ch, args.img_size, True)["genA2B"]
    run = forward(spec)
    out = {}
    for s in steps:
        if s == 0:
            state = fresh_nets(training_specs(args.ch, args.img_size, True), 0)["genA2B"]
        else:
            state = load_nets(work / CHECKPOINTS / str(s), ["genA2B"])["genA2B"][1]
        out[s] = np.asarray(quantize(run(state, to_unit_range(photos))[0])).astype(np.uint8)
    return photos, out


def compact_png(path: Path) -> None:
    """Rewrite a PNG with a 256-colour palette (a third of the size, for docs/)."""
    from PIL import Image

    with Image.open(path) as im:
        small = im.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT)
    small.save(path, optimize=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=20)
    p.add_argument("--img_size", type=int, default=96)
    p.add_argument("--ch", type=int, default=8)
    p.add_argument("--eval_freq", type=int, default=200)
    p.add_argument("--lr", type=float, default=1e-4, help="the original's 1e-4 by default")
    p.add_argument("--iteration", type=int, default=100_000, help="upper bound; time stops it")
    p.add_argument("--n_test", type=int, default=32, help="demo test images per domain")
    p.add_argument("--inception", default="", help="FID Inception weights (see evaluate.py)")
    p.add_argument("--workdir", default="/tmp/p2c-learning")
    p.add_argument("--docs", default=str(ROOT / "docs"))
    p.add_argument(
        "--replot", action="store_true", help="no training: redraw from --workdir and --docs"
    )
    args = p.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from p2c_jax.data.demo import build_demo
    from p2c_jax.train.evaluation import HISTORY_FILE
    from p2c_jax.weights.checkpoint import EVAL_DIR

    work = Path(args.workdir)
    data = build_demo(work.parent / f"{work.name}-demo", n_test=args.n_test, size=args.img_size)
    if args.replot:
        seconds = json.loads((Path(args.docs) / "learning.json").read_text())["minutes"] * 60
    else:
        seconds = train(args, data, work / "run")
    copy_kid = photos_kid(args, data)
    history = [
        json.loads(line)
        for line in (work / "run" / EVAL_DIR / HISTORY_FILE).read_text().splitlines()
    ]
    steps = [h["step"] for h in history]
    kid = np.array([h["kid"] for h in history])
    fid = np.array([h["fid"] for h in history])
    ident = np.array([h["identity"] if h["identity"] is not None else np.nan for h in history])

    docs = Path(args.docs)
    docs.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, values, name in zip(axes, (kid, fid, ident), ("KID", "FID", "identity (cosine)")):
        ax.plot(steps, values, "o-")
        ax.set_xlabel("step")
        ax.set_title(name)
        ax.grid(alpha=0.3)
    axes[0].axhline(kid[0] / 3, color="grey", ls="--", label="step 0 / 3")
    axes[0].axhline(copy_kid, color="grey", ls=":", label="the photos themselves")
    axes[0].legend()
    axes[2].axhline(ident[0], color="grey", ls="--", label="step 0")
    axes[2].legend()
    fig.suptitle(
        f"demo dataset, {args.img_size} x {args.img_size}, ch {args.ch}, batch 1: "
        f"{steps[-1]} steps in {seconds / 60:.1f} min ({history[0]['n_photos']} test photos)"
    )
    fig.tight_layout()
    fig.savefig(docs / "learning_curve.png", dpi=90)

    shown = sorted({0, steps[len(steps) // 2], steps[-1]})
    photos, made = cartoons(args, data, work / "run", shown)
    rows = [np.concatenate(list(photos), 1)] + [np.concatenate(list(made[s]), 1) for s in shown]
    fig, axes = plt.subplots(len(rows), 1, figsize=(12, 1.6 * len(rows)))
    for ax, row, label in zip(axes, rows, ["test photos"] + [f"step {s}" for s in shown]):
        ax.imshow(row)
        ax.set_axis_off()
        ax.set_title(label, fontsize=9, loc="left")
    fig.tight_layout()
    fig.savefig(docs / "learning_samples.png", dpi=90)
    for name in ("learning_curve.png", "learning_samples.png"):
        compact_png(docs / name)

    result = {
        "minutes": seconds / 60,
        "steps": steps,
        "kid": kid.tolist(),
        "fid": fid.tolist(),
        "identity": ident.tolist(),
        "kid_of_the_photos": copy_kid,
        "kid_end_over_start": float(kid[-1] / kid[0]),
        "kid_min_over_start": float(kid.min() / kid[0]),
        "identity_end_minus_start": float(ident[-1] - ident[0]),
        "settings": vars(args),
    }
    (docs / "learning.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "settings"}, indent=2))


if __name__ == "__main__":
    main()
