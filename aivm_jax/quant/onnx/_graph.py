"""Reading an ONNX model: bind its dims, fold its constant subgraphs, find what cannot be converted.

`read_graph` turns a ``ModelProto`` into an `OnnxGraph`: every graph input's
axis 0 is the batch axis (kept variable); other symbolic dims are bound from
``dims``; shapes come from ONNX shape inference with the batch axis set to
`BATCH`, a sentinel size; then every node whose inputs are all constants
(``Constant``, ``Identity``, ``Dropout``, ``Cast`` of constants, ...) or that
asks for a static shape (``Shape``) is evaluated with ``onnx.reference`` and
replaced by its value, and nodes nothing reads are dropped. A shape that
holds `BATCH` passes through ``Gather``/``Concat``/``Unsqueeze``/... untouched,
so ``x.view(x.size(0), -1)`` folds to a ``Reshape`` target ``[BATCH, -1]``
whose first entry the converter reads as the batch axis. A constant ``Expand``-ed
along the batch axis folds to the constant with a batch axis of 1 (every row holds
the same), and a reshape to the shape its input already has is dropped.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from aivm_jax.quant.onnx._errors import OnnxImportError, UnsupportedOnnxError
from aivm_jax.quant.onnx._registry import FOLDABLE, MAX_OPSET, MIN_OPSET, find

__all__ = ["BATCH", "OnnxGraph", "OnnxNode", "check_supported", "read_graph"]

BATCH = 2**31 - 1
"""The batch size ONNX shape inference and folding see: a sentinel no real dimension has."""

_PASS_THROUGH = frozenset(
    {"Cast", "Concat", "Gather", "Identity", "Reshape", "Slice", "Squeeze", "Unsqueeze", "Where"}
)
"""Folding ops that only move shape entries around: the only ones allowed to read `BATCH`."""

_MAX_FOLDED_ELEMENTS = 2**24
_MAX_FOLD_ROUNDS = 64
"""Folding stops when a round folds nothing; a deep shape chain (a layer's shapes read from the
layer before) needs a round or two per layer."""


@dataclasses.dataclass(frozen=True)
class OnnxNode:
    """One ONNX node: ``outputs = op_type(*inputs, **attrs)``; a missing optional input is ``""``."""

    op_type: str
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: Mapping[str, Any]
    domain: str = ""


@dataclasses.dataclass
class OnnxGraph:
    """An ONNX graph after binding and folding.

    Attributes:
      opset: the default-domain opset.
      nodes: the nodes left to convert, in topological order.
      consts: initializers and folded values, by name.
      inputs: graph input name -> row shape (no batch axis), every dim bound.
      outputs: graph output names.
      shapes: value name -> full inferred shape (batch axis `BATCH`) where known.
      folded: how many nodes folded away (and how many were dead).
      producer: ``producer_name producer_version`` of the file.
      sha256: hex digest of the serialized model.
      exported_batches: fixed batch sizes the inputs were exported with (a ``Reshape``
        target that starts with one of them is read as keeping the batch axis).
    """

    opset: int
    nodes: list[OnnxNode]
    consts: dict[str, np.ndarray]
    inputs: dict[str, tuple[int, ...]]
    outputs: list[str]
    shapes: dict[str, tuple[int, ...]]
    folded: int
    producer: str
    sha256: str
    exported_batches: frozenset[int] = frozenset()

    def producer_of(self) -> dict[str, OnnxNode]:
        return {out: node for node in self.nodes for out in node.outputs if out}

    def consumers(self) -> dict[str, list[OnnxNode]]:
        users: dict[str, list[OnnxNode]] = {}
        for node in self.nodes:
            for name in node.inputs:
                if name:
                    users.setdefault(name, []).append(node)
        return users

    def const(self, name: str) -> np.ndarray | None:
        return self.consts.get(name) if name else None


def _attrs(node) -> dict[str, Any]:
    from onnx import helper, numpy_helper

    out = {}
    for attr in node.attribute:
        value = helper.get_attribute_value(attr)
        if hasattr(value, "raw_data") and hasattr(value, "dims"):  # TensorProto
            value = numpy_helper.to_array(value)
        elif isinstance(value, bytes):
            value = value.decode()
        elif isinstance(value, list):
            value = [v.decode() if isinstance(v, bytes) else v for v in value]
        out[attr.name] = value
    return out


def _opset_of(model) -> int:
    versions = {entry.domain: entry.version for entry in model.opset_import}
    opset = versions.get("", versions.get("ai.onnx"))
    if opset is None:
        raise OnnxImportError("the model imports no default-domain ONNX opset")
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise OnnxImportError(
            f"the model is written in ONNX opset {opset}; the importer reads opsets {MIN_OPSET}-{MAX_OPSET}. "
            f"Export it again with opset_version between {MIN_OPSET} and {MAX_OPSET}"
        )
    return opset


def _bind_inputs(model, dims: Mapping[str, int]) -> dict[str, tuple[int, ...]]:
    """Row shapes of the graph inputs; axis 0 is the batch axis, symbolic dims come from ``dims``."""
    initializers = {t.name for t in model.graph.initializer}
    shapes, unbound, used = {}, [], set()
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        if not tensor.HasField("shape") or len(tensor.shape.dim) < 1:
            raise OnnxImportError(f"input {value.name!r} has no shape; export it with a batch axis")
        row = []
        for axis, dim in enumerate(tensor.shape.dim):
            if axis == 0:
                if dim.dim_param in dims:
                    raise OnnxImportError(
                        f"--dim {dim.dim_param}: that is input {value.name!r}'s batch axis, which stays "
                        "variable; bind only the other axes"
                    )
                continue
            if dim.HasField("dim_value") and dim.dim_value > 0:
                row.append(int(dim.dim_value))
            elif dim.dim_param and dim.dim_param in dims:
                row.append(int(dims[dim.dim_param]))
                used.add(dim.dim_param)
            else:
                unbound.append(f"{value.name!r} axis {axis} ({dim.dim_param or 'unnamed'})")
        shapes[value.name] = tuple(row)
    if unbound:
        raise OnnxImportError(
            "symbolic dims must be bound to sizes: "
            + ", ".join(unbound)
            + "; pass --dim NAME=N (dims= in import_onnx) for each named one"
        )
    unknown = sorted(set(dims) - used)
    if unknown:
        raise OnnxImportError(f"--dim names {unknown} are not symbolic dims of any input")
    if not shapes:
        raise OnnxImportError("the model has no inputs besides its initializers")
    return shapes


def check_op_types(model, opset: int) -> None:
    """Stop before any work if an op type is neither converted nor foldable (listing all of them)."""
    problems = []
    for index, node in enumerate(model.graph.node):
        name = node.name or f"#{index}"
        if node.domain not in ("", "ai.onnx"):
            problems.append((f"{node.domain}.{node.op_type}", name, "custom domains are not supported"))
        elif find(node.op_type, opset) is None and node.op_type not in FOLDABLE | {"Identity", "Dropout"}:
            problems.append((node.op_type, name, "no converter for this op type"))
    if problems:
        raise UnsupportedOnnxError(problems, opset)


def _infer_shapes(
    model, graph_nodes, consts, inputs, outputs, batch: int = BATCH
) -> dict[str, tuple[int, ...]]:
    """Shape inference (with data propagation) of ``graph_nodes`` with ``consts`` as initializers
    and the batch axis of size ``batch``: value name -> shape where every axis is known."""
    from onnx import TensorProto, helper, numpy_helper, shape_inference

    types = {v.name: v.type.tensor_type.elem_type or TensorProto.FLOAT for v in model.graph.input}
    # A Range over the batch axis (the row indices transformers' mask helpers build) would make
    # shape inference's data propagation write out a BATCH-long vector: its limit stays unknown.
    batch_limits = {
        n.input[1]
        for n in graph_nodes
        if n.op_type == "Range" and n.input[1] in consts and np.any(np.asarray(consts[n.input[1]]) == BATCH)
    }
    value_inputs = [
        helper.make_tensor_value_info(name, types.get(name, TensorProto.FLOAT), [batch, *row])
        for name, row in inputs.items()
    ]
    graph = helper.make_graph(
        [n for n in graph_nodes],
        "aivm_shapes",
        value_inputs,
        [helper.make_empty_tensor_value_info(o) for o in outputs],
        initializer=[
            numpy_helper.from_array(np.asarray(v), name)
            for name, v in consts.items()
            if name not in batch_limits
        ],
    )
    probe = helper.make_model(graph, opset_imports=list(model.opset_import))
    probe.ir_version = model.ir_version
    try:
        inferred = shape_inference.infer_shapes(probe, data_prop=True)
    except Exception as error:  # onnx raises its own exception types
        raise OnnxImportError(f"ONNX shape inference failed: {error}") from None
    shapes = {name: (batch, *row) for name, row in inputs.items()}
    for value in [*inferred.graph.value_info, *inferred.graph.output]:
        tensor = value.type.tensor_type
        if tensor.HasField("shape") and all(d.HasField("dim_value") for d in tensor.shape.dim):
            shapes[value.name] = tuple(int(d.dim_value) for d in tensor.shape.dim)
    return shapes


_PROBE_BATCHES = (7919, 7907)
"""Two batch sizes (primes no real dimension is likely to equal) for `_probe_batch_shapes`."""


def _probe_batch_shapes(model, protos, nodes, initializers, inputs, outputs, opset, known):
    """``known`` completed with the shapes that are found only at a concrete batch size.

    With the batch axis at `BATCH`, shape inference and folding cannot follow a
    ``Range(0, batch)`` (its data would be BATCH long) or anything computed from it, such as
    the attention masks transformers builds from the row indices, nor what reads them (every
    later layer, at opset 13). Folded and inferred at two concrete batch sizes instead (its
    constants only serve this), a value's shape is taken when both agree on every axis but
    those equal to the two batch sizes, which become `BATCH`."""
    found = []
    for batch in _PROBE_BATCHES:
        try:
            found.append(_fold(model, protos, nodes, dict(initializers), inputs, outputs, opset, batch)[2])
        except OnnxImportError:
            return known
    completed = dict(known)
    for name in found[0].keys() & found[1].keys() - known.keys():
        a, b = found[0][name], found[1][name]
        if len(a) != len(b):
            continue
        dims = [d if d == e else BATCH if (d, e) == _PROBE_BATCHES else None for d, e in zip(a, b)]
        if None not in dims:
            completed[name] = tuple(dims)
    return completed


def _fold(model, protos, nodes, consts, inputs, outputs, opset, batch: int = BATCH, known=None):
    """Fold constant nodes and infer shapes, in rounds (each may give shape inference the
    constants the next needs): ``(consts, folded node indices, shapes)``; ``consts`` is updated.
    ``known``: shapes to use where shape inference finds none (`_probe_batch_shapes`)."""
    folded: set[int] = set()
    shapes: dict[str, tuple[int, ...]] = {}
    for _ in range(_MAX_FOLD_ROUNDS):
        live = [p for i, p in enumerate(protos) if i not in folded]
        shapes = {**(known or {}), **_infer_shapes(model, live, consts, inputs, outputs, batch=batch)}
        progress = False
        for index, (proto, node) in enumerate(zip(protos, nodes)):
            if index in folded:
                continue
            values = None
            if node.op_type == "Shape" and node.inputs[0] in shapes:
                full = np.array(shapes[node.inputs[0]], np.int64)
                start, end = node.attrs.get("start", 0), node.attrs.get("end", None)
                values = [full[start:end]]
            elif node.op_type in ("Identity", "Dropout") and node.inputs[0] in consts:
                values = [consts[node.inputs[0]]][: len(node.outputs)]
            elif node.op_type == "Constant" or all(n in consts for n in node.inputs if n):
                values = _evaluate(proto, node, consts, opset)
            if values is not None:
                consts.update({name: v for name, v in zip(node.outputs, values) if name})
                folded.add(index)
                progress = True
        if not progress:
            break
    return consts, folded, shapes


def _batch_broadcast(data, target) -> bool:
    """``Expand(data, target)`` repeats a constant along the batch axis and nothing else moves."""
    data, target = np.asarray(data), np.asarray(target).reshape(-1)
    return (
        len(target) >= max(data.ndim, 1)
        and target[0] == BATCH
        and not np.any(target[1:] == BATCH)
        and not np.any(data == BATCH)
        and (data.ndim < len(target) or data.shape[0] == 1)
    )


def _batch_blind_equal(a, b) -> bool:
    """``Equal(a, b)`` is the same for every batch size: a batch size meets only itself or a value
    below 1 (``shape == -1``, the test PyTorch writes for ``expand(..., -1)``)."""
    a, b = np.broadcast_arrays(np.asarray(a), np.asarray(b))
    one_side = (a == BATCH) ^ (b == BATCH)
    return bool(np.all(~one_side | (np.minimum(a, b) < 1)))


def _evaluate(proto, node: OnnxNode, consts, opset: int) -> list[np.ndarray] | None:
    """The node's outputs when it folds, else ``None``."""
    from onnx.reference import ReferenceEvaluator

    operands = [consts.get(n) for n in node.inputs if n]
    if any(v is None for v in operands):
        return None
    if node.op_type == "Expand" and _batch_broadcast(*operands):
        # a constant repeated along the batch axis (transformers' token_type_ids buffer): the same
        # in every row, so it is kept with a batch axis of 1, which its consumers broadcast
        data, target = np.asarray(operands[0]), np.asarray(operands[1]).reshape(-1)
        shape = np.broadcast_shapes(data.shape, (1, *(int(d) for d in target[1:])))
        return [np.ascontiguousarray(np.broadcast_to(data, shape))]
    if node.op_type not in _PASS_THROUGH and any(np.any(np.asarray(v) == BATCH) for v in operands):
        if not (node.op_type == "Equal" and _batch_blind_equal(*operands)):
            return None  # arithmetic on the batch size: not a constant
    feeds = {n: consts[n] for n in node.inputs if n}
    if node.op_type == "GatherElements":  # onnx.reference's is wrong when the axis sizes differ
        data, indices = (np.asarray(v) for v in operands)
        axis = int(node.attrs.get("axis", 0))
        return [np.take_along_axis(data, np.where(indices < 0, indices + data.shape[axis], indices), axis)]
    try:
        results = ReferenceEvaluator(proto, opsets={"": opset}).run(None, feeds)
    except Exception as error:  # onnx.reference raises many types
        raise OnnxImportError(f"cannot fold constant node {node.name!r} ({node.op_type}): {error}") from None
    if any(np.asarray(r).size > _MAX_FOLDED_ELEMENTS for r in results):
        return None
    return [np.asarray(r) for r in results]


_RESHAPES = frozenset({"Flatten", "Reshape", "Squeeze", "Unsqueeze"})


def _drop_identity_reshapes(nodes: list[OnnxNode], shapes, outputs) -> list[OnnxNode]:
    """Nodes without the reshapes to the shape their input already has (GPT-2's
    ``input_ids.view(-1, T)``): their consumers read the input itself."""
    alias: dict[str, str] = {}
    kept = []
    for node in nodes:
        node = dataclasses.replace(node, inputs=tuple(alias.get(n, n) for n in node.inputs))
        shape = shapes.get(node.inputs[0]) if node.inputs else None
        if (
            node.op_type in _RESHAPES
            and shape is not None
            and shape[:1] == (BATCH,)
            and shapes.get(node.outputs[0]) == shape
            and node.outputs[0] not in outputs
        ):
            alias[node.outputs[0]] = node.inputs[0]
            continue
        kept.append(node)
    return kept


def read_graph(model, dims: Mapping[str, int] | None = None) -> OnnxGraph:
    """Check op types, bind dims, infer shapes and fold constants (see the module docstring).

    Raises:
      UnsupportedOnnxError: op types without a converter (before anything else is done).
      OnnxImportError: an opset outside 13-20, unbound symbolic dims, unknown ``dims`` names.
    """
    from onnx import numpy_helper

    opset = _opset_of(model)
    check_op_types(model, opset)
    inputs = _bind_inputs(model, dict(dims or {}))
    consts: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    protos = list(model.graph.node)
    nodes = [
        OnnxNode(
            n.op_type, n.name or f"{n.op_type}_{i}", tuple(n.input), tuple(n.output), _attrs(n), n.domain
        )
        for i, n in enumerate(protos)
    ]
    outputs = [o.name for o in model.graph.output]
    initializers = dict(consts)
    consts, folded, shapes = _fold(model, protos, nodes, consts, inputs, outputs, opset)
    remaining = [node for index, node in enumerate(nodes) if index not in folded]
    if not {out for node in remaining for out in node.outputs if out} <= shapes.keys():
        # some shapes are found only at a concrete batch size: fold again knowing them
        probed = _probe_batch_shapes(model, protos, nodes, initializers, inputs, outputs, opset, shapes)
        consts, folded, shapes = _fold(
            model, protos, nodes, dict(initializers), inputs, outputs, opset, known=probed
        )
        remaining = [node for index, node in enumerate(nodes) if index not in folded]
    # drop what no graph output needs (a Dropout's mask, shape chains now folded)
    needed, kept = set(outputs), []
    for node in reversed(remaining):
        if any(o in needed for o in node.outputs):
            kept.append(node)
            needed.update(n for n in node.inputs if n)
    kept.reverse()
    kept = _drop_identity_reshapes(kept, shapes, outputs)
    used = {n for node in kept for n in node.inputs}
    consts = {k: v for k, v in consts.items() if k in used or k in outputs}
    for name in outputs:
        if name in consts:
            raise OnnxImportError(
                f"output {name!r} is a constant; a program output must depend on its inputs"
            )
    return OnnxGraph(
        opset=opset,
        nodes=kept,
        consts=consts,
        inputs=inputs,
        outputs=outputs,
        shapes=shapes,
        folded=len(nodes) - len(kept),
        producer=f"{model.producer_name} {model.producer_version}".strip(),
        sha256=hashlib.sha256(model.SerializeToString()).hexdigest(),
        exported_batches=frozenset(
            int(v.type.tensor_type.shape.dim[0].dim_value)
            for v in model.graph.input
            if v.name in inputs and v.type.tensor_type.shape.dim[0].dim_value > 0
        ),
    )


def check_supported(graph: OnnxGraph, consumed: frozenset[str] | set[str] = frozenset()) -> None:
    """Every node left must have a converter whose check passes; all problems are reported together.

    Nodes in ``consumed`` belong to a matched pattern, which converts them as one unit."""
    problems = []
    for node in graph.nodes:
        if node.name in consumed:
            continue
        converter = find(node.op_type, graph.opset)
        if converter is None:
            why = (
                "supported only when it folds to a constant, and its inputs are not constant"
                if node.op_type in FOLDABLE
                else "no converter for this op type"
            )
            problems.append((node.op_type, node.name, why))
            continue
        reason = converter.check(graph, node) if converter.check else None
        if reason:
            problems.append((node.op_type, node.name, reason))
    if problems:
        raise UnsupportedOnnxError(problems, graph.opset)
