"""A program's cost for one request, and the refusal of a request over a node's budget."""

from __future__ import annotations

from collections.abc import Mapping

from aivm_jax._errors import ResourceLimitError
from aivm_jax.program import Program, ResourceEstimate

__all__ = ["ResourceLimitError", "check_resources", "resource_estimate"]


def resource_estimate(
    program: Program, batch: int = 1, input_shapes: Mapping[str, tuple[int, ...]] | None = None
) -> ResourceEstimate:
    """What running ``batch`` rows of ``program`` costs, before anything compiles or runs.

    The same on every node (a static count over the graph and shapes): work,
    peak activation bytes, parameter bytes, compile units and node count. See
    `aivm_jax.program.ResourceEstimate` for what each counts.

    Args:
      program: a validated program.
      batch: rows per call, >= 1.
      input_shapes: input name -> row shape (no batch axis), for dynamic axes;
        default: every input at its longest.

    Raises:
      ProgramError: ``batch`` < 1, or shapes that do not fit the inputs' specs.
    """
    return program.resource_estimate(batch, input_shapes)


def check_resources(
    program: Program,
    batch: int = 1,
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
    *,
    max_bytes: int | None = None,
    max_work: int | None = None,
    max_compile_units: int | None = None,
) -> ResourceEstimate:
    """`resource_estimate`, refused with `ResourceLimitError` when over a node's budget.

    Args:
      max_bytes: most ``total_bytes`` (peak activations plus parameters) allowed.
      max_work: most work allowed for the whole batch.
      max_compile_units: most compile units allowed.
      program: as for `resource_estimate`.
      batch: as for `resource_estimate`.
      input_shapes: as for `resource_estimate`.

    Returns:
      The estimate, when within every given budget.

    Raises:
      ResourceLimitError: over a budget; the message names it and the estimate.
    """
    cost = resource_estimate(program, batch, input_shapes)
    for value, limit, what in [
        (cost.total_bytes, max_bytes, "bytes"),
        (cost.work, max_work, "work"),
        (cost.compile_units, max_compile_units, "compile units"),
    ]:
        if limit is not None and value > limit:
            raise ResourceLimitError(
                f"program {program.model_id} at batch {batch} needs {value} {what}, more than this "
                f"node's budget of {limit}; send fewer rows per request"
            )
    return cost
