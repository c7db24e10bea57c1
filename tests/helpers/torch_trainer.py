"""Our PyTorch port of the original trainer's step (``UgatitSadalinHourglass.train``), the
reference of the training parity tests and of ``bench/train_step.py``.

Written from the original's semantics on our port of its networks (``p2c_jax.pytorch.nets``): the D
update, then the G update against the updated discriminators, Adam(0.5, 0.999) with L2 weight
decay 1e-4, the in-place linear lr decay over the second half of ``iteration``, and the rho / w
clippers. One deliberate difference: the Face-ID loss is the batch mean of ``1 - cos`` (the
original sums a per-sample vector into the loss and so only runs at batch size 1, where both
agree). Needs the ``torch`` extra.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

from p2c_jax.nn.models import DISCRIMINATORS, GENERATORS
from p2c_jax.pytorch.nets import face_crop_112


class TorchTrainer:
    """The original training step on ``nets`` (the six nets of ``p2c_jax.pytorch.nets``, by name) and a
    frozen ``facenet`` (``torch_port.MobileFaceNet``, or None with ``faceid_weight`` 0).

    ``hp`` is a ``p2c_jax.train.config.Hparams``. ``step(real_A, real_B)`` takes NCHW
    batches in [-1, 1] and returns the losses as floats.
    """

    def __init__(self, nets: dict[str, nn.Module], facenet: nn.Module | None, hp):
        self.nets, self.facenet, self.hp = nets, facenet, hp
        for name in GENERATORS + DISCRIMINATORS:
            nets[name].train()
        if facenet is not None:
            facenet.eval()
            for p in facenet.parameters():
                p.requires_grad_(False)
        kw = {
            "lr": hp.lr,
            "betas": (hp.beta1, hp.beta2),
            "eps": hp.eps,
            "weight_decay": hp.weight_decay,
        }
        self.G_optim = torch.optim.Adam(
            itertools.chain(*(nets[n].parameters() for n in GENERATORS)), **kw
        )
        self.D_optim = torch.optim.Adam(
            itertools.chain(*(nets[n].parameters() for n in DISCRIMINATORS)), **kw
        )
        self.step_count = 0

    def _face_id(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        fa, fb = self.facenet(face_crop_112(a)), self.facenet(face_crop_112(b))
        return torch.mean(1 - torch.cosine_similarity(fa, fb))

    def _clip(self) -> None:
        hp = self.hp
        with torch.no_grad():
            for name in GENERATORS:
                for m in self.nets[name].modules():
                    if hasattr(m, "rho"):
                        m.rho.clamp_(0, hp.rho_clipper)
                    for attr in ("w_gamma", "w_beta"):
                        if hasattr(m, attr):
                            getattr(m, attr).clamp_(0, hp.w_clipper)

    def step(self, real_A: torch.Tensor, real_B: torch.Tensor) -> dict[str, float]:
        hp, n = self.hp, self.nets
        mse, l1, bce = nn.MSELoss(), nn.L1Loss(), nn.BCEWithLogitsLoss()
        self.step_count += 1
        half = hp.iteration // 2
        if hp.decay_flag and half and self.step_count > half:
            for opt in (self.G_optim, self.D_optim):
                opt.param_groups[0]["lr"] -= hp.lr / half

        def d_adv(real, fake):
            return (
                mse(real[0], torch.ones_like(real[0]))
                + mse(fake[0], torch.zeros_like(fake[0]))
                + mse(real[1], torch.ones_like(real[1]))
                + mse(fake[1], torch.zeros_like(fake[1]))
            )

        def g_adv(fake):
            return mse(fake[0], torch.ones_like(fake[0])) + mse(fake[1], torch.ones_like(fake[1]))

        # Update D
        self.D_optim.zero_grad()
        fake_A2B, _, _ = n["genA2B"](real_A)
        fake_B2A, _, _ = n["genB2A"](real_B)
        real_GA = n["disGA"](real_A)[:2]
        real_LA = n["disLA"](real_A)[:2]
        real_GB = n["disGB"](real_B)[:2]
        real_LB = n["disLB"](real_B)[:2]
        fake_GA = n["disGA"](fake_B2A)[:2]
        fake_LA = n["disLA"](fake_B2A)[:2]
        fake_GB = n["disGB"](fake_A2B)[:2]
        fake_LB = n["disLB"](fake_A2B)[:2]
        D_loss_A = hp.adv_weight * (d_adv(real_GA, fake_GA) + d_adv(real_LA, fake_LA))
        D_loss_B = hp.adv_weight * (d_adv(real_GB, fake_GB) + d_adv(real_LB, fake_LB))
        Discriminator_loss = D_loss_A + D_loss_B
        Discriminator_loss.backward()
        self.D_optim.step()

        # Update G
        self.G_optim.zero_grad()
        fake_A2B, fake_A2B_cam, _ = n["genA2B"](real_A)
        fake_B2A, fake_B2A_cam, _ = n["genB2A"](real_B)
        fake_A2B2A, _, _ = n["genB2A"](fake_A2B)
        fake_B2A2B, _, _ = n["genA2B"](fake_B2A)
        fake_A2A, fake_A2A_cam, _ = n["genB2A"](real_A)
        fake_B2B, fake_B2B_cam, _ = n["genA2B"](real_B)
        fake_GA = n["disGA"](fake_B2A)[:2]
        fake_LA = n["disLA"](fake_B2A)[:2]
        fake_GB = n["disGB"](fake_A2B)[:2]
        fake_LB = n["disLB"](fake_A2B)[:2]
        adv_A, adv_B = g_adv(fake_GA) + g_adv(fake_LA), g_adv(fake_GB) + g_adv(fake_LB)
        recon_A, recon_B = l1(fake_A2B2A, real_A), l1(fake_B2A2B, real_B)
        ident_A, ident_B = l1(fake_A2A, real_A), l1(fake_B2B, real_B)
        if self.facenet is not None and hp.faceid_weight:
            id_A, id_B = self._face_id(real_A, fake_A2B), self._face_id(real_B, fake_B2A)
        else:
            id_A = id_B = torch.zeros(())
        cam_A = bce(fake_B2A_cam, torch.ones_like(fake_B2A_cam)) + bce(
            fake_A2A_cam, torch.zeros_like(fake_A2A_cam)
        )
        cam_B = bce(fake_A2B_cam, torch.ones_like(fake_A2B_cam)) + bce(
            fake_B2B_cam, torch.zeros_like(fake_B2B_cam)
        )
        G_loss_A = (
            hp.adv_weight * adv_A
            + hp.cycle_weight * recon_A
            + hp.identity_weight * ident_A
            + hp.cam_weight * cam_A
            + hp.faceid_weight * id_A
        )
        G_loss_B = (
            hp.adv_weight * adv_B
            + hp.cycle_weight * recon_B
            + hp.identity_weight * ident_B
            + hp.cam_weight * cam_B
            + hp.faceid_weight * id_B
        )
        Generator_loss = G_loss_A + G_loss_B
        Generator_loss.backward()
        self.G_optim.step()
        self._clip()

        def f(t: torch.Tensor) -> float:
            return t.detach().item()

        return {
            "d_loss": f(Discriminator_loss),
            "g_loss": f(Generator_loss),
            "d_loss_A": f(D_loss_A),
            "d_loss_B": f(D_loss_B),
            "g_adv": f(adv_A + adv_B),
            "g_cycle": f(recon_A + recon_B),
            "g_identity": f(ident_A + ident_B),
            "g_cam": f(cam_A + cam_B),
            "g_faceid": f(id_A + id_B),
            "lr": self.G_optim.param_groups[0]["lr"],
        }
