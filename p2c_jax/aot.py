"""What a compiled program costs per device, read from XLA ahead of time: its memory
(``memory_analysis``), FLOPs and bytes accessed (``cost_analysis``), its collectives (parsed
from the compiled HLO text, each counted as often as it runs per call), and a roofline lower
bound on its time from the chip's peaks; and a compile that the compiler refuses for memory
(XLA:TPU checks a program against its chip's HBM as it compiles) as a result, ``Refused``.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import re

import jax
from jax.stages import Compiled, Lowered

#: the cross-device operations of XLA, as its HLO text names them
COLLECTIVES = (
    "all-reduce",
    "all-gather",
    "reduce-scatter",
    "all-to-all",
    "ragged-all-to-all",
    "collective-permute",
    "collective-broadcast",
)
_DTYPE_BYTES = {
    "pred": 1,
    "s4": 1,
    "u4": 1,
    "s8": 1,
    "u8": 1,
    "bf16": 2,
    "f16": 2,
    "s16": 2,
    "u16": 2,
    "f32": 4,
    "s32": 4,
    "u32": 4,
    "f64": 8,
    "s64": 8,
    "u64": 8,
    "c64": 8,
    "c128": 16,
}
# an array shape and its layout: f32[1,32,32,4]{3,0,2,1:T(1,128)S(1)}
_ARRAY = re.compile(r"\b([a-z]+[0-9]*(?:e[0-9]m[0-9][a-z]*)?)\[([0-9,]*)\](?:\{([^}]*)\})?")
# one instruction: "%name = SHAPE op(...), attributes" (ROOT optional)
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]+)\s*=\s*(.+?)\s+([a-z][\w\-]*)\(")
_COMPUTATION = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_CALLED = re.compile(
    r"\b(body|condition|to_apply|calls|branch_computations|called_computations)=\{?([^}]*?)\}?(?=,\s[a-z_]+=|$)"
)
_TRIP_COUNT = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')
# XLA:TPU's refusals: "the total memory required for HLO temporaries (15.79G) exceeds available
# HBM (15.75G)" and "Used 20.69G of 15.75G hbm"; sizes as XLA writes them (K, M, G: powers of 1024)
_REQUIRED = re.compile(r"(?:required for HLO temporaries \(|Used )([\d.]+)([KMGT]?)")
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def _padded(dims: list[int], layout: str) -> list[int]:
    """``dims`` as a tiled layout (``3,0,2,1:T(1,128)``: minor-to-major order, then the
    tile of the most minor dimensions) stores them: each tiled dimension rounded up to its
    tile. TPUs tile the two most minor dimensions (to 8 x 128 for float32)."""
    order, _, tiling = layout.partition(":")
    tile = re.match(r"T\(([0-9,]+)\)", tiling)
    if not tile or not dims:
        return dims
    minor = [int(i) for i in order.split(",") if i] or list(range(len(dims)))[::-1]
    out = list(dims)
    for axis, t in zip(minor, reversed([int(t) for t in tile[1].split(",")])):
        out[axis] = -(-out[axis] // t) * t
    return out


def shape_bytes(shape: str, padded: bool = False) -> int:
    """Bytes of an HLO shape (an array ``f32[8,3]{1,0}`` or a tuple of them): of its
    elements, or with ``padded`` of the tiles its layout stores them in."""
    total = 0
    for dtype, dims, layout in _ARRAY.findall(shape):
        sizes = [int(d) for d in dims.split(",") if d]
        if padded:
            sizes = _padded(sizes, layout)
        total += math.prod(sizes) * _DTYPE_BYTES.get(dtype, 1)  # the f8 types: one byte
    return total


@dataclasses.dataclass(frozen=True)
class Collective:
    """One kind of collective in a program: how many run per call and the bytes of their
    results (an all-reduce's result is as large as what it reduces)."""

    kind: str
    count: int
    bytes: int


@dataclasses.dataclass(frozen=True)
class _Instruction:
    name: str
    shape: str
    op: str
    operands: list[str]
    line: str


def _computations(hlo: str) -> dict[str, tuple[bool, dict[str, _Instruction]]]:
    """name -> (is the entry, its instructions by name) of each computation of HLO text."""
    comps, name, entry, insts = {}, None, False, {}
    for line in hlo.splitlines():
        if name is None:
            m = _COMPUTATION.match(line)
            if m and not line.startswith("HloModule"):
                name, entry, insts = m[2], bool(m[1]), {}
        elif line.strip() == "}":
            comps[name] = (entry, insts)
            name = None
        else:
            m = _INSTRUCTION.match(line)
            if m:
                operands = re.findall(r"%([\w.\-]+)", line[m.end() :].split(")", 1)[0])
                insts[m[1]] = _Instruction(m[1], m[2], m[3], operands, line)
    return comps


def _constant(insts: dict[str, _Instruction], name: str) -> int | None:
    """The integer constant that ``name`` is, through copies and bitcasts; None otherwise."""
    inst = insts.get(name)
    while inst is not None and inst.op in ("copy", "bitcast") and inst.operands:
        inst = insts.get(inst.operands[0])
    if inst is None or inst.op != "constant":
        return None
    m = re.search(r"constant\((-?\d+)\)", inst.line)
    return int(m[1]) if m else None


def _trip_count(comps: dict, insts: dict[str, _Instruction], loop: _Instruction) -> int | None:
    """How many times ``loop`` (a while) runs its body: XLA's known trip count where the text
    gives it, else read from a condition ``counter < N`` on a counter starting at a constant
    (jax's scans and fori_loops); None where neither is found."""
    known = _TRIP_COUNT.search(loop.line)
    if known:
        return int(known[1])
    cond = re.search(r"condition=%([\w.\-]+)", loop.line)
    if cond is None or cond[1] not in comps or not loop.operands:
        return None
    body = comps[cond[1]][1]
    root = next((i for i in body.values() if "ROOT" in i.line.split("=")[0]), None)
    if root is None or root.op != "compare" or "direction=LT" not in root.line:
        return None
    counter, bound = (body.get(o) for o in root.operands[:2])
    limit = _constant(body, root.operands[1]) if bound is not None else None
    index = re.search(r"index=(\d+)", counter.line) if counter is not None else None
    if limit is None or counter.op != "get-tuple-element" or index is None:
        return None
    init = insts.get(loop.operands[0])
    if init is None or init.op != "tuple" or int(index[1]) >= len(init.operands):
        return None
    start = _constant(insts, init.operands[int(index[1])])
    return None if start is None else max(limit - start, 0)


# ops that move no data of their own (views, control flow, tuples)
_NO_TRAFFIC = {
    "parameter",
    "constant",
    "tuple",
    "get-tuple-element",
    "bitcast",
    "while",
    "call",
    "conditional",
    "after-all",
    "partition-id",
    "replica-id",
    "opt-barrier",
}


def _dims(shape: str) -> list[int]:
    m = _ARRAY.search(shape)
    return [int(d) for d in m[2].split(",") if d] if m else []


# cuDNN's convolutions (XLA:GPU's custom calls): which of (operands..., result) are the
# forward convolution's output and kernel; their dim_labels are the forward convolution's
_CUDNN_CONVS = {
    "__cudnn$convForward": (-1, 1),
    "__cudnn$convBiasActivationForward": (-1, 1),
    "__cudnn$convBackwardInput": (0, 1),
    "__cudnn$convBackwardFilter": (1, -1),
}
_CUBLAS_GEMMS = ("__cublas$gemm", "__cublas$lt$matmul")


def _conv_products(line: str, out: str, kernel: str) -> int:
    """Multiply-adds of a convolution (its HLO ``line``) of output shape ``out`` and kernel
    shape ``kernel``: the output's elements times the kernel's elements per output feature."""
    labels = re.search(r"dim_labels=\w+_(\w+)->", line)
    dims = _dims(kernel)
    if labels is None or not dims:
        return 0
    return math.prod(_dims(out)) * math.prod(dims) // max(dims[labels[1].index("o")], 1)


def _products(inst: _Instruction, insts: dict[str, _Instruction]) -> int:
    """Multiply-adds of a convolution or dot (HLO's, or XLA:GPU's calls of cuDNN and cuBLAS):
    its output's elements times the products each sums (a convolution's kernel elements per
    output feature; a dot's contracted size)."""
    shapes = [*(insts[o].shape if o in insts else "" for o in inst.operands), inst.shape]
    target = re.search(r'custom_call_target="([^"]+)"', inst.line)
    target = target[1] if target and inst.op == "custom-call" else None
    if inst.op == "convolution" and len(shapes) > 2:
        return _conv_products(inst.line, shapes[-1], shapes[1])
    if target in _CUDNN_CONVS:
        return _conv_products(inst.line, *(shapes[i] for i in _CUDNN_CONVS[target]))
    if inst.op == "dot":
        contracting = re.search(r"lhs_contracting_dims=\{([\d,]*)\}", inst.line)
    elif target in _CUBLAS_GEMMS:
        contracting = re.search(r'"lhs_contracting_dimensions":\[([^\]]*)\]', inst.line)
    else:
        return 0
    dims = _dims(shapes[0])
    if contracting is None or not dims:
        return 0
    indices = [int(i.strip('"')) for i in contracting[1].split(",") if i.strip('"')]
    return math.prod(_dims(inst.shape)) * math.prod(dims[i] for i in indices)


class Program:
    """A compiled program's HLO text (``Compiled.as_text()``), read once: how often each
    computation runs per call (while bodies their trip count times), and from that its
    collectives, FLOPs and bytes accessed per call.

    XLA's own ``cost_analysis`` counts a while loop's body once whatever its trip count (the
    step's ``lax.map`` loops), hence these counts. A trip count is XLA's known one where the
    text gives it, else read from a condition ``counter < N`` on a counter starting at a
    constant (jax's scans and fori_loops); ``unknown_trip_counts`` loops had neither and count
    once."""

    def __init__(self, hlo: str):
        self.computations = _computations(hlo)
        self.runs: collections.Counter = collections.Counter()
        self.top_level: set[str] = set()  # not fused: their instructions touch memory
        self.unknown_trip_counts = 0
        order = [name for name, (entry, _) in self.computations.items() if entry]
        self.runs.update(dict.fromkeys(order, 1))
        self.top_level.update(order)
        seen = set(order)
        while order:  # callers first: in compiled HLO a computation has one caller
            name = order.pop(0)
            insts = self.computations[name][1]
            for inst in insts.values():
                for attr, callee, n in self._callees(insts, inst):
                    if callee not in self.computations:
                        continue
                    self.unknown_trip_counts += n is None
                    self.runs[callee] += self.runs[name] * (1 if n is None else n)
                    if attr in ("body", "condition", "branch_computations") or (
                        attr == "to_apply" and inst.op == "call"
                    ):
                        self.top_level.add(callee)
                    if callee not in seen:
                        seen.add(callee)
                        order.append(callee)

    def _callees(self, insts: dict, inst: _Instruction) -> list[tuple[str, str, int | None]]:
        """(attribute, computation, runs per run of ``inst``) of what ``inst`` calls."""
        out = []
        for attr, names in _CALLED.findall(inst.line):
            n = _trip_count(self.computations, insts, inst) if attr == "body" else 1
            out += [(attr, c.strip().lstrip("%"), n) for c in names.split(",") if c.strip()]
        return out

    def _instructions(self, top_level_only: bool = False, repeats: bool = False):
        """(times it runs per call, instruction, its computation's instructions); with
        ``repeats`` the times after the first."""
        for name, (_, insts) in self.computations.items():
            runs = self.runs[name] - repeats if self.runs[name] else 0
            if runs and (name in self.top_level or not top_level_only):
                for inst in insts.values():
                    yield runs, inst, insts

    def collectives(self) -> list[Collective]:
        """The collectives by kind, with their counts and result bytes per call. An
        asynchronous one (``-start`` / ``-done``) counts once, with its ``-done``'s result."""
        found: dict[str, list[int]] = {}
        for runs, inst, _ in self._instructions():
            kind = inst.op.removesuffix("-done")
            if kind in COLLECTIVES and not inst.op.endswith("-start"):
                count = found.setdefault(kind, [0, 0])
                count[0] += runs
                count[1] += runs * shape_bytes(inst.shape)
        return [Collective(k, c, b) for k, (c, b) in sorted(found.items())]

    def flops(self, repeats: bool = False) -> int:
        """2 x the multiply-adds of every convolution and dot per call (elementwise
        arithmetic, small beside them, left out); with ``repeats`` only of loop iterations
        after the first."""
        return 2 * sum(
            runs * _products(inst, insts)
            for runs, inst, insts in self._instructions(repeats=repeats)
            if inst.op in ("convolution", "dot", "custom-call")
        )

    def bytes_accessed(self, repeats: bool = False) -> int:
        """Bytes each unfused instruction reads and writes per call (a fusion's operands and
        result, in their tiled layouts); with ``repeats`` only of loop iterations after the
        first."""
        total = 0
        for runs, inst, insts in self._instructions(top_level_only=True, repeats=repeats):
            if inst.op in _NO_TRAFFIC or inst.op.endswith("-done"):
                continue
            operands = [insts[o].shape for o in inst.operands if o in insts]
            total += runs * sum(shape_bytes(s, padded=True) for s in [inst.shape, *operands])
        return total

    def per_call(self, xla: dict[str, float] | None) -> dict[str, float]:
        """XLA's cost analysis of this program (``cost``) with every loop iteration counted:
        XLA counts a loop's body once, so the FLOPs and bytes of the later iterations
        (``flops``, ``bytes_accessed`` with ``repeats``) are added to its figures. Without
        one (XLA:GPU gives none for a deviceless program), this program's own counts."""
        if xla is None:
            return {"flops": self.flops(), "bytes accessed": self.bytes_accessed()}
        return {
            "flops": xla["flops"] + self.flops(repeats=True),
            "bytes accessed": xla["bytes accessed"] + self.bytes_accessed(repeats=True),
        }


@dataclasses.dataclass(frozen=True)
class Memory:
    """Bytes per device of a compiled program: its arguments, outputs, temporaries, the
    outputs that alias (donated) arguments, the generated code, and XLA's peak of the buffers
    live at once. The need (``total``) is the peak plus the code: the peak is what XLA:TPU
    holds against the chip's HBM as it compiles, while ``temporaries`` is its allocation for
    them, which can exceed what is ever live at once (docs/tpu.md). The peak counts the
    arguments on a TPU or GPU, not on XLA:CPU."""

    arguments: int
    outputs: int
    temporaries: int
    aliased: int
    code: int
    peak: int

    @property
    def total(self) -> int:
        return self.peak + self.code


def memory(compiled: Compiled) -> Memory:
    m = compiled.memory_analysis()
    return Memory(
        arguments=m.argument_size_in_bytes,
        outputs=m.output_size_in_bytes,
        temporaries=m.temp_size_in_bytes,
        aliased=m.alias_size_in_bytes,
        code=m.generated_code_size_in_bytes,
        peak=m.peak_memory_in_bytes,
    )


def cost(compiled: Compiled) -> dict[str, float] | None:
    """XLA's cost analysis per device: ``flops``, ``bytes accessed``, ``transcendentals``;
    None where XLA gives none (XLA:GPU without a GPU)."""
    ca = compiled.cost_analysis()
    ca = ca[0] if isinstance(ca, list) and ca else ca
    if not ca:
        return None
    return {k: float(ca.get(k, 0.0)) for k in ("flops", "bytes accessed", "transcendentals")}


def roofline_seconds(
    flops: float, bytes_accessed: float, peak_flops: float, bytes_per_second: float
) -> float:
    """A lower bound on the time of a program of ``flops`` and ``bytes_accessed`` on a chip
    of these peaks: the slower of its compute and its memory traffic at peak rate."""
    return max(flops / peak_flops, bytes_accessed / bytes_per_second)


@dataclasses.dataclass(frozen=True)
class Refused:
    """A program the compiler would not build because it does not fit the chip's memory: the
    compiler's message, and the bytes per chip it said the program needs (None where it said
    no figure)."""

    message: str

    @property
    def required_bytes(self) -> int | None:
        m = _REQUIRED.search(self.message)
        return round(float(m[1]) * _UNITS[m[2]]) if m else None


def compile_program(lowered: Lowered, compiler_options: dict | None = None) -> Compiled | Refused:
    """``lowered`` compiled, or ``Refused`` where the compiler ran out of the chip's memory
    (XLA:TPU's RESOURCE_EXHAUSTED at compile time); any other error is raised."""
    try:
        return lowered.compile(compiler_options)
    except jax.errors.JaxRuntimeError as e:
        message = str(e)
        if message.startswith("RESOURCE_EXHAUSTED") and "Ran out of memory" in message:
            return Refused(message.splitlines()[0])
        raise
