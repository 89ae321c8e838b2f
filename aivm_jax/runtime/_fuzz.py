"""A differential fuzz of the engines: random *valid* programs at the opset's edges, run on every
engine, rows alone and batched, compared bit for bit.

`random_case` draws a program (a chain over the opset, with the runtime's fused chains
among them: dense, conv dense, layer norm or table then requantize, attention) and a batch
of inputs at the edges (int8 and int32 limits, ties, saturation, sums that wrap past
``2**31``, masked rows, batch sizes 1..N, dynamic lengths). `run_engines` runs it through
the NumPy reference, the jitted runtime (the CPU kernels where they run here) and eager
JAX, and every row alone; `compare_engines` says where any two differ. The XLA-only engine
(``AIVM_INT8_GEMM=xla``) is a per-process switch: ``scripts/fuzz_engines.py`` runs the
same cases in a second process with it and compares the row hashes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping

import numpy as np

from aivm_jax._errors import ProgramError
from aivm_jax.ops import TensorType, check_node
from aivm_jax.program import Node, Program, ValueSpec
from aivm_jax.runtime._infer import infer

__all__ = ["FuzzCase", "compare_engines", "random_case", "run_engines"]

_I8 = (-128, 127, 0, -1, 1)
_I32 = (-(2**31), 2**31 - 1, 0, -1, 1, -3, 3, 2**30, -(2**30))


@dataclasses.dataclass(frozen=True)
class FuzzCase:
    """A random valid program and one batch of inputs for it (``seed`` redraws it)."""

    seed: int
    program: Program
    feeds: Mapping[str, np.ndarray]


def _ints(rng, low, high, shape, dtype, edges=()):
    out = rng.integers(low, high, size=shape, endpoint=True, dtype=np.int64)
    flat = out.reshape(-1)
    picks = rng.random(flat.size) < 0.2  # a fifth of the values at an edge
    if edges and picks.any():
        flat[picks] = rng.choice(np.array(edges, np.int64), size=int(picks.sum()))
    return out.astype(dtype)


class _Builder:
    """A chain under construction: typed activations (at batch 1), nodes, parameters, inputs."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.inputs: list[ValueSpec] = []
        self.nodes: list[Node] = []
        self.params: dict[str, np.ndarray] = {}
        self.types: dict[str, TensorType] = {}
        self.masks: list[str] = []

    def name(self, stem: str) -> str:
        return f"{stem}{len(self.nodes) + len(self.params) + len(self.inputs)}"

    def input(self, dtype: str, shape: tuple[int, ...], dynamic=(), bounds=None) -> str:
        name = self.name("in")
        self.inputs.append(ValueSpec(name=name, dtype=dtype, shape=shape, dynamic=dynamic, bounds=bounds))
        self.types[name] = TensorType(dtype, (1, *shape))
        return name

    def param(self, array: np.ndarray) -> str:
        name = self.name("p")
        self.params[name] = np.asarray(array)
        return name

    def op(self, op: str, inputs: list[str], **attrs) -> str:
        kinds = ["param" if n in self.params else "act" for n in inputs]
        types = [
            TensorType(self.params[n].dtype.name, self.params[n].shape) if n in self.params else self.types[n]
            for n in inputs
        ]
        out, canonical = check_node(
            op, types, kinds, attrs, [self.params[n] for n in inputs if n in self.params]
        )
        name = self.name("v")
        self.nodes.append(Node(op=op, inputs=tuple(inputs), output=name, attrs=canonical))
        self.types[name] = out
        return name

    def row(self, name: str) -> tuple[int, ...]:
        return self.types[name].shape[1:]

    def mask(self, length: int) -> str:
        name = self.input("int8", (length,))
        self.masks.append(name)
        return name


def _rescale(b: _Builder, channels: int, *, small_shift: bool = False):
    """A multiplier and shift, per tensor or per channel, at their edges."""
    shape = (channels,) if b.rng.random() < 0.5 else ()
    m = _ints(b.rng, -(2**31), 2**31 - 1, shape, np.int32, _I32)
    top = 20 if small_shift else 62
    s = _ints(b.rng, 0, top, shape, np.int32, (0, 1, top))
    return b.param(m), b.param(s)


# Each step takes the builder and the current activation and returns the new one (or None when
# it does not apply to that activation). Steps marked fused build the runtime's fused chains.


def _dense(b: _Builder, x: str) -> str | None:  # fused: matmul [-> bias_add] -> requantize [-> relu]
    if b.types[x].dtype != "int8" or len(b.row(x)) < 1:
        return None
    k, n = b.row(x)[-1], int(b.rng.integers(1, 9))
    y = b.op("matmul", [x, b.param(_ints(b.rng, -128, 127, (k, n), np.int8, _I8))])
    if b.rng.random() < 0.7:
        y = b.op("bias_add", [y, b.param(_ints(b.rng, -(2**31), 2**31 - 1, (n,), np.int32, _I32))])
    if b.rng.random() < 0.8:
        y = b.op("requantize", [y, *_rescale(b, n)], out_dtype=str(b.rng.choice(["int8", "int32"])))
        if b.rng.random() < 0.5:
            y = b.op("relu", [y])
    return y


def _conv(b: _Builder, x: str) -> str | None:  # fused: conv2d -> bias_add -> requantize -> relu
    if b.types[x].dtype != "int8" or len(b.row(x)) != 3:
        return None
    h, w, c = b.row(x)
    kh, kw = int(b.rng.integers(1, min(h, 3) + 1)), int(b.rng.integers(1, min(w, 3) + 1))
    pads = tuple(tuple(int(v) for v in b.rng.integers(0, k, 2)) for k in (kh, kw))
    strides = tuple(int(v) for v in b.rng.integers(1, 3, 2))
    o = int(b.rng.integers(1, 5))
    wt = b.param(_ints(b.rng, -128, 127, (kh, kw, c, o), np.int8, _I8))
    y = b.op("conv2d", [x, wt], strides=strides, padding=pads)
    y = b.op("bias_add", [y, b.param(_ints(b.rng, -(2**20), 2**20, (o,), np.int32, (0, 1)))])
    y = b.op("requantize", [y, *_rescale(b, o, small_shift=True)], out_dtype="int8")
    return b.op("relu", [y]) if b.rng.random() < 0.5 else y


def _pool(b: _Builder, x: str) -> str | None:
    if b.types[x].dtype != "int8" or len(b.row(x)) != 3:
        return None
    h, w, _ = b.row(x)
    window = (int(b.rng.integers(1, h + 1)), int(b.rng.integers(1, w + 1)))
    pads = tuple(tuple(int(v) for v in b.rng.integers(0, k, 2)) for k in window)
    strides = tuple(int(v) for v in b.rng.integers(1, 3, 2))
    op = str(b.rng.choice(["max_pool", "avg_pool"]))
    return b.op(op, [x], window=window, strides=strides, padding=pads)


def _to_image(b: _Builder, x: str) -> str | None:
    size = int(np.prod(b.row(x)))
    if b.types[x].dtype != "int8" or size < 2:
        return None
    for h in (2, 3, 4, 1):
        if size % h == 0:
            return b.op("reshape", [x], shape=(h, -1, 1))
    return None


def _layer_norm(b: _Builder, x: str) -> str | None:  # fused with an int8 requantize half the time
    if b.types[x].dtype != "int32" or len(b.row(x)) < 1:
        return None
    d = b.row(x)[-1]
    gamma = b.param(_ints(b.rng, -(2**31), 2**31 - 1, (d,), np.int32, _I32 + (0, 1)))
    beta = b.param(_ints(b.rng, -(2**31), 2**31 - 1, (d,), np.int32, _I32))
    eps = int(b.rng.choice([0, 1, 2**31 - 1, int(b.rng.integers(0, 2**31))]))
    y = b.op("layer_norm", [x, gamma, beta], eps=eps)
    if b.rng.random() < 0.5:
        y = b.op("requantize", [y, *_rescale(b, d)], out_dtype="int8")
    return y


def _table(b: _Builder, x: str) -> str | None:  # fused: table (int32) -> requantize (int8)
    if b.types[x].dtype != "int8":
        return None
    if b.rng.random() < 0.5:
        return b.op("table", [x, b.param(_ints(b.rng, -128, 127, (256,), np.int8, _I8))])
    y = b.op("table", [x, b.param(_ints(b.rng, -(2**31), 2**31 - 1, (256,), np.int32, _I32))])
    if len(b.row(y)) == 0:
        return y
    return b.op("requantize", [y, *_rescale(b, b.row(y)[-1])], out_dtype="int8")


def _attention(b: _Builder, x: str) -> str | None:  # fused: the attention chain
    if b.types[x].dtype != "int8" or len(b.row(x)) != 3:
        return None
    _, t, _ = b.row(x)
    k_t = b.op("transpose", [x], perm=(0, 2, 1))
    scores = b.op("batch_matmul", [x, k_t])
    scores = b.op(
        "requantize",
        [scores, b.param(np.int32(b.rng.integers(1, 2**20))), b.param(np.int32(b.rng.integers(0, 12)))],
        out_dtype="int32",
    )
    table = np.round(2.0**30 * 2.0 ** (-np.arange(256) / 256)).astype(np.int32)
    p = b.op(
        "softmax",
        [scores, b.mask(t), b.param(table)],
        causal=bool(b.rng.random() < 0.5),
        out_bits=int(b.rng.choice([1, 8, 15, 30])),
    )
    context = b.op("batch_matmul", [p, x])
    if b.rng.random() < 0.5:
        context = b.op("requantize", [context, *_rescale(b, b.row(context)[-1])], out_dtype="int8")
    return context


def _elementwise(b: _Builder, x: str) -> str | None:
    dtype = b.types[x].dtype
    choice = b.rng.integers(0, 4)
    if choice == 0:
        return b.op("relu", [x])
    if choice == 1 and len(b.row(x)) >= 1:
        n = b.row(x)[-1]
        mx = b.param(
            _ints(b.rng, -(2**30), 2**30, (n,) if b.rng.random() < 0.5 else (), np.int32, (2**30, -(2**30)))
        )
        my = b.param(_ints(b.rng, -(2**30), 2**30, (), np.int32, (2**30, -(2**30), 0)))
        s = b.param(_ints(b.rng, 0, 62, (), np.int32, (0, 1, 62)))
        other = b.op("relu", [x])
        return b.op("add", [x, other, mx, my, s], out_dtype=str(b.rng.choice(["int8", "int32"])))
    if choice == 2 and dtype == "int32" and len(b.row(x)) >= 1:
        n = b.row(x)[-1]
        return b.op("bias_add", [x, b.param(_ints(b.rng, -(2**31), 2**31 - 1, (n,), np.int32, _I32))])
    if dtype == "int32":  # saturation: the identity rescale to int8
        return b.op("requantize", [x, b.param(np.int32(1)), b.param(np.int32(0))], out_dtype="int8")
    return b.op("relu", [x])


def _shape_op(b: _Builder, x: str) -> str | None:
    row = b.row(x)
    choice = b.rng.integers(0, 4)
    if choice == 0 or len(row) < 2:
        return b.op("flatten", [x])
    if choice == 1:
        perm = tuple(int(v) for v in b.rng.permutation(len(row)))
        return b.op("transpose", [x], perm=perm)
    if choice == 2:
        axis = int(b.rng.integers(1, len(row) + 1))
        return b.op("concat", [x, x], axis=axis if b.rng.random() < 0.5 else axis - len(row) - 1)
    return b.op("reshape", [x], shape=(*row[:-2], -1))


def _row_ops(b: _Builder, x: str) -> str | None:  # iota, argmax, mean_pool, gather: each ends in int32
    row = b.row(x)
    choice = b.rng.integers(0, 4)
    if choice == 0 and len(row) >= 1:
        return b.op("iota", [x])
    if choice == 1 and len(row) >= 1:
        return b.op("argmax", [x], axis=int(b.rng.integers(1, len(row) + 1)))
    if choice == 2 and len(row) == 2:
        return b.op("mean_pool", [x, b.mask(row[0])])
    if b.types[x].dtype == "int32":
        v = int(b.rng.integers(1, 6))
        return b.op("gather", [x, b.param(_ints(b.rng, -128, 127, (v, 3), np.int8, _I8))])
    return None


_STEPS: list[Callable[[_Builder, str], str | None]] = [
    _dense,
    _conv,
    _pool,
    _to_image,
    _layer_norm,
    _table,
    _attention,
    _elementwise,
    _shape_op,
    _row_ops,
]


def _draw_input(b: _Builder) -> tuple[str, int | None]:
    """The chain's first input: int8 or int32, rank 0-3, maybe one dynamic axis."""
    rng = b.rng
    rank = int(rng.choice([1, 2, 3, 3, 0]))
    shape = tuple(int(v) for v in rng.integers(1, 6, rank))
    dtype = str(rng.choice(["int8", "int32"]))
    dynamic = (int(rng.integers(0, rank)),) if rank and rng.random() < 0.25 else ()
    return b.input(dtype, shape, dynamic=dynamic), (dynamic[0] if dynamic else None)


def _feeds(b: _Builder, program: Program, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    lengths: dict[int, int] = {}
    feeds = {}
    for spec in program.inputs:
        shape = list(spec.shape)
        for axis in spec.dynamic:
            shape[axis] = lengths.setdefault(axis, int(rng.integers(1, spec.shape[axis] + 1)))
        if spec.name in b.masks:  # nonzero: attend; some rows fully masked
            keep = rng.random((batch, *shape)) < 0.7
            keep[rng.random(batch) < 0.3] = False
            values = _ints(rng, -128, 127, keep.shape, np.int8, (1, -128, 127))
            feeds[spec.name] = np.where(keep, np.where(values == 0, np.int8(1), values), np.int8(0))
        elif spec.dtype == "int8":
            feeds[spec.name] = _ints(rng, -128, 127, (batch, *shape), np.int8, _I8)
        else:
            feeds[spec.name] = _ints(rng, -(2**31), 2**31 - 1, (batch, *shape), np.int32, _I32)
    return feeds


def random_case(seed: int, *, max_steps: int = 4, max_batch: int = 5) -> FuzzCase:
    """A random valid program of up to ``max_steps`` chain steps and a batch of 1..``max_batch``
    rows for it, both drawn from ``seed`` alone (the same case on every machine)."""
    for attempt in range(100):
        rng = np.random.default_rng([seed, attempt])
        b = _Builder(rng)
        x, dynamic_axis = _draw_input(b)
        try:
            for _ in range(int(rng.integers(1, max_steps + 1))):
                for step in rng.permutation(len(_STEPS)):
                    y = _STEPS[step](b, x)
                    if y is not None:
                        x = y
                        break
            dims = b.row(x)
            # With a dynamic input every output axis may vary (shapes only shrink with the input).
            dynamic = tuple(range(len(dims))) if dynamic_axis is not None else ()
            output = ValueSpec(name=x, dtype=b.types[x].dtype, shape=dims, dynamic=dynamic)
            program = Program(
                name=f"fuzz-{seed}",
                inputs=tuple(b.inputs),
                outputs=(output,),
                nodes=tuple(b.nodes),
                params=b.params,
            )
        except ProgramError:  # a draw that is invalid (say, fits only the longest length): redraw
            continue
        return FuzzCase(seed, program, _feeds(b, program, int(rng.integers(1, max_batch + 1)), rng))
    raise RuntimeError(f"no valid program drawn for seed {seed}")  # pragma: no cover


def run_engines(case: FuzzCase, *, rows_alone: bool = True) -> dict[str, list[np.ndarray]]:
    """Every output of ``case`` per engine: ``reference``, ``jit``, ``eager``, and with
    ``rows_alone`` ``jit-rows`` (each row run as a batch of one, stacked)."""
    program, feeds = case.program, dict(case.feeds)
    names = [spec.name for spec in program.outputs]
    out = {}
    for mode in ("reference", "jit", "eager"):
        result = infer(program, feeds, mode=mode)
        out[mode] = [result.named_outputs[n] for n in names]
    if rows_alone:
        batch = next(iter(feeds.values())).shape[0]
        alone = [infer(program, {k: v[i : i + 1] for k, v in feeds.items()}) for i in range(batch)]
        out["jit-rows"] = [np.concatenate([r.named_outputs[n] for r in alone]) for n in names]
    return out


def compare_engines(results: Mapping[str, list[np.ndarray]]) -> list[str]:
    """Each engine whose outputs differ from the reference's in dtype, shape or any bit."""
    base = results["reference"]
    problems = []
    for engine, outs in results.items():
        for i, (got, want) in enumerate(zip(outs, base)):
            if got.dtype != want.dtype or got.shape != want.shape or not np.array_equal(got, want):
                where = np.argwhere(got != want)[:3].tolist() if got.shape == want.shape else "shape"
                problems.append(f"{engine}: output {i} differs from the reference at {where}")
    return problems
