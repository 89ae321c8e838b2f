"""An AIVM program: a graph of opset ops, its integer parameters and its I/O specs."""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from aivm_jax._errors import OpError, ProgramError
from aivm_jax.ops import (
    MAX_COMPILE_UNITS,
    MAX_NODES,
    MAX_PARAM_ELEMENTS,
    MAX_RANK,
    MAX_ROW_BYTES,
    MAX_TENSOR_ELEMENTS,
    MAX_WORK_PER_ROW,
    OPSET,
    OPSET_VERSION,
    TensorType,
    check_node,
    check_tensor,
    node_cost,
)
from aivm_jax.program._cost import ResourceEstimate, estimate

__all__ = ["Node", "Program", "ResourceEstimate", "ValueSpec"]

PARAM_DTYPES = ("int8", "int32")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:/-]*$")


def _check_name(name: str, what: str) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ProgramError(f"{what} name {name!r} is not valid: use letters, digits and _.:/-")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ValueSpec:
    """A program input or output: name, dtype, and shape *without* the batch axis.

    Attributes:
      dynamic: axes (indices into ``shape``) whose size may be anything from 1
        to ``shape[axis]``, such as a sequence length; ``shape`` holds the maximum.
      bounds: inclusive ``(low, high)`` range an input's values must lie in
        (token ids below a vocabulary size, say); `infer` refuses others.
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    dynamic: tuple[int, ...] = ()
    bounds: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        _check_name(self.name, "value")
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))
        if self.dtype not in PARAM_DTYPES:
            raise ProgramError(f"value {self.name!r}: dtype must be int8 or int32, got {self.dtype!r}")
        if any(d < 1 for d in self.shape):
            raise ProgramError(f"value {self.name!r}: dimensions must be >= 1, got {self.shape}")
        if len(self.shape) >= MAX_RANK or math.prod(self.shape) > MAX_TENSOR_ELEMENTS:
            raise ProgramError(
                f"value {self.name!r}: row shape {self.shape} is over the opset's bounds: at most "
                f"{MAX_RANK - 1} axes and {MAX_TENSOR_ELEMENTS} elements per row"
            )
        dynamic = tuple(sorted({int(a) for a in self.dynamic}))
        if any(not 0 <= a < len(self.shape) for a in dynamic):
            raise ProgramError(
                f"value {self.name!r}: dynamic axes {self.dynamic} are not axes of {self.shape}"
            )
        object.__setattr__(self, "dynamic", dynamic)
        if self.bounds is not None:
            low, high = (int(b) for b in self.bounds)
            info = np.iinfo(self.dtype)
            if not info.min <= low <= high <= info.max:
                raise ProgramError(
                    f"value {self.name!r}: bounds {self.bounds} are not a range of {self.dtype}"
                )
            object.__setattr__(self, "bounds", (low, high))

    def accepts_shape(self, shape: tuple[int, ...]) -> bool:
        """Whether a row shape (no batch axis) fits: static axes equal, dynamic ones in 1..max."""
        return len(shape) == len(self.shape) and all(
            (1 <= got <= top) if axis in self.dynamic else got == top
            for axis, (got, top) in enumerate(zip(shape, self.shape))
        )

    def dims(self) -> list[str]:
        """Each axis as text: ``"384"``, or ``"<=256"`` for a dynamic one."""
        return [f"<={d}" if axis in self.dynamic else str(d) for axis, d in enumerate(self.shape)]

    def describe(self) -> str:
        return f"{self.dtype}[{', '.join(self.dims())}]"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}
        if self.dynamic:  # written only when set: programs without them keep their ids
            out["dynamic"] = list(self.dynamic)
        if self.bounds is not None:
            out["bounds"] = list(self.bounds)
        return out


@dataclasses.dataclass(frozen=True, kw_only=True)
class Node:
    """One op application: ``output = op(*inputs, **attrs)``; inputs name values or params."""

    op: str
    inputs: tuple[str, ...]
    output: str
    attrs: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "op": self.op,
            "inputs": list(self.inputs),
            "output": self.output,
            "attrs": _jsonable(self.attrs),
        }


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class Program:
    """A validated AIVM program.

    Invariants (checked on construction, so a `Program` that exists is valid):

    * every node's op is in the opset, with operands of the right kind, dtype
      and shape, and canonical attributes; no op reaches the batch axis (checked
      by rank, see `aivm_jax.ops`);
    * nodes are in topological order and every name is defined exactly once;
    * parameters are int8 or int32 NumPy arrays (stored read-only);
    * `outputs` carry the dtypes and shapes the graph computes;
    * the program is within the opset's resource bounds (``docs/spec/limits.md``):
      at most `MAX_NODES` nodes, `MAX_TENSOR_ELEMENTS` elements per tensor (per
      row for activations) and `MAX_PARAM_ELEMENTS` parameter elements in all;
      and, at the longest dynamic lengths, at most `MAX_WORK_PER_ROW` work and
      `MAX_ROW_BYTES` live bytes per row and `MAX_COMPILE_UNITS` compile units
      (`resource_estimate`).

    Attributes:
      name: a human-readable name (part of the model id).
      inputs / outputs: `ValueSpec` per program input / output.
      nodes: the graph, in execution order.
      params: parameter name -> int8/int32 array.
      metadata: JSON data without floats (fidelity report, provenance).
      opset: the opset version the program is written in.
    """

    name: str
    inputs: tuple[ValueSpec, ...]
    outputs: tuple[ValueSpec, ...]
    nodes: tuple[Node, ...]
    params: Mapping[str, np.ndarray]
    metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    opset: int = OPSET_VERSION

    def __post_init__(self) -> None:
        if self.opset != OPSET_VERSION:
            raise ProgramError(
                f"program is written for opset {self.opset}; this runtime implements opset "
                f"{OPSET_VERSION}. Install the aivm_jax release that matches the program."
            )
        params = {}
        for pname in sorted(self.params):
            _check_name(pname, "parameter")
            array = np.asarray(self.params[pname])
            if array.dtype.name not in PARAM_DTYPES:
                raise ProgramError(
                    f"parameter {pname!r} has dtype {array.dtype}; programs hold only int8/int32"
                )
            array = np.array(array, copy=True)
            array.flags.writeable = False
            params[pname] = array
        object.__setattr__(self, "params", params)
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "outputs", tuple(self.outputs))
        object.__setattr__(self, "nodes", tuple(self._validated_nodes()))
        _check_no_floats(self.metadata, "metadata")

    def _validated_nodes(self) -> list[Node]:
        if not self.inputs or not self.outputs:
            raise ProgramError("a program needs at least one input and one output")
        if len(self.nodes) > MAX_NODES:
            raise ProgramError(
                f"program has {len(self.nodes)} nodes, more than the {MAX_NODES} a program may have"
            )
        units = sum(OPSET[node.op].compile_units for node in self.nodes if node.op in OPSET)
        if units > MAX_COMPILE_UNITS:  # refused before the graph is typed: this bound needs no shapes
            raise ProgramError(
                f"program needs {units} compile units, more than the {MAX_COMPILE_UNITS} a program "
                "may need (docs/spec/limits.md); split it into smaller programs"
            )
        total = 0
        for pname, array in self.params.items():
            try:
                check_tensor(TensorType(array.dtype.name, array.shape), "param", f"parameter {pname!r}")
            except OpError as error:
                raise ProgramError(str(error)) from None
            total += array.size
        if total > MAX_PARAM_ELEMENTS:
            raise ProgramError(
                f"program parameters hold {total} elements, more than the {MAX_PARAM_ELEMENTS} allowed"
            )
        longest = {spec.name: spec.shape for spec in self.inputs}
        nodes, types, costs = self._typed_graph(longest)
        object.__setattr__(self, "_value_shapes", {name: t.shape[1:] for name, t in types.items()})
        self.__dict__["_cost_cache"] = {tuple(sorted(longest.items())): (longest, types, costs)}
        self._check_resources(self.resource_estimate(1))
        if any(spec.dynamic for spec in self.inputs):
            # The graph must also hold with every variable axis at its shortest.
            shortest = {
                spec.name: tuple(1 if a in spec.dynamic else d for a, d in enumerate(spec.shape))
                for spec in self.inputs
            }
            self._typed_graph(shortest)
        return nodes

    def output_shapes(self, input_shapes: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
        """Row shapes of the outputs for the given input row shapes (no batch axes).

        Raises:
          ProgramError: the shapes do not fit the inputs' specs or the graph.
        """
        key = tuple(sorted((k, tuple(v)) for k, v in input_shapes.items()))
        cache = self.__dict__.setdefault("_shape_cache", {})
        if key not in cache:
            for spec in self.inputs:
                if not spec.accepts_shape(tuple(input_shapes[spec.name])):
                    raise ProgramError(
                        f"input {spec.name!r} must have row shape {spec.describe()}, "
                        f"got {tuple(input_shapes[spec.name])}"
                    )
            _, types, _ = self._typed_graph(dict(key))
            cache[key] = {spec.name: types[spec.name].shape[1:] for spec in self.outputs}
        return cache[key]

    def _check_resources(self, row: ResourceEstimate) -> None:
        """Refuse a program whose one row, at the longest lengths, is over the opset's bounds."""
        for value, limit, what in [
            (row.work, MAX_WORK_PER_ROW, "work per row"),
            (row.peak_activation_bytes, MAX_ROW_BYTES, "live bytes per row"),
            (row.compile_units, MAX_COMPILE_UNITS, "compile units"),
        ]:
            if value > limit:
                raise ProgramError(
                    f"program needs {value} {what} at its longest inputs, more than the {limit} "
                    "a program may need (docs/spec/limits.md); split it into smaller programs"
                )

    def resource_estimate(
        self, batch: int = 1, input_shapes: Mapping[str, tuple[int, ...]] | None = None
    ) -> ResourceEstimate:
        """What running ``batch`` rows costs: work, peak activation bytes, parameter bytes,
        compile units (`ResourceEstimate`), from the graph and shapes alone.

        Args:
          batch: rows per call, >= 1.
          input_shapes: input name -> row shape (no batch axis), for programs with
            dynamic axes; default: every input at its longest.

        Raises:
          ProgramError: ``batch`` < 1, or shapes that do not fit the inputs' specs.
        """
        if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
            raise ProgramError(f"batch must be an integer >= 1, got {batch!r}")
        if input_shapes is None:
            input_shapes = {spec.name: spec.shape for spec in self.inputs}
        key = tuple(sorted((k, tuple(int(d) for d in v)) for k, v in input_shapes.items()))
        cache = self.__dict__.setdefault("_cost_cache", {})
        if key not in cache:
            shapes = dict(key)
            for spec in self.inputs:
                if spec.name not in shapes or not spec.accepts_shape(shapes[spec.name]):
                    raise ProgramError(
                        f"input {spec.name!r} must have row shape {spec.describe()}, "
                        f"got {shapes.get(spec.name)}"
                    )
            _, types, costs = self._typed_graph(shapes)
            cache[key] = (shapes, types, costs)
        shapes, types, costs = cache[key]
        return estimate(
            batch=batch,
            input_shapes=shapes,
            node_io=[(tuple(node.inputs), node.output) for node in self.nodes],
            costs=costs,
            types=types,
            outputs=[spec.name for spec in self.outputs],
            params=self.params,
        )

    def _typed_graph(self, input_shapes: Mapping[str, tuple[int, ...]]):
        types: dict[str, TensorType] = {}
        for spec in self.inputs:
            if spec.name in types or spec.name in self.params:
                raise ProgramError(f"input name {spec.name!r} is defined twice")
            types[spec.name] = TensorType(spec.dtype, (1, *input_shapes[spec.name]))
        nodes, costs = [], []
        for index, node in enumerate(self.nodes):
            where = f"node {index} ({node.op} -> {node.output!r})"
            _check_name(node.output, "node output")
            kinds, operand_types, param_values = [], [], []
            for name in node.inputs:
                if name in types:
                    kinds.append("act")
                    operand_types.append(types[name])
                elif name in self.params:
                    kinds.append("param")
                    operand_types.append(TensorType(self.params[name].dtype.name, self.params[name].shape))
                    param_values.append(self.params[name])
                else:
                    raise ProgramError(f"{where}: operand {name!r} is not defined before it is used")
            try:
                out_type, attrs = check_node(node.op, operand_types, kinds, node.attrs, param_values)
            except ProgramError as error:
                raise type(error)(f"{where}: {error}") from None
            if node.output in types or node.output in self.params:
                raise ProgramError(f"{where}: name {node.output!r} is defined twice")
            types[node.output] = out_type
            nodes.append(Node(op=node.op, inputs=tuple(node.inputs), output=node.output, attrs=attrs))
            costs.append(node_cost(node.op, operand_types, attrs, out_type))
        for spec in self.outputs:
            actual = types.get(spec.name)
            if actual is None:
                raise ProgramError(f"output {spec.name!r} is not computed by any node")
            if actual.dtype != spec.dtype or not spec.accepts_shape(actual.shape[1:]):
                raise ProgramError(
                    f"output {spec.name!r} is declared {spec.describe()} but the "
                    f"graph computes {actual.dtype}{list(actual.shape[1:])}"
                )
        return nodes, types, costs

    @functools.cached_property
    def model_id(self) -> str:
        """``0x`` + 64 hex digits: SHA-256 of the program's canonical bytes."""
        from aivm_jax.program._format import model_id_of

        return model_id_of(self)

    def value_shape(self, name: str) -> tuple[int, ...]:
        """Shape of an input or computed value without its batch axis (a parameter's own shape)."""
        if name in self.params:
            return tuple(self.params[name].shape)
        return self._value_shapes[name]

    def op_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for node in self.nodes:
            counts[node.op] = counts.get(node.op, 0) + 1
        return dict(sorted(counts.items()))

    def param_count(self) -> int:
        return int(sum(p.size for p in self.params.values()))

    def with_metadata(self, **entries: Any) -> Program:
        return dataclasses.replace(self, metadata={**self.metadata, **entries})


def _check_no_floats(value: Any, where: str) -> None:
    if isinstance(value, float):
        raise ProgramError(
            f"{where} holds the float {value!r}; program files hold no floats, store integers "
            "(counts, or parts per million) instead"
        )
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ProgramError(f"{where} has a non-string key {k!r}")
            _check_no_floats(v, f"{where}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_no_floats(v, f"{where}[{i}]")
    elif not (value is None or isinstance(value, (bool, int, str))):
        raise ProgramError(f"{where} holds {type(value).__name__}; only JSON values are allowed")
