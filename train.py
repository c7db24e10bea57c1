"""Train photo2cartoon: ``python train.py --dataset NAME_OR_PATH [flags]``.

The original's flags, names and defaults (``--phase --light --dataset --iteration --batch_size
--print_freq --save_freq --decay_flag --lr --adv_weight --cycle_weight --identity_weight
--cam_weight --faceid_weight --ch --n_dis --img_size --img_ch --resume --rho_clipper --w_clipper
--pretrained_weights``), so old command lines keep working, plus ``--workdir --seed
--faceid_weights --augment --keep --log_every --remat`` and the multi-host flags.
``--batch_size`` is the global batch, split over every device of every host. Try
``python train.py --dataset demo --img_size 96 --ch 8 --iteration 200 --faceid_weight 0``.
"""

from __future__ import annotations

import argparse
import sys


def str2bool(v: str) -> bool:
    if v.lower() in ("true", "1", "yes", "y", "t"):
        return True
    if v.lower() in ("false", "0", "no", "n", "f"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {v!r}")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="photo2cartoon training (JAX)")
    p.add_argument("--phase", type=str, default="train", help="train (test: use infer.py)")
    p.add_argument("--light", type=str2bool, default=True, help="light (true) or full U-GAT-IT generator")
    p.add_argument("--dataset", type=str, default="photo2cartoon",
                   help="a name under ./dataset/ (trainA trainB testA testB), a path, or 'demo'")
    p.add_argument("--iteration", type=int, default=1000000, help="number of training steps")
    p.add_argument("--batch_size", type=int, default=1, help="global batch size (all devices and hosts)")
    p.add_argument("--print_freq", type=int, default=1000, help="sample grids every N steps")
    p.add_argument("--save_freq", type=int, default=1000, help="checkpoint every N steps")
    p.add_argument("--decay_flag", type=str2bool, default=True, help="linear lr decay over the second half")
    p.add_argument("--lr", type=float, default=0.0001)
    p.add_argument("--adv_weight", type=float, default=1, help="weight of the GAN losses")
    p.add_argument("--cycle_weight", type=float, default=50)
    p.add_argument("--identity_weight", type=float, default=10)
    p.add_argument("--cam_weight", type=float, default=1000)
    p.add_argument("--faceid_weight", type=float, default=1, help="0 trains without the Face-ID loss")
    p.add_argument("--ch", type=int, default=32, help="base channel number")
    p.add_argument("--n_dis", type=int, default=6,
                   help="accepted and unused, as in the original (its discriminators have 7 and 5 layers)")
    p.add_argument("--img_size", type=int, default=256)
    p.add_argument("--img_ch", type=int, default=3, help="accepted; images are RGB")
    p.add_argument("--gpu_ids", type=int, nargs="+", default=[0],
                   help="not needed: every local device (and every host) is used")
    p.add_argument("--benchmark_flag", type=str2bool, default=False,
                   help="not needed: XLA picks its convolution algorithms when compiling")
    p.add_argument("--resume", type=str2bool, default=False, help="continue from --workdir's latest checkpoint")
    p.add_argument("--rho_clipper", type=float, default=1.0)
    p.add_argument("--w_clipper", type=float, default=1.0)
    p.add_argument("--pretrained_weights", type=str, default="",
                   help="initial weights: the original photo2cartoon_weights.pt (six nets) or our checkpoint")
    # ours
    p.add_argument("--workdir", type=str, default=None,
                   help="checkpoints, TensorBoard logs and sample grids (default: the original's "
                        "./experiment/train-size..-ch..-... folder)")
    p.add_argument("--seed", type=int, default=0, help="initial weights and data order")
    p.add_argument("--faceid_weights", type=str, default="",
                   help="model_mobilefacenet.pth (InsightFace) or our checkpoint holding it")
    p.add_argument("--augment", type=str2bool, default=True, help="random flip and crop, as the original")
    p.add_argument("--keep", type=int, default=3, help="checkpoints to keep")
    p.add_argument("--log_every", type=int, default=10, help="losses to the progress bar and TensorBoard every N steps")
    p.add_argument("--remat", type=str2bool, default=False,
                   help="recompute the generators' whole forward pass in the backward pass (by default "
                        "only their convolutions' outputs are kept): less memory, slower")
    p.add_argument("--coordinator_address", type=str, default=None,
                   help="multi-host: host:port of process 0 (else read from the environment)")
    p.add_argument("--num_processes", type=int, default=None)
    p.add_argument("--process_id", type=int, default=None)
    args = p.parse_args(argv)
    if args.workdir is None:
        args.workdir = (f"./experiment/train-size{args.img_size}-ch{args.ch}-{args.light}-lr{args.lr}-adv{args.adv_weight}-cyc{args.cycle_weight}-id{args.faceid_weight}-identity{args.identity_weight}-cam{args.cam_weight}"
                        )
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.phase != "train":
        print("error: --phase test is infer.py's job: python infer.py --weights WORKDIR ...", file=sys.stderr)
        return 2
    from p2c_jax import trainer

    trainer.maybe_initialize_distributed(args.coordinator_address, args.num_processes, args.process_id)
    fields = {f.name for f in trainer.dataclasses.fields(trainer.Config)}
    cfg = trainer.Config(**{k: v for k, v in vars(args).items() if k in fields})
    try:
        trainer.train(cfg)
    except trainer.TrainError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
