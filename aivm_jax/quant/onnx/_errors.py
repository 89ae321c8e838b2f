"""Errors of the ONNX importer."""

from __future__ import annotations

from collections.abc import Sequence

from aivm_jax._errors import ProgramError

__all__ = ["OnnxImportError", "UnsupportedOnnxError"]


class OnnxImportError(ProgramError):
    """The ONNX file cannot be turned into a program (unreadable, unbound dims, bad calibration)."""


class UnsupportedOnnxError(OnnxImportError):
    """The graph holds ops (or op forms) the importer does not convert; every one is listed.

    Attributes:
      problems: ``(op_type, node_name, reason)`` per unsupported node, in graph order.
    """

    def __init__(self, problems: Sequence[tuple[str, str, str]], opset: int) -> None:
        self.problems = tuple(problems)
        types = sorted({op for op, _, _ in self.problems})
        lines = [f"  {op} (node {name!r}): {reason}" for op, name, reason in self.problems]
        super().__init__(
            f"cannot import this ONNX graph (opset {opset}): unsupported op type(s) {', '.join(types)} "
            f"in {len(self.problems)} node(s):\n"
            + "\n".join(lines)
            + "\nNothing was converted. Replace these ops in the exported model (or export it with a "
            "supported equivalent), or ask for a converter."
        )
