"""Does our trainer learn as fast as the original? Both trainers, several seeds each, scored alike.

    python bench/learning_vs_original.py --seeds 0 1 2 3 --steps 1000 --eval_every 250 \
        --inception weights/inception [--jobs 2]

Settings of the comparison in issue 21: the offline demo dataset (``--n_test`` test images per
domain), 96 x 96, ch 8, light, batch 1, lr 2e-4 (constant), Face-ID off. For each seed both
sides start from the same nets (``fresh_nets(specs, seed)``; ours converted to torch for the
original) and draw their data with their own generators:

* ours: ``train.py`` (``--seed``), checkpoints every ``--eval_every`` steps;
* original: our PyTorch port of the original's step (``tests/helpers/torch_trainer.py``; not the
  original's code) fed the way the original's loop fed it on its pinned torch 1.4:
  ``ImageFolder`` files through RandomHorizontalFlip, Resize(S + 30), RandomCrop(S), ToTensor,
  Normalize(0.5) (torchvision's draws, from torch's global generator seeded with the seed) by
  a ``DataLoader(shuffle=True)`` whose iterator is kept from step to step and re-created when
  an epoch ends (``original_batches``): a fresh permutation each epoch, as ours.

Then every kept generator (step 0 = the shared initial nets) is scored by one ``Evaluator``
(KID and FID of its cartoons of testA against testB). Each training runs in its own process on
one core (``--jobs`` at a time). Writes ``<docs>/learning_vs_original.{json,png}``: both curves
with their seed bands (mean, min-max) and Welch's t-test of the per-seed mean KID over the
evaluated steps. ``--replot`` scores and draws an earlier ``--workdir`` again.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SIDES = ("ours", "original")
ONE_THREAD = {
    "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
    "OMP_NUM_THREADS": "1",
    "TF_NUM_INTEROP_THREADS": "1",
    "TF_NUM_INTRAOP_THREADS": "1",
}


def hparams(args):
    from p2c_jax.train.config import Hparams

    return Hparams(lr=args.lr, iteration=args.steps, decay_flag=False, faceid_weight=0.0)


def train_ours(args, data: Path, out: Path, seed: int) -> None:
    from p2c_jax.cli import train as train_cli

    hp = hparams(args)
    argv = [
        "--dataset", str(data), "--workdir", str(out), "--img_size", str(args.img_size),
        "--ch", str(args.ch), "--iteration", str(hp.iteration), "--batch_size", "1",
        "--lr", str(hp.lr), "--decay_flag", str(hp.decay_flag).lower(),
        "--faceid_weight", str(hp.faceid_weight), "--save_freq", str(args.eval_every),
        "--keep", "100000", "--print_freq", str(args.steps), "--log_every", "50",
        "--progress", "false", "--seed", str(seed),
    ]  # fmt: skip
    if train_cli.main(argv) != 0:
        raise SystemExit(f"ours, seed {seed}: training failed")


def original_loader(folder: Path, img_size: int):
    """The original's train ``DataLoader`` over ``folder``: its transform written with
    torchvision's draws (flip ``rand < 0.5``, crop corner ``randint`` top then left)."""
    import numpy as np
    import torch
    from PIL import Image

    from p2c_jax.data.augment import RESIZE_MARGIN, to_unit_range
    from p2c_jax.data.input_pipeline import list_images

    files = list_images(folder)
    big = img_size + RESIZE_MARGIN

    class Folder(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(files)

        def __getitem__(self, i: int):
            with Image.open(files[i]) as im:
                img = im.convert("RGB")
            if torch.rand(1) < 0.5:
                img = img.transpose(Image.FLIP_LEFT_RIGHT)
            rgb = np.asarray(img.resize((big, big), Image.BILINEAR))
            top = int(torch.randint(0, big - img_size + 1, size=(1,)))
            left = int(torch.randint(0, big - img_size + 1, size=(1,)))
            crop = to_unit_range(rgb[top : top + img_size, left : left + img_size])
            return torch.from_numpy(crop.transpose(2, 0, 1).copy()), 0

    return torch.utils.data.DataLoader(Folder(), batch_size=1, shuffle=True)


def original_batches(loaders):
    """``(real_A, real_B)`` per step as the original's loop drew them on torch 1.4: each
    loader's iterator kept across steps, and at its end (``StopIteration``, which the original's
    bare ``except`` catches) a new one, created on first use, with a fresh permutation."""
    iterators = [iter(()) for _ in loaders]
    while True:
        batch = []
        for i, loader in enumerate(loaders):
            try:
                images, _ = next(iterators[i])
            except StopIteration:
                iterators[i] = iter(loader)
                images, _ = next(iterators[i])
            batch.append(images)
        yield batch


def train_original(args, data: Path, out: Path, seed: int) -> None:
    import numpy as np
    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    from helpers.torch_trainer import TorchTrainer

    from p2c_jax.nn.models import training_specs
    from p2c_jax.pytorch.bridge import from_state
    from p2c_jax.train.state import fresh_nets

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    specs = training_specs(args.ch, args.img_size, True)
    init = fresh_nets(specs, seed)
    nets = {name: from_state(spec, init[name]) for name, spec in specs.items()}
    trainer = TorchTrainer(nets, None, hparams(args))
    loaders = [original_loader(data / f"train{d}", args.img_size) for d in "AB"]
    out.mkdir(parents=True, exist_ok=True)
    for step, (real_A, real_B) in zip(range(1, args.steps + 1), original_batches(loaders)):
        losses = trainer.step(real_A, real_B)
        if step % 50 == 0:
            print(
                f"original seed {seed} step {step}: {losses['d_loss']:.4f} {losses['g_loss']:.4f}"
            )
        if step % args.eval_every == 0:
            sd = {k: v.detach().numpy() for k, v in nets["genA2B"].state_dict().items()}
            np.savez(out / f"genA2B_{step}.npz", **sd)


def run_all(args, data: Path, work: Path) -> None:
    """Train every missing (side, seed) in ``--jobs`` one-core processes, each one's minutes
    in ``<side>-<seed>.done``."""
    todo = [
        (s, seed) for seed in args.seeds for s in SIDES if not (work / f"{s}-{seed}.done").exists()
    ]
    running: list[tuple[subprocess.Popen, str, int, float, int]] = []
    free = list(range(args.jobs))
    while todo or running:
        while todo and free:
            side, seed = todo.pop(0)
            core = free.pop(0)
            cmd = [sys.executable, __file__, *sys.argv[1:], "--child", f"{side}:{seed}"]
            cmd = ["taskset", "-c", str(core % os.cpu_count()), *cmd]
            log = open(work / f"{side}-{seed}.log", "w")  # noqa: SIM115 - closed with the process
            env = {**os.environ, **ONE_THREAD, "PYTHONPATH": str(ROOT)}
            running.append(
                (
                    subprocess.Popen(cmd, stdout=log, stderr=log, env=env),
                    side,
                    seed,
                    time.time(),
                    core,
                )
            )
        time.sleep(5)
        for item in list(running):
            proc, side, seed, t0, core = item
            if proc.poll() is None:
                continue
            running.remove(item)
            free.append(core)
            if proc.returncode != 0:
                raise SystemExit(f"{side} seed {seed} failed: see {work / f'{side}-{seed}.log'}")
            minutes = (time.time() - t0) / 60
            (work / f"{side}-{seed}.done").write_text(f"{minutes:.2f}\n")
            print(f"{side} seed {seed}: {minutes:.1f} min", flush=True)


def training_minutes(args, work: Path) -> dict[str, float]:
    """``{"<side>-<seed>": minutes}`` of the trainings in ``work`` (``--replot`` keeps them)."""
    done = {f"{s}-{seed}": work / f"{s}-{seed}.done" for seed in args.seeds for s in SIDES}
    return {k: float(path.read_text()) for k, path in done.items() if path.exists()}


def score_all(args, data: Path, work: Path) -> dict:
    """{side: {seed: [kid per evaluated step]}}, FID alike, step 0 included."""
    import numpy as np

    from p2c_jax.eval import features
    from p2c_jax.eval.evaluator import Evaluator
    from p2c_jax.eval.inception_weights import load_inception
    from p2c_jax.nn.models import training_specs
    from p2c_jax.train.evaluation import held_out_uint8
    from p2c_jax.train.state import fresh_nets
    from p2c_jax.weights.checkpoint import CHECKPOINTS, load_nets
    from p2c_jax.weights.convert import state_from_torch

    weights = load_inception(args.inception or None)
    photos, cartoons = (held_out_uint8(data, d, args.img_size, 0) for d in "AB")
    reference = features.reference_of(cartoons, features.FeatureExtractor(weights))
    evaluator = Evaluator(weights, photos, reference)
    specs = training_specs(args.ch, args.img_size, True)
    spec = specs["genA2B"]
    steps = list(range(0, args.steps + 1, args.eval_every))
    out = {"kid": {s: {} for s in SIDES}, "fid": {s: {} for s in SIDES}}
    for seed in args.seeds:
        start = evaluator(spec, fresh_nets(specs, seed)["genA2B"])
        for side in SIDES:
            scores = [start]
            for step in steps[1:]:
                if side == "ours":
                    state = load_nets(work / f"ours-{seed}" / CHECKPOINTS / str(step), ["genA2B"])
                    state = state["genA2B"][1]
                else:
                    with np.load(work / f"original-{seed}" / f"genA2B_{step}.npz") as z:
                        state = state_from_torch(spec, dict(z))
                scores.append(evaluator(spec, state))
            out["kid"][side][seed] = [s.kid for s in scores]
            out["fid"][side][seed] = [s.fid for s in scores]
            print(
                f"{side} seed {seed}: KID " + " ".join(f"{s.kid:.3f}" for s in scores), flush=True
            )
    out["steps"] = steps
    return out


def compare(scores: dict) -> dict:
    """Per side: mean and band of KID per step; Welch's t-test (ours vs original) of each seed's
    mean KID over the steps after 0, with the 95 % interval of the difference of the means, and
    of the KID at each step."""
    import numpy as np
    from scipy import stats

    kid = {s: np.array([scores["kid"][s][k] for k in sorted(scores["kid"][s])]) for s in SIDES}
    after = {s: kid[s][:, 1:].mean(axis=1) for s in SIDES}
    test = stats.ttest_ind(after["ours"], after["original"], equal_var=False)
    per_step = [
        float(stats.ttest_ind(kid["ours"][:, i], kid["original"][:, i], equal_var=False).pvalue)
        for i in range(1, kid["ours"].shape[1])
    ]
    return {
        "mean": {s: kid[s].mean(axis=0).tolist() for s in SIDES},
        "std": {s: kid[s].std(axis=0, ddof=1).tolist() for s in SIDES},
        "min": {s: kid[s].min(axis=0).tolist() for s in SIDES},
        "max": {s: kid[s].max(axis=0).tolist() for s in SIDES},
        "mean_kid_after_0": {s: after[s].tolist() for s in SIDES},
        "difference_of_means": float(after["ours"].mean() - after["original"].mean()),
        "difference_ci95": [float(x) for x in test.confidence_interval(0.95)],
        "welch_p": float(test.pvalue),
        "welch_p_per_step": per_step,
    }


def plot(scores: dict, summary: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = scores["steps"]
    fig, ax = plt.subplots(figsize=(7, 4))
    for side, color in zip(SIDES, ("tab:blue", "tab:orange")):
        for values in scores["kid"][side].values():
            ax.plot(steps, values, color=color, alpha=0.25, lw=0.8)
        ax.fill_between(steps, summary["min"][side], summary["max"][side], color=color, alpha=0.15)
        ax.plot(steps, summary["mean"][side], "o-", color=color, label=f"{side} (mean, seed band)")
    ax.set_xlabel("step")
    ax.set_ylabel("KID (testA cartoons vs testB)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--eval_every", type=int, default=250)
    p.add_argument("--img_size", type=int, default=96)
    p.add_argument("--ch", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--n_test", type=int, default=32, help="demo test images per domain")
    p.add_argument("--inception", default="", help="FID Inception weights (see evaluate.py)")
    p.add_argument("--jobs", type=int, default=2, help="trainings at once, one core each")
    p.add_argument("--workdir", default="/tmp/p2c-vs-original")
    p.add_argument("--docs", default=str(ROOT / "docs"))
    p.add_argument("--replot", action="store_true", help="no training: score --workdir again")
    p.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = p.parse_args()

    from p2c_jax.data.demo import build_demo

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    data = build_demo(work / "demo", n_test=args.n_test, size=args.img_size)
    if args.child:
        side, seed = args.child.split(":")
        train = train_ours if side == "ours" else train_original
        train(args, data, work / f"{side}-{seed}", int(seed))
        return
    t0 = time.time()
    if not args.replot:
        run_all(args, data, work)
    scores = score_all(args, data, work)
    summary = compare(scores)
    docs = Path(args.docs)
    docs.mkdir(parents=True, exist_ok=True)
    title = (
        f"demo data, {args.img_size} px, ch {args.ch}, lr {args.lr:g}, Face-ID off, "
        f"{len(args.seeds)} seeds per side; Welch p = {summary['welch_p']:.2f}"
    )
    plot(scores, summary, docs / "learning_vs_original.png", title)
    result = {
        "settings": {k: v for k, v in vars(args).items() if k not in ("child", "replot")},
        "training_minutes": training_minutes(args, work),
        "total_minutes": (time.time() - t0) / 60,
        **scores,
        "summary": summary,
    }
    (docs / "learning_vs_original.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
