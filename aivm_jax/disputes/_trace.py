"""The trace of a request: every step's output for each batch row, committed step by step.

For batch row ``r`` and step ``s`` (inputs are steps ``0 .. I-1``, node ``n`` is step
``I + n``), the step's output row (its batch row ``r``, no batch axis) is cut into slices
(`aivm_jax.disputes.tensor_slices`) and

* ``step_root[r][s] = merkle_root(leaf("aivm.trace.slice.v1", s, j, slice_j) for j)``;
* ``row_root[r] = merkle_root(leaf("aivm.trace.step.v1", s, 0,
  abi.encode(bytes32 step_root, uint256 dtype, uint256[] row_shape)) for s)``: the row's
  trace root, which depends only on the model and that row's input (not on the batch);
* ``trace_root = merkle_root(leaf("aivm.trace.row.v1", r, batch, row_root[r]) for r)``.

The hashing runs in one native call for the whole batch where the batched Keccak loads
(`aivm_jax.disputes._keccak`), else in Python; both give the same nodes (tests).

Step outputs come from the JAX lowering of each op, unfused, in one jitted function
that returns every intermediate (``engine="jax"``), or from the NumPy reference
(``engine="reference"``); both are bit-identical to `aivm_jax.infer` (tests).
"""

from __future__ import annotations

import collections
import ctypes
import dataclasses
import functools
import math
import struct
import threading
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from aivm_jax._errors import CommitmentError
from aivm_jax.disputes import _keccak
from aivm_jax.disputes._keccak import keccak256
from aivm_jax.disputes._leaves import (
    DTYPE_CODES,
    TAGS,
    dtype_code,
    encode_leaf,
    little_endian,
    slice_bytes,
    tensor_slices,
)
from aivm_jax.disputes._merkle import (
    hash_leaf,
    merkle_levels_python,
    proof_from_levels,
    split_levels,
    tree_nodes,
)
from aivm_jax.disputes._opening import Opening
from aivm_jax.program import Program

__all__ = ["Engine", "RowTrace", "Trace", "commit_values", "step_leaf_payload", "step_values", "trace"]

Engine = Literal["jax", "reference"]
_SLICE, _STEP, _ROW = TAGS["aivm.trace.slice.v1"], TAGS["aivm.trace.step.v1"], TAGS["aivm.trace.row.v1"]


def step_leaf_payload(step_root: bytes, dtype: str, row_shape: Sequence[int]) -> bytes:
    """``abi.encode(bytes32 step_root, uint256 dtype, uint256[] row_shape)``: the payload of a
    step's leaf in a row trace (dtype as its `DTYPE_CODES` width)."""
    return step_root + _payload_tail(DTYPE_CODES[dtype], tuple(int(d) for d in row_shape))


@functools.lru_cache(maxsize=1024)
def _payload_tail(code: int, row_shape: tuple[int, ...]) -> bytes:
    """``step_leaf_payload`` after the step root: the dtype's code and the row shape."""
    words = [code.to_bytes(32, "big"), (96).to_bytes(32, "big")]
    words.append(len(row_shape).to_bytes(32, "big"))
    words += [d.to_bytes(32, "big") for d in row_shape]
    return b"".join(words)


class _Jitted:
    """One program's jitted all-intermediates function and its parameters on the device."""

    def __init__(self, program: Program) -> None:
        import jax

        from aivm_jax.runtime._execute import run_steps

        self.program = program

        def run(params, feeds):
            values = {**params, **feeds}
            run_steps(program.nodes, values, "lowering")
            return [values[node.output] for node in program.nodes]

        self.fn = jax.jit(run)
        self.params = {k: jax.device_put(v) for k, v in program.params.items()}


_jitted: collections.OrderedDict[str, _Jitted] = collections.OrderedDict()
_lock = threading.Lock()


def _jitted_for(program: Program) -> _Jitted:
    with _lock:
        entry = _jitted.get(program.model_id)
        if entry is None or entry.program is not program:
            entry = _jitted[program.model_id] = _Jitted(program)
            while len(_jitted) > 8:
                _jitted.popitem(last=False)
        _jitted.move_to_end(program.model_id)
        return entry


def step_values(program: Program, inputs: Any, *, engine: Engine = "jax") -> list[np.ndarray]:
    """Every step's batched output in trace order: the program inputs (checked and cast as
    `aivm_jax.infer` does), then each node's output. NumPy arrays, int8 or int32, batch first.

    Raises:
      InputDTypeError, InputShapeError, InputRangeError: inputs `infer` would refuse.
    """
    from aivm_jax.runtime._infer import _feeds

    feeds, _ = _feeds(program, inputs)
    given = [feeds[spec.name] for spec in program.inputs]
    if engine == "reference":
        from aivm_jax.runtime._execute import run_steps

        values = {**program.params, **feeds}
        run_steps(program.nodes, values, "reference")
        outs = [values[node.output] for node in program.nodes]
    elif engine == "jax":
        entry = _jitted_for(program)
        outs = entry.fn(entry.params, feeds)
    else:
        raise CommitmentError(f"engine must be 'jax' or 'reference', got {engine!r}")
    return given + [np.asarray(o) for o in outs]


@dataclasses.dataclass(frozen=True, eq=False)
class RowTrace:
    """One batch row's trace: `step_roots` (32 bytes each, in step order) and `root`."""

    step_roots: tuple[bytes, ...]
    root: bytes
    _step_levels: Sequence[list[list[bytes]]] = dataclasses.field(repr=False)
    _levels: list[list[bytes]] = dataclasses.field(repr=False)


@dataclasses.dataclass(frozen=True, eq=False)
class Trace:
    """A request's trace.

    Attributes:
      model_id: the program's id.
      output_hash: ``infer(program, inputs).output_hash``, from the traced outputs.
      root: the trace root over the batch's rows, 32 bytes.
      rows: one `RowTrace` per batch row.
      step_names: each step's value name (inputs, then node outputs).
      values: each step's batched output (NumPy int8/int32, batch first).
    """

    model_id: str
    output_hash: str
    root: bytes
    rows: tuple[RowTrace, ...]
    step_names: tuple[str, ...]
    values: tuple[np.ndarray, ...] = dataclasses.field(repr=False)
    _levels: list[list[bytes]] = dataclasses.field(repr=False)

    @property
    def steps(self) -> int:
        return len(self.step_names)

    @property
    def hex(self) -> str:
        return "0x" + self.root.hex()

    def _check(self, row: int, step: int) -> None:
        if not 0 <= row < len(self.rows):
            raise CommitmentError(f"row {row} is not in a batch of {len(self.rows)}")
        if not 0 <= step < self.steps:
            raise CommitmentError(f"step {step} is not in a trace of {self.steps} steps")

    def slice(self, row: int, step: int, j: int) -> Opening:
        """Slice ``j`` of step ``step``'s output in batch row ``row``, under that step's root."""
        self._check(row, step)
        slices = tensor_slices(self.values[step][row])
        if not 0 <= j < len(slices):
            raise CommitmentError(f"step {step} has {len(slices)} slices, not {j + 1}")
        proof = proof_from_levels(self.rows[row]._step_levels[step], j)
        return Opening(tag=_SLICE, i=step, j=j, payload=slices[j], proof=tuple(proof))

    def step(self, row: int, step: int) -> Opening:
        """Step ``step``'s root (in `step_leaf_payload`) under row ``row``'s trace root."""
        self._check(row, step)
        value = self.values[step]
        payload = step_leaf_payload(self.rows[row].step_roots[step], value.dtype.name, value.shape[1:])
        proof = proof_from_levels(self.rows[row]._levels, step)
        return Opening(tag=_STEP, i=step, j=0, payload=payload, proof=tuple(proof))

    def row(self, row: int) -> Opening:
        """Row ``row``'s trace root under the batch's trace `root`."""
        self._check(row, 0)
        proof = proof_from_levels(self._levels, row)
        return Opening(tag=_ROW, i=row, j=len(self.rows), payload=self.rows[row].root, proof=tuple(proof))


def _leaf(tag: bytes, i: int, j: int, payload: bytes) -> bytes:
    return hash_leaf(encode_leaf(tag, i, j, keccak256(payload)))


def _row_trace(values: Sequence[np.ndarray], row: int, payload_tails: Sequence[bytes]) -> RowTrace:
    step_levels, step_leaves, roots = [], [], []
    for s, value in enumerate(values):
        slices = tensor_slices(value[row])
        levels = merkle_levels_python([_leaf(_SLICE, s, j, data) for j, data in enumerate(slices)])
        step_levels.append(levels)
        root = levels[-1][0]
        roots.append(root)
        step_leaves.append(_leaf(_STEP, s, 0, root + payload_tails[s]))
    levels = merkle_levels_python(step_leaves)
    return RowTrace(step_roots=tuple(roots), root=levels[-1][0], _step_levels=step_levels, _levels=levels)


def _commit_python(
    values: Sequence[np.ndarray], tails: Sequence[bytes]
) -> tuple[tuple[RowTrace, ...], list[list[bytes]]]:
    """The row traces and the batch tree's levels, one Python call per hash (the reference)."""
    batch = values[0].shape[0]
    rows = tuple(_row_trace(values, r, tails) for r in range(batch))
    levels = merkle_levels_python([_leaf(_ROW, r, batch, rt.root) for r, rt in enumerate(rows)])
    return rows, levels


_TAGS = _SLICE + _STEP + _ROW


def _widths(n: int) -> list[int]:
    """The level sizes of a tree of ``n`` leaves, the leaves first."""
    widths = [n]
    while n > 1:
        n = (n + 1) // 2
        widths.append(n)
    return widths


class _Layout:
    """What ``aivm_trace`` (``_native/keccak.cc``) is told about a batch of one shape, and
    where it puts each node: ``key`` is the batch size and each step's (dtype code, batched
    shape). `struct` reads in one call every step root, every row-tree node and every
    batch-tree node of the output as 32-byte ``bytes``."""

    def __init__(self, batch: int, key: tuple[tuple[int, tuple[int, ...]], ...]) -> None:
        steps = len(key)
        row_bytes = [math.prod(shape[1:]) * code // 8 for code, shape in key]
        cut = [slice_bytes(shape[1:], code // 8) for code, shape in key]
        tails = [_payload_tail(code, shape[1:]) for code, shape in key]
        self.words = struct.pack(
            f"<{3 * steps}Q", *[w for t in zip(row_bytes, cut, map(len, tails)) for w in t]
        )
        self.tails = b"".join(tails)
        self.slices = [-(-n // c) for n, c in zip(row_bytes, cut)]
        self.offsets = [0]
        for n in self.slices:
            self.offsets.append(self.offsets[-1] + 32 * tree_nodes(n))
        self.per_row = self.offsets[-1] + 32 * tree_nodes(steps)
        self.size = batch * self.per_row + 32 * tree_nodes(batch)
        row = "".join(f"{32 * (tree_nodes(n) - 1)}x32s" for n in self.slices) + "32s" * tree_nodes(steps)
        self.struct = struct.Struct("<" + row * batch + "32s" * tree_nodes(batch))
        self.per_row_items = steps + tree_nodes(steps)
        self.row_levels = self._bounds(steps, steps)  # in a row's items, after its step roots
        self.batch_levels = self._bounds(batch, batch * self.per_row_items)

    @staticmethod
    def _bounds(n: int, at: int) -> list[tuple[int, int]]:
        bounds = []
        for width in _widths(n):
            bounds.append((at, at + width))
            at += width
        return bounds


_layout = functools.lru_cache(maxsize=64)(_Layout)


class _StepLevels(Sequence[list[list[bytes]]]):
    """One row's step trees (`RowTrace._step_levels`), each read from the native call's
    nodes when first asked for: item ``s`` is step ``s``'s `merkle_levels`."""

    __slots__ = ("_raw", "_base", "_layout", "_read")

    def __init__(self, raw: bytes, base: int, layout: _Layout) -> None:
        self._raw, self._base, self._layout = raw, base, layout
        self._read: dict[int, list[list[bytes]]] = {}

    def __len__(self) -> int:
        return len(self._layout.slices)

    def __getitem__(self, s):  # type: ignore[override]
        if isinstance(s, slice):
            return [self[k] for k in range(*s.indices(len(self)))]
        s = range(len(self))[s]
        if s not in self._read:
            layout = self._layout
            self._read[s] = split_levels(self._raw, layout.slices[s], self._base + layout.offsets[s])
        return self._read[s]


def _commit_native(
    library: ctypes.CDLL, values: Sequence[np.ndarray], codes: Sequence[int]
) -> tuple[tuple[RowTrace, ...], list[list[bytes]]]:
    """`_commit_python`'s result from one native call (``aivm_trace`` in ``_native/keccak.cc``,
    which documents the node layout this reads back)."""
    steps, batch = len(values), values[0].shape[0]
    layout = _layout(batch, tuple(zip(codes, (v.shape for v in values))))
    out = ctypes.create_string_buffer(layout.size)
    data = b"".join([little_endian(v) for v in values])
    library.aivm_trace(steps, batch, data, layout.words, layout.tails, _TAGS, out)
    raw = out.raw
    items = layout.struct.unpack(raw)
    rows = []
    width = layout.per_row_items
    for r in range(batch):
        at = r * width
        levels = [list(items[at + a : at + b]) for a, b in layout.row_levels]
        rows.append(
            RowTrace(
                step_roots=items[at : at + steps],
                root=levels[-1][0],
                _step_levels=_StepLevels(raw, r * layout.per_row, layout),
                _levels=levels,
            )
        )
    return tuple(rows), [list(items[a:b]) for a, b in layout.batch_levels]


def trace(program: Program, inputs: Any, *, engine: Engine = "jax") -> Trace:
    """Run ``program`` on ``inputs`` (as `aivm_jax.infer` takes them) keeping every step's
    output, and commit to all of them (see the module docstring).

    Returns:
      A `Trace`; its `output_hash` equals ``infer(program, inputs).output_hash`` and its
      row traces equal those of each row run alone.

    Raises:
      InputDTypeError, InputShapeError, InputRangeError: inputs `infer` would refuse.
    """
    return commit_values(program, step_values(program, inputs, engine=engine))


def commit_values(program: Program, values: Sequence[np.ndarray]) -> Trace:
    """The `Trace` of given step values (`step_values`' layout: inputs, then node outputs,
    batched): how a trace is committed, and how a test or a fault-injecting node commits
    to values that are not the program's.

    Raises:
      CommitmentError: not one batched int8/int32 array per step, sharing one batch size.
    """
    from aivm_jax.runtime._hashing import output_hash, row_hash_table

    names = [spec.name for spec in program.inputs] + [node.output for node in program.nodes]
    values = [np.asarray(v) for v in values]
    if (
        len(values) != len(names)
        or len({v.shape[0] if v.ndim else -1 for v in values}) != 1
        or any(v.ndim == 0 for v in values)
    ):
        raise CommitmentError(
            f"expected {len(names)} batched arrays sharing one batch size, one per step, got "
            f"{[v.shape for v in values]}"
        )
    codes = [dtype_code(v.dtype) for v in values]  # raises for a dtype that is not int8/int32
    index = {name: s for s, name in enumerate(names)}
    outs = [values[index[spec.name]] for spec in program.outputs]
    digests, _ = row_hash_table(program.model_id, [spec.name for spec in program.outputs], outs)
    library = _keccak.native_library()
    if library is None or any(v.size == 0 for v in values):  # (an empty tree raises in Python)
        tails = [_payload_tail(c, v.shape[1:]) for c, v in zip(codes, values)]
        rows, levels = _commit_python(values, tails)
    else:
        rows, levels = _commit_native(library, values, codes)
    return Trace(
        model_id=program.model_id,
        output_hash=output_hash(program.model_id, digests),
        root=levels[-1][0],
        rows=rows,
        step_names=tuple(names),
        values=tuple(values),
        _levels=levels,
    )
