"""The converter table: one converter function per ONNX op type, keyed by op type and opset range.

A converter is ``convert(ctx, node)``: it reads its operands from the
conversion context (`aivm_jax.quant.onnx._context.Context`), appends opset
nodes through the context's `GraphBuilder`, and binds the node's outputs. Its
optional ``check(graph, node)`` runs on every node *before* any conversion
starts and returns why this particular node cannot be converted (an
attribute, a non-constant operand), or ``None``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

__all__ = ["FOLDABLE", "MAX_OPSET", "MIN_OPSET", "Converter", "converters", "find", "register"]

MIN_OPSET, MAX_OPSET = 13, 20
"""The default-domain opsets the importer reads (what PyTorch's exporters write)."""

FOLDABLE = frozenset(
    {
        "And",
        "Cast",
        "Concat",
        "Constant",
        "ConstantOfShape",
        "Div",
        "Equal",
        "Expand",
        "Gather",
        "Greater",
        "GreaterOrEqual",
        "Less",
        "LessOrEqual",
        "Mul",
        "Neg",
        "Not",
        "Or",
        "Range",
        "ReduceProd",
        "Shape",
        "Size",
        "Slice",
        "Squeeze",
        "Transpose",
        "Trilu",
        "Unsqueeze",
        "Where",
    }
)
"""Op types accepted only when they fold away: every input a constant (or, for ``Shape``, an
input of static shape). Ops with a converter fold too when all their inputs are constant."""


@dataclasses.dataclass(frozen=True)
class Converter:
    """One table entry: ``op_type`` at opsets ``opsets[0]..opsets[1]`` (inclusive)."""

    op_type: str
    opsets: tuple[int, int]
    convert: Callable[[Any, Any], None]
    check: Callable[[Any, Any], str | None] | None = None


_TABLE: dict[str, list[Converter]] = {}


def register(op_type: str, opsets: tuple[int, int] = (MIN_OPSET, MAX_OPSET), check=None):
    """Decorator: register ``convert(ctx, node)`` for ``op_type`` over an opset range."""

    def wrap(convert):
        entries = _TABLE.setdefault(op_type, [])
        for other in entries:
            if not (opsets[1] < other.opsets[0] or other.opsets[1] < opsets[0]):
                raise ValueError(f"converters for {op_type} overlap at opsets {opsets} and {other.opsets}")
        entries.append(Converter(op_type, opsets, convert, check))
        return convert

    return wrap


def find(op_type: str, opset: int) -> Converter | None:
    """The converter for ``op_type`` at ``opset``, or ``None``."""
    for entry in _TABLE.get(op_type, ()):
        if entry.opsets[0] <= opset <= entry.opsets[1]:
            return entry
    return None


def converters() -> dict[str, list[tuple[int, int]]]:
    """Op type -> the opset ranges it converts at (for documentation and tests)."""
    return {op: [c.opsets for c in entries] for op, entries in sorted(_TABLE.items())}
