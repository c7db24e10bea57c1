"""The four networks of photo2cartoon and how each is described and built.

A ``NetSpec`` is all that is needed to build a net; checkpoints store one per net, and
``convert.spec_from_state_dict`` reads it off an original PyTorch state_dict.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Literal

from flax import nnx

from p2c_jax.nn.discriminator import Discriminator
from p2c_jax.nn.generator import ResnetGenerator
from p2c_jax.nn.mobilefacenet import MobileFaceNet
from p2c_jax.nn.numerics import FLOAT32, Numerics

Kind = Literal["generator", "discriminator", "mobilefacenet"]
GENERATORS = ("genA2B", "genB2A")
DISCRIMINATORS = ("disGA", "disGB", "disLA", "disLB")
TRAINING_NETS = GENERATORS + DISCRIMINATORS
FACENET = "facenet"  # the Face-ID loss's MobileFaceNet, in checkpoints and conversion


@dataclasses.dataclass(frozen=True)
class NetSpec:
    """Architecture hyper-parameters of one net; ``ch`` is ngf, ndf or the embedding size."""

    kind: Kind
    ch: int
    img_size: int = 256  # generator
    light: bool = True  # generator
    n_layers: int = 5  # discriminator

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> NetSpec:
        return cls(**d)

    def weights_fit(self, other: NetSpec) -> bool:
        """Whether weights of ``other`` fit this net: equal specs, or light generators of one
        ngf at any img_size (their FC layers do not depend on it)."""
        if self.kind == other.kind == "generator" and self.light and other.light:
            return self.ch == other.ch
        return self == other


def build(spec: NetSpec, rngs: nnx.Rngs | None = None, numerics: Numerics = FLOAT32) -> nnx.Module:
    """A freshly initialised net of ``spec`` (torch's default initialisation) computing in
    ``numerics`` (every layer's static attribute, so a part of the net's graph definition)."""
    rngs = rngs if rngs is not None else nnx.Rngs(0)
    if spec.kind == "generator":
        net = ResnetGenerator(spec.ch, spec.img_size, spec.light, rngs=rngs)
    elif spec.kind == "discriminator":
        net = Discriminator(spec.ch, spec.n_layers, rngs=rngs)
    elif spec.kind == "mobilefacenet":
        net = MobileFaceNet(spec.ch, rngs=rngs)
    else:
        raise ValueError(f"unknown net kind {spec.kind!r}")
    net.set_attributes(numerics=numerics, raise_if_not_found=False)
    return net


@functools.cache
def abstract(spec: NetSpec, numerics: Numerics = FLOAT32) -> nnx.Module:
    """``build(spec, numerics=numerics)`` with shapes only, no memory, made once per argument
    (building takes seconds): the structure for checking and restoring weights, and the graph
    definition of compiled functions. Read it, never mutate it."""
    return nnx.eval_shape(lambda: build(spec, numerics=numerics))


def graphdef(spec: NetSpec, numerics: Numerics = FLOAT32) -> nnx.GraphDef:
    """The graph definition of nets of ``spec`` in ``numerics``."""
    return nnx.graphdef(abstract(spec, numerics))


def training_specs(ch: int, img_size: int, light: bool) -> dict[str, NetSpec]:
    """The six nets the original trainer builds for ``--ch --img_size --light``."""
    gen = NetSpec("generator", ch, img_size=img_size, light=light)
    return {
        "genA2B": gen,
        "genB2A": gen,
        "disGA": NetSpec("discriminator", ch, n_layers=7),
        "disGB": NetSpec("discriminator", ch, n_layers=7),
        "disLA": NetSpec("discriminator", ch, n_layers=5),
        "disLB": NetSpec("discriminator", ch, n_layers=5),
    }
