"""The six training nets at test size."""

from __future__ import annotations

from p2c_jax.nn.models import NetSpec

SIZE, CH = 32, 4


def small_specs(ch: int = CH, size: int = SIZE) -> dict[str, NetSpec]:
    """The six nets at test size (discriminators shallower than the original's 7 / 5 layers
    so that 32 x 32 images fit)."""
    gen = NetSpec("generator", ch, img_size=size, light=True)
    return {
        "genA2B": gen,
        "genB2A": gen,
        "disGA": NetSpec("discriminator", ch, n_layers=5),
        "disGB": NetSpec("discriminator", ch, n_layers=5),
        "disLA": NetSpec("discriminator", ch, n_layers=3),
        "disLB": NetSpec("discriminator", ch, n_layers=3),
    }
