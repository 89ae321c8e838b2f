"""The model commitment: one Merkle root over a program's steps and every slice of its tensors.

Leaves, in this order (each ``leaf(tag, i, j, payload)``, `aivm_jax.disputes._leaves`;
``abi.encode`` layouts in ``docs/spec/commitments.md``):

1. ``aivm.model.v1`` at ``(0, 0)``: the header (model id, opset, counts, `SLICE_BYTES`).
2. ``aivm.input.v1`` at ``(i, 0)`` per program input ``i``: name hash, dtype, shape,
   dynamic axes, bounds. Input ``i`` is step ``i`` of the trace.
3. ``aivm.step.v1`` at ``(s, 0)`` per node, ``s = len(inputs) + node index``: the step
   descriptor (op, operands, output dtype and row shape, canonical attributes).
4. ``aivm.output.v1`` at ``(k, s)`` per program output ``k``, computed by step ``s``.
5. Per parameter ``p`` (names sorted, as in the ``.aivm`` file): ``aivm.param.v1`` at
   ``(p, 0)`` (name hash, dtype, shape); ``aivm.param.row.v1`` at ``(p, j)`` per slice of
   its rows; and for rank >= 2, ``aivm.param.col.v1`` at ``(p, j)`` per slice of its
   columns: the rows of ``W.reshape(-1, D).T``, so a matmul weight's column ``n`` (``K``
   elements) or a conv2d kernel's output channel is one row there.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from aivm_jax._errors import CommitmentError
from aivm_jax.disputes._keccak import keccak256
from aivm_jax.disputes._leaves import DTYPE_CODES, SLICE_BYTES, TAGS, leaf, tag, tensor_slices
from aivm_jax.disputes._merkle import merkle_levels, proof_from_levels
from aivm_jax.disputes._opening import Opening
from aivm_jax.program import Program

__all__ = [
    "OPERAND_PARAM",
    "OPERAND_VALUE",
    "STEP_DESCRIPTOR_ABI",
    "ModelCommitment",
    "attrs_words",
    "decode_step_descriptor",
    "model_commitment",
    "step_descriptor",
]

OPERAND_VALUE = 0
"""Operand kind: a value of the trace (an input or an earlier step's output); index = its step."""
OPERAND_PARAM = 1
"""Operand kind: a parameter; index = its position among the sorted parameter names."""

STEP_DESCRIPTOR_ABI = ["bytes32", "(uint256,uint256,uint256,uint256[])[]", "uint256", "uint256[]", "int256[]"]
"""``abi.encode`` types of a step descriptor: op, operands ``(kind, index, dtype, shape)``,
output dtype, output row shape, attributes (`attrs_words`)."""

_VALUE_ABI = ["bytes32", "uint256", "uint256[]"]  # param / output descriptors: name hash, dtype, shape
_INPUT_ABI = ["bytes32", "uint256", "uint256[]", "uint256[]", "bool", "int256", "int256"]
_HEADER_ABI = ["bytes32", "uint256", "uint256", "uint256", "uint256", "uint256", "uint256"]


def _abi_encode(types: Sequence[str], values: Sequence[Any]) -> bytes:
    from eth_abi import encode

    return encode(list(types), list(values))


def _flat_ints(value: Any) -> list[int]:
    if isinstance(value, bool):
        return [int(value)]
    if isinstance(value, int):
        return [value]
    if isinstance(value, str):
        if value not in DTYPE_CODES:
            raise CommitmentError(f"attribute value {value!r} has no integer code")
        return [DTYPE_CODES[value]]
    if isinstance(value, (list, tuple)):
        return [v for item in value for v in _flat_ints(item)]
    raise CommitmentError(f"attribute value {value!r} ({type(value).__name__}) has no integer encoding")


def attrs_words(attrs: Mapping[str, Any]) -> list[int]:
    """A node's canonical attributes as ``int256[]``: for each attribute in sorted name order,
    its count of integers, then the integers (tuples flattened in order; a bool is 0 or 1; a
    dtype name its `DTYPE_CODES` width).

    >>> attrs_words({"strides": (1, 2), "padding": ((0, 1), (1, 0))})
    [4, 0, 1, 1, 0, 2, 1, 2]
    >>> attrs_words({"out_dtype": "int8"})
    [1, 8]
    """
    words = []
    for name in sorted(attrs):
        flat = _flat_ints(attrs[name])
        words += [len(flat), *flat]
    return words


def _name_hash(name: str) -> bytes:
    return keccak256(name.encode())


def _step_of(program: Program) -> dict[str, int]:
    """Value name -> its step index (inputs first, then nodes in order)."""
    steps = {spec.name: i for i, spec in enumerate(program.inputs)}
    for n, node in enumerate(program.nodes):
        steps[node.output] = len(program.inputs) + n
    return steps


def step_descriptor(program: Program, step: int) -> bytes:
    """The ``abi.encode``-d descriptor of node step ``step`` (`STEP_DESCRIPTOR_ABI`).

    Operands are ``(OPERAND_VALUE, step, dtype, row shape)`` for an input or an earlier
    step's output (row shape: no batch axis, dynamic axes at their longest) and
    ``(OPERAND_PARAM, p, dtype, shape)`` for a parameter.

    Raises:
      CommitmentError: ``step`` is an input or past the last node.
    """
    first = len(program.inputs)
    if not first <= step < first + len(program.nodes):
        raise CommitmentError(
            f"step {step} is not a node step: nodes are steps {first}..{first + len(program.nodes) - 1}"
        )
    return _descriptors(program)[step - first]


@functools.lru_cache(maxsize=8)
def _descriptors(program: Program) -> tuple[bytes, ...]:
    """Every node's descriptor, in order (cached per program object: MiniLM's take about 1 s)."""
    steps = _step_of(program)
    params = {name: p for p, name in enumerate(sorted(program.params))}
    dtypes = {spec.name: spec.dtype for spec in program.inputs}
    out = []
    for node in program.nodes:
        operands = []
        for name in node.inputs:
            if name in params:
                array = program.params[name]
                operands.append(
                    (OPERAND_PARAM, params[name], DTYPE_CODES[array.dtype.name], list(array.shape))
                )
            else:
                operands.append(
                    (OPERAND_VALUE, steps[name], DTYPE_CODES[dtypes[name]], list(program.value_shape(name)))
                )
        dtypes[node.output] = _output_dtype(program, node, dtypes)
        out.append(
            _abi_encode(
                STEP_DESCRIPTOR_ABI,
                [
                    tag(node.op),
                    operands,
                    DTYPE_CODES[dtypes[node.output]],
                    list(program.value_shape(node.output)),
                    attrs_words(node.attrs),
                ],
            )
        )
    return tuple(out)


def _output_dtype(program: Program, node, dtypes: Mapping[str, str]) -> str:
    """A node's output dtype, from the opset's check (the program is valid, so it passes)."""
    from aivm_jax.ops import TensorType, check_node

    types, kinds, values = [], [], []
    for name in node.inputs:
        if name in program.params:
            array = program.params[name]
            types.append(TensorType(array.dtype.name, array.shape))
            kinds.append("param")
            values.append(array)
        else:
            types.append(TensorType(dtypes[name], (1, *program.value_shape(name))))
            kinds.append("act")
    out_type, _ = check_node(node.op, types, kinds, node.attrs, values)
    return out_type.dtype


def decode_step_descriptor(payload: bytes) -> dict[str, Any]:
    """A step descriptor back as ``{"op", "operands", "dtype", "shape", "attrs"}`` (for tests
    and tools; a contract uses ``abi.decode``)."""
    from eth_abi import decode

    op, operands, dtype, shape, attrs = decode(STEP_DESCRIPTOR_ABI, payload)
    return {
        "op": op.rstrip(b"\0").decode("ascii"),
        "operands": [(k, i, d, tuple(s)) for k, i, d, s in operands],
        "dtype": dtype,
        "shape": tuple(shape),
        "attrs": list(attrs),
    }


@dataclasses.dataclass(frozen=True, eq=False)
class ModelCommitment:
    """A program's model commitment: `root` and what it takes to open any leaf.

    Attributes:
      model_id: the program's id (``0x`` + 64 hex digits), also in the header leaf.
      root: the Merkle root, 32 bytes (`hex` gives ``0x`` + 64 hex digits).
      param_names: parameter names in commitment order (sorted); ``p`` indexes it.
      leaf_count: how many leaves the tree has.
    """

    model_id: str
    root: bytes
    param_names: tuple[str, ...]
    leaf_count: int
    _levels: list[list[bytes]] = dataclasses.field(repr=False)
    _openings: dict[tuple[str, int, int], tuple[int, bytes]] = dataclasses.field(repr=False)

    @property
    def hex(self) -> str:
        return "0x" + self.root.hex()

    def _open(self, tag_name: str, i: int, j: int, what: str) -> Opening:
        try:
            position, payload = self._openings[(tag_name, i, j)]
        except KeyError:
            raise CommitmentError(f"the model commitment has no {what}") from None
        return Opening(
            tag=TAGS[tag_name],
            i=i,
            j=j,
            payload=payload,
            proof=tuple(proof_from_levels(self._levels, position)),
        )

    def header(self) -> Opening:
        """The header leaf: ``abi.encode(bytes32 modelId, opset, inputs, nodes, params, outputs,
        SLICE_BYTES)``."""
        return self._open("aivm.model.v1", 0, 0, "header")

    def input(self, i: int) -> Opening:
        """Program input ``i``'s spec (it is step ``i`` of a trace)."""
        return self._open("aivm.input.v1", i, 0, f"input {i}")

    def step(self, s: int) -> Opening:
        """Node step ``s``'s descriptor (`step_descriptor`)."""
        return self._open("aivm.step.v1", s, 0, f"node step {s}")

    def param(self, name: str) -> Opening:
        """Parameter ``name``'s descriptor: name hash, dtype, shape."""
        return self._open("aivm.param.v1", self._p(name), 0, f"parameter {name!r}")

    def param_rows(self, name: str, j: int) -> Opening:
        """Slice ``j`` of parameter ``name``'s rows (its last axis; see `tensor_slices`)."""
        return self._open("aivm.param.row.v1", self._p(name), j, f"row slice {j} of {name!r}")

    def param_columns(self, name: str, j: int) -> Opening:
        """Slice ``j`` of the rows of ``W.reshape(-1, D).T`` for parameter ``name`` (rank >= 2):
        column ``n`` of ``W`` (all leading axes, C order) is row ``n`` there."""
        return self._open("aivm.param.col.v1", self._p(name), j, f"column slice {j} of {name!r}")

    def _p(self, name: str) -> int:
        if name not in self.param_names:
            raise CommitmentError(f"the program has no parameter {name!r}; it has {list(self.param_names)}")
        return self.param_names.index(name)


@functools.lru_cache(maxsize=8)
def _cached(program: Program) -> ModelCommitment:
    return _build(program)


def model_commitment(program: Program) -> ModelCommitment:
    """The program's `ModelCommitment` (cached per program object).

    Cost: Keccak over every parameter byte twice (rows and columns) and one leaf per
    slice; once per model.
    """
    return _cached(program)


def _build(program: Program) -> ModelCommitment:
    entries: list[tuple[str, int, int, bytes]] = []  # (tag name, i, j, payload) in leaf order
    names = tuple(sorted(program.params))
    header = _abi_encode(
        _HEADER_ABI,
        [
            bytes.fromhex(program.model_id[2:]),
            program.opset,
            len(program.inputs),
            len(program.nodes),
            len(names),
            len(program.outputs),
            SLICE_BYTES,
        ],
    )
    entries.append(("aivm.model.v1", 0, 0, header))
    for i, spec in enumerate(program.inputs):
        low, high = spec.bounds if spec.bounds is not None else (0, 0)
        payload = _abi_encode(
            _INPUT_ABI,
            [
                _name_hash(spec.name),
                DTYPE_CODES[spec.dtype],
                list(spec.shape),
                list(spec.dynamic),
                spec.bounds is not None,
                low,
                high,
            ],
        )
        entries.append(("aivm.input.v1", i, 0, payload))
    first = len(program.inputs)
    for n, payload in enumerate(_descriptors(program)):
        entries.append(("aivm.step.v1", first + n, 0, payload))
    steps = _step_of(program)
    for k, spec in enumerate(program.outputs):
        payload = _abi_encode(_VALUE_ABI, [_name_hash(spec.name), DTYPE_CODES[spec.dtype], list(spec.shape)])
        entries.append(("aivm.output.v1", k, steps[spec.name], payload))
    for p, name in enumerate(names):
        array = program.params[name]
        desc = _abi_encode(_VALUE_ABI, [_name_hash(name), DTYPE_CODES[array.dtype.name], list(array.shape)])
        entries.append(("aivm.param.v1", p, 0, desc))
        for j, data in enumerate(tensor_slices(array)):
            entries.append(("aivm.param.row.v1", p, j, data))
        if array.ndim >= 2:
            columns = np.ascontiguousarray(array.reshape(-1, array.shape[-1]).T)
            for j, data in enumerate(tensor_slices(columns)):
                entries.append(("aivm.param.col.v1", p, j, data))
    leaves = [leaf(TAGS[t], i, j, payload) for t, i, j, payload in entries]
    levels = merkle_levels(leaves)
    openings = {(t, i, j): (position, payload) for position, (t, i, j, payload) in enumerate(entries)}
    return ModelCommitment(
        model_id=program.model_id,
        root=levels[-1][0],
        param_names=names,
        leaf_count=len(leaves),
        _levels=levels,
        _openings=openings,
    )
