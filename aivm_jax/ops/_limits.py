"""The opset's bounds, in one place: what validation enforces so that a valid program computes
the same bits on every conforming engine, row by row, within stated resources.

Two kinds of bound live here (``docs/spec/limits.md`` lists them with their reasons):

* **Exactness bounds**: an op's argument that every engine (NumPy reference, XLA lowering,
  the CPU kernels) computes the same integers relies on them. Crossing one would let an
  int32 intermediate of one engine wrap where the reference does not.
* **Resource bounds**: they keep every valid program's tensors, windows, node count,
  work and compile cost within what the spec promises a conforming node can hold, so that
  nodes never split between a result and an out-of-memory error or an endless compile.
  They are generous: every zoo model validates with a wide margin.

Every bound is checked when a `Program` is built (and so when a ``.aivm`` file is loaded);
a program over one is refused with `OpError` or `ProgramError`, naming the bound.
"""

from __future__ import annotations

__all__ = [
    "AVG_POOL_EXACT_WINDOW",
    "LAYER_NORM_MAX_AXIS",
    "MAX_ATTR_INT",
    "MAX_COMPILE_UNITS",
    "MAX_NODES",
    "MAX_PARAM_ELEMENTS",
    "MAX_RANK",
    "MAX_ROW_BYTES",
    "MAX_TENSOR_ELEMENTS",
    "MAX_WINDOW_ELEMENTS",
    "MAX_WORK_PER_ROW",
]

# --------------------------------------------------------------------------- exactness

AVG_POOL_EXACT_WINDOW = 2**22
"""Most elements one ``avg_pool`` window may hold for every engine's int32 arithmetic to be exact.

With ``S`` the window's sum (``-128 n <= S <= 127 n``) and ``n`` its element count: the XLA
lowering forms ``2 S + n`` in ``[-255 n, 255 n]`` and ``2 n`` in int32, exact while
``255 n < 2**31`` (``n <= 8,421,504``); the CPU kernel forms ``2 S + 257 n`` in
``[n, 511 n]`` (its restoring division needs a non-negative dividend), exact while
``511 n < 2**31`` (``n <= 4,202,500``). ``2**22`` is below both. The resource bound
`MAX_WINDOW_ELEMENTS` sits far below it."""

LAYER_NORM_MAX_AXIS = 8192
"""Most elements of ``layer_norm``'s normalized (last) axis: ``sum(c**2) < 2**63`` needs
``D * 2**50 < 2**63`` (``|c| <= 2**25``), so ``D <= 2**13``."""

# --------------------------------------------------------------------------- resources

MAX_RANK = 8
"""Most axes of any tensor: an activation's batch axis included, or a parameter."""

MAX_TENSOR_ELEMENTS = 2**26
"""Most elements of one row of any activation (its shape without the batch axis, at the
longest dynamic lengths) and of any one parameter: 256 MiB as int32. all-MiniLM-L6-v2's
largest tensor, its 30,522 x 384 token embeddings, holds 2**23.5."""

MAX_PARAM_ELEMENTS = 2**28
"""Most parameter elements of a whole program (up to 1 GiB as int32)."""

MAX_ATTR_INT = 2**24
"""Largest integer a shape, window, stride or padding attribute may hold (each also meets the
tensor bounds above); keeps every size product exact in int64 and every kernel attribute in
range."""

MAX_WINDOW_ELEMENTS = 2**16
"""Most elements (``kh * kw``) of a ``max_pool``/``avg_pool`` window: a 256 x 256 global
pool. Below `AVG_POOL_EXACT_WINDOW` with a factor 64 to spare. Pool padding stays below the
window on each side (every window holds an in-bounds element) and ``conv2d`` padding below
its kernel (a ``"full"`` convolution at most), so padding adds at most a window's worth of
outputs per axis."""

MAX_NODES = 4096
"""Most nodes of a program. all-MiniLM-L6-v2 has 235."""

MAX_WORK_PER_ROW = 2**36
"""Most work of one row at the longest dynamic lengths (`aivm_jax.ops.node_cost`: multiply-adds
of the products, window elements of the pools, elements touched elsewhere): about 69 G
operations, seconds of int8 products or a minute of XLA's window sums on one core.
all-MiniLM-L6-v2 at 256 tokens needs 2**31.5. A node refuses a request by its own, tighter,
budget with `aivm_jax.program.Program.resource_estimate`."""

MAX_ROW_BYTES = 2**32
"""Most bytes the graph's values of one row may hold at once (`Program.resource_estimate` at
batch 1: live values plus the running op's temporaries). all-MiniLM-L6-v2 at 256 tokens: 25 MB."""

MAX_COMPILE_UNITS = 4096
"""Most compile units (`aivm_jax.ops.node_cost`) of a program: each op's share of compile time,
in units of one elementwise op, about 10 ms on XLA's path on a 2-core x86 machine
(``layer_norm`` 64, ``softmax`` 16; see `aivm_jax.ops.OpDef`). So at most about 40 s of
compiling there, where 200 layer norms (12,800 units) took 141 s. all-MiniLM-L6-v2 needs
1,260."""

assert MAX_WINDOW_ELEMENTS <= AVG_POOL_EXACT_WINDOW
assert MAX_TENSOR_ELEMENTS <= MAX_PARAM_ELEMENTS < 2**31
