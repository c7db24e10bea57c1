"""Costs of compiled programs read ahead of time: collectives and FLOPs counted per loop
iteration, checked against programs whose counts are known by construction."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import pytest
from helpers.ci_required import needs_libtpu
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from p2c_jax import aot, aot_report, topology
from p2c_jax.parallel import make_mesh


def test_shape_bytes_of_arrays_tuples_and_tiles():
    assert aot.shape_bytes("f32[8,3]{1,0}") == 96
    assert aot.shape_bytes("(bf16[4]{0}, s32[], pred[2])") == 8 + 4 + 2
    # a TPU tile pads the most minor dimension (3) to 128 lanes and the next (0) to 1
    assert aot.shape_bytes("f32[1,32,32,4]{3,0,2,1:T(1,128)S(1)}", padded=True) == 32 * 32 * 128 * 4
    assert aot.shape_bytes("f32[3,64,32]{1,2,0:T(8,128)}", padded=True) == 3 * 128 * 32 * 4


def test_roofline_is_the_slower_of_compute_and_memory():
    assert aot.roofline_seconds(2e12, 1e9, 1e12, 1e12) == 2.0
    assert aot.roofline_seconds(1e9, 3e12, 1e12, 1e12) == 3.0


@pytest.fixture(scope="module")
def mesh():
    return make_mesh(topology.devices("v5e-4"))


M, K, N, ITEMS = 64, 256, 128, 3  # batch (4 chips x 16), in, out, loop iterations


def _compiled(mesh, loop: bool):
    """A gradient per item (``lax.map`` or a Python loop): ITEMS matmuls forward and
    backward on a replicated weight, the batch split over 4 chips."""
    rep, dat = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))

    def grads(w, x):
        def one(k):
            return jax.grad(lambda w: jnp.sum((x * k) @ w))(w)

        ks = jnp.arange(1, ITEMS + 1, dtype=jnp.float32)
        stacked = jax.lax.map(one, ks) if loop else jnp.stack([one(k) for k in ks])
        return w - stacked.sum(0), jnp.mean(x)

    w = jax.ShapeDtypeStruct((K, N), jnp.float32, sharding=rep)
    x = jax.ShapeDtypeStruct((M, K), jnp.float32, sharding=dat)
    return jax.jit(grads, out_shardings=(rep, rep), donate_argnums=0).lower(w, x).compile()


@pytest.mark.tpu
@needs_libtpu()
def test_loop_collectives_and_flops_count_every_iteration(mesh):
    compiled = _compiled(mesh, loop=True)
    program = aot.Program(compiled.as_text())
    assert program.unknown_trip_counts == 0
    reduced = {c.kind: c for c in program.collectives()}
    # each iteration's weight gradient (K x N float32) and the mean of x, over the chips
    assert set(reduced) == {"all-reduce"}
    assert reduced["all-reduce"].bytes == ITEMS * K * N * 4 + 4
    # the weight gradient of (x k) @ w: x^T @ ones, M/4 x K x N multiply-adds per chip
    products = 2 * (M // 4) * K * N
    assert program.flops() == ITEMS * products
    assert program.flops(repeats=True) == (ITEMS - 1) * products
    # XLA's figure counts the loop's body once; per call counts it ITEMS times
    cost = program.per_call(aot.cost(compiled))
    assert cost["flops"] == pytest.approx(ITEMS * products, rel=0.05)


@pytest.mark.tpu
@needs_libtpu()
def test_counts_agree_with_xla_where_there_is_no_loop(mesh):
    compiled = _compiled(mesh, loop=False)
    program, xla = aot.Program(compiled.as_text()), aot.cost(compiled)
    assert "while(" not in compiled.as_text()
    assert program.flops() == pytest.approx(xla["flops"], rel=0.05)
    assert program.bytes_accessed() == pytest.approx(xla["bytes accessed"], rel=0.15)
    assert program.per_call(xla) == {k: xla[k] for k in ("flops", "bytes accessed")}
    assert aot.memory(compiled).aliased == K * N * 4


# the HBM libtpu's compiler says a chip has when it refuses a program: "exceeds available HBM
# (15.75G)", in GiB to 2 decimals
_AVAILABLE = re.compile(r"available HBM \(([\d.]+)G\)")


@pytest.mark.tpu
@needs_libtpu()
@pytest.mark.parametrize("name", ["v4-8", "v5e-4", "v5p-8", "v6e-4"])
def test_a_program_over_the_chips_memory_is_refused_not_raised(name):
    """libtpu refuses, as it compiles, a program that needs more than a chip's HBM: that is a
    result (``aot.Refused``, with the bytes it said it needs), not an error; the HBM it says is
    available is ``Chip.usable_bytes``, the figure the reports compare with."""
    mesh = make_mesh(topology.devices(name))
    chip = topology.chip(list(mesh.devices.flat))
    dat = NamedSharding(mesh, P("data"))
    chips = mesh.devices.size

    def doubled(per_chip_bytes: int):
        x = jax.ShapeDtypeStruct((chips * (per_chip_bytes // 4),), jnp.float32, sharding=dat)
        return aot.compile_program(jax.jit(lambda x: 2 * x).lower(x))

    per_chip = chip.usable_bytes * 3 // 4  # in and out: 1.5x the chip's memory
    refused = doubled(per_chip)
    assert isinstance(refused, aot.Refused), refused
    assert refused.required_bytes == pytest.approx(2 * per_chip, rel=1e-3)
    stated = float(_AVAILABLE.search(refused.message)[1]) * 2**30
    assert chip.usable_bytes == pytest.approx(stated, abs=0.006 * 2**30), refused.message
    fitting = doubled(chip.usable_bytes // 4)
    assert aot.memory(fitting).total <= chip.usable_bytes


@pytest.mark.tpu
@needs_libtpu()
def test_the_need_is_xlas_peak_which_the_compiler_holds_to_the_hbm():
    """XLA:TPU's allocation for temporaries can exceed what is live at once: in the gradient
    of a scanned layer, arguments + outputs + temporaries - donated grow faster than XLA's
    peak. At 172 inputs of 4 MiB on a v5e (libtpu 0.10.2: the two differ between about 169
    and 175), the program needs more than the chip's usable HBM by the first and fits by the
    peak: the compiler builds it, and the report's ``total`` (the peak plus the code) fits."""
    devices = topology.devices("v5e-4")[:1]
    chip = topology.chip(devices)
    replicated = NamedSharding(make_mesh(devices), P())
    side, n = 1024, 172

    def step(w, x):
        def loss(w):
            h, _ = jax.lax.scan(lambda h, _: (jnp.tanh(h @ w), None), x, None, length=8)
            return (h**2).sum()

        return w - 1e-3 * jax.grad(loss)(w)

    w = jax.ShapeDtypeStruct((side, side), jnp.float32, sharding=replicated)
    x = jax.ShapeDtypeStruct((n, side, side), jnp.float32, sharding=replicated)
    compiled = aot.compile_program(jax.jit(step, donate_argnums=0).lower(w, x))
    assert not isinstance(compiled, aot.Refused), compiled
    m = aot.memory(compiled)
    assert m.aliased == side * side * 4  # the donated weights
    assert m.arguments + m.outputs + m.temporaries - m.aliased > chip.usable_bytes >= m.total
    xla = compiled.memory_analysis()  # the compiler's own figures, read past aot.memory
    assert m.total == xla.peak_memory_in_bytes + xla.generated_code_size_in_bytes
    assert m.peak >= m.arguments + m.outputs - m.aliased
    assert aot_report.costs(compiled, devices, "float32", n)["fits"]


# XLA:GPU's form of convolutions and matmuls: calls of cuDNN and cuBLAS, whose dim_labels are
# the forward convolution's whatever the call computes (as XLA:GPU compiles them)
_GPU_HLO = """HloModule jit_f, entry_computation_layout={(f32[2,16,16,8]{3,2,1,0})->f32[]}

ENTRY %main (x: f32[2,16,16,8], w: f32[16,3,3,8], g: f32[2,16,16,16], a: f32[8,32], b: f32[32,16]) -> f32[] {
  %x = f32[2,16,16,8]{3,2,1,0} parameter(0)
  %w = f32[16,3,3,8]{3,2,1,0} parameter(1)
  %g = f32[2,16,16,16]{3,2,1,0} parameter(2)
  %a = f32[8,32]{1,0} parameter(3)
  %b = f32[32,16]{1,0} parameter(4)
  %fwd = (f32[2,16,16,16]{3,2,1,0}, u8[0]{0}) custom-call(%x, %w), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_o01i->b01f, custom_call_target="__cudnn$convForward"
  %bwf = (f32[16,3,3,8]{3,2,1,0}, u8[0]{0}) custom-call(%x, %g), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_o01i->b01f, custom_call_target="__cudnn$convBackwardFilter"
  %bwi = (f32[2,16,16,8]{3,2,1,0}, u8[0]{0}) custom-call(%g, %w), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_o01i->b01f, custom_call_target="__cudnn$convBackwardInput"
  %mm = (f32[8,16]{1,0}, s8[0]{0}) custom-call(%a, %b), custom_call_target="__cublas$gemm", backend_config={"gemm_backend_config":{"dot_dimension_numbers":{"lhs_contracting_dimensions":["1"],"rhs_contracting_dimensions":["0"],"lhs_batch_dimensions":[],"rhs_batch_dimensions":[]}}}
  ROOT %r = f32[] constant(0)
}
"""


def test_flops_of_cudnn_and_cublas_calls():
    conv = 2 * (2 * 16 * 16) * 16 * (3 * 3 * 8)  # outputs x features x products each
    assert aot.Program(_GPU_HLO).flops() == 3 * conv + 2 * 8 * 16 * 32
