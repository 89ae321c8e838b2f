"""`import_onnx`: an ONNX model plus calibration data in, an int8 AIVM program out."""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from aivm_jax._errors import ProgramError
from aivm_jax.program import Program, ValueSpec
from aivm_jax.quant._graph import GraphBuilder
from aivm_jax.quant.onnx._context import Context, Val, sanitize
from aivm_jax.quant.onnx._dynamic import (
    Converted,
    DimPlan,
    ProbeBuilder,
    Rewrite,
    apply_rewrites,
    bound_axes,
    compare_graphs,
    compare_programs,
    emit_positions,
    generalize,
    merge_entries,
    output_axes,
    probe_lengths,
    same_structure,
    truncate,
)
from aivm_jax.quant.onnx._errors import OnnxImportError, UnsupportedOnnxError
from aivm_jax.quant.onnx._fidelity import compare_outputs, run_float
from aivm_jax.quant.onnx._graph import check_supported, read_graph
from aivm_jax.quant.onnx._patterns import fold_batch_norms, match_patterns
from aivm_jax.quant.onnx._registry import find
from aivm_jax.runtime._host import SCALES_KEY, decode_scale, encode_scale, quantize_to_scale

__all__ = ["OUTPUT_INT32_BITS", "import_onnx", "load_calibration"]

OUTPUT_INT32_BITS = 16
"""An int32 graph output (logits from a ``Gemm``, say) is rescaled so that its calibration
maximum is ``2**16``: finer than int8 by far, and far from int32's limits."""


def _load_model(model):
    try:
        import onnx
    except ImportError:
        raise OnnxImportError(
            "importing ONNX models needs the onnx package (and onnxruntime): pip install 'aivm_jax[onnx]'"
        ) from None

    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, (bytes, bytearray)):
        return onnx.load_from_string(bytes(model))
    path = Path(model)
    if not path.is_file():
        raise OnnxImportError(f"no ONNX file at {path}")
    try:
        return onnx.load(str(path))
    except Exception as error:  # protobuf's DecodeError and friends
        raise OnnxImportError(f"cannot read {path} as an ONNX model: {error}") from None


def load_calibration(path: str | os.PathLike) -> np.ndarray | dict[str, np.ndarray]:
    """Calibration rows from ``.npy`` (one input) or ``.npz`` (one array per input name); no pickles."""
    path = Path(path)
    if not path.is_file():
        raise OnnxImportError(f"no calibration file at {path}")
    try:
        if path.suffix == ".npy":
            return np.load(path, allow_pickle=False)
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                return {name: archive[name] for name in archive.files}
    except (ValueError, OSError) as error:
        raise OnnxImportError(f"cannot read calibration data {path}: {error}") from None
    raise OnnxImportError(f"{path}: calibration data must be a .npy or .npz file")


def _calibration_arrays(graph, calibration) -> dict[str, np.ndarray]:
    if isinstance(calibration, (str, os.PathLike)):
        calibration = load_calibration(calibration)
    names = list(graph.inputs)
    if not isinstance(calibration, Mapping):
        if len(names) != 1:
            raise OnnxImportError(
                f"the model has inputs {names}; give calibration data as a .npz by input name"
            )
        calibration = {names[0]: calibration}
    if set(calibration) != set(names):
        raise OnnxImportError(
            f"calibration data has arrays {sorted(calibration)}; the model's inputs are {names}"
        )
    arrays = {}
    for name in names:
        array = np.asarray(calibration[name])
        if array.dtype.kind not in "fiu":
            raise OnnxImportError(f"calibration data for {name!r} must be numbers, got dtype {array.dtype}")
        if array.shape[1:] != graph.inputs[name] or array.ndim < 1 or array.shape[0] < 1:
            dims = ", ".join(["rows", *map(str, graph.inputs[name])])
            raise OnnxImportError(
                f"calibration data for {name!r} must have shape ({dims}), got {array.shape}"
            )
        if not np.isfinite(array).all():
            raise OnnxImportError(f"calibration data for {name!r} holds NaN or infinite values")
        arrays[name] = array.astype(np.float64)
    if len({a.shape[0] for a in arrays.values()}) != 1:
        raise OnnxImportError("calibration arrays must all have the same number of rows")
    return arrays


def _finish_output(ctx: Context, onnx_name: str, out_name: str) -> tuple[str, float]:
    """Make the program value ``out_name`` for a graph output: per-tensor scale, ONNX axis order."""
    builder = ctx.builder
    val = ctx.val(onnx_name)
    if builder.values[val.name].ndim == 4 or ctx.dtype(val) == "int8":
        val = ctx.onnx_order(ctx.int8(val))
        scale = float(builder.scales[val.name])
        row = tuple(builder.values[val.name].shape[1:])
        builder.op("reshape", [val.name], out_name, scale, shape=row)  # a copy under the output's name
        return out_name, scale
    top = max(float(np.abs(builder.real(val.name)).max()), 1e-8)
    scale = decode_scale(encode_scale(top / 2**OUTPUT_INT32_BITS))
    builder.requantize(val.name, out_name, out_dtype="int32", scale=scale)
    return out_name, scale


def import_onnx(
    model: Any,
    calibration: Any,
    *,
    dims: Mapping[str, int] | None = None,
    name: str | None = None,
    holdout: float = 0.2,
    metadata: Mapping[str, Any] | None = None,
) -> Program:
    """Import an ONNX model (opsets 13-20, as PyTorch exports it) as an int8 AIVM program.

    Steps: every op type is checked first (an unsupported one stops the import
    before any work, with one error listing every unsupported node); symbolic
    dims are bound (axis 0 of every input stays the batch axis); constant
    subgraphs are folded; then every node's form is checked (again all problems
    at once); then the graph is converted and calibrated: per-output-channel
    int8 weights, per-tensor int8 activation scales from the calibration
    maxima, ``BatchNormalization`` folded into the layer before it.

    The program's inputs are int8 and its outputs int8 or int32, in ONNX axis
    order; ``metadata["scales"]`` holds the real scale of each (exactly, as
    ``mantissa * 2**exponent``), so `aivm_jax.infer` quantizes float input
    itself. ``metadata["onnx_fidelity"]`` compares the float model (onnxruntime or
    ``onnx.reference``) with the program on the held-out rows.

    Args:
      model: a path to a ``.onnx`` file, its bytes, or an ``onnx.ModelProto``.
      calibration: float rows ``(n, *input_shape)`` (one input), a dict of them
        by input name, or the path of a ``.npy``/``.npz`` file holding them.
      dims: sizes of symbolic dims other than the batch axis, by name. A bound
        axis becomes a dynamic program axis (lengths 1..N) when the program does
        not depend on its length (decided by converting at two lengths, see
        `aivm_jax.quant.onnx._dynamic`); otherwise it stays static at N, and
        ``metadata["source"]["dims"]`` says why.
      name: the program's name (default: the file's stem, or ``"onnx-model"``).
      holdout: fraction of the calibration rows kept out of calibration for the
        fidelity report (the last ones; none when fewer than 10 rows).
      metadata: extra JSON (no floats) stored in the program.

    Raises:
      UnsupportedOnnxError: ops or op forms without a converter, all listed.
      OnnxImportError: unreadable model, wrong opset, unbound dims, bad calibration data.
    """
    onnx_model = _load_model(model)
    dims = dict(dims or {})
    graph = read_graph(onnx_model, dims)
    int_inputs = _integer_inputs(onnx_model, graph)
    matches = match_patterns(graph, onnx_model, set(int_inputs))
    check_supported(graph, {n for m in matches for n in m.nodes})
    kinds = _input_kinds(graph, int_inputs, matches)
    arrays = _calibration_arrays(graph, calibration)
    _check_integer_rows(arrays, kinds)
    rows = next(iter(arrays.values())).shape[0]
    held = int(rows * holdout) if rows >= 10 and 0 < holdout < 1 else 0
    calib = {k: v[: rows - held] for k, v in arrays.items()}
    test = {k: v[rows - held :] for k, v in arrays.items()} if held else calib

    if name is None:
        name = Path(model).stem if isinstance(model, (str, os.PathLike)) else "onnx-model"
    input_names = {onnx_name: sanitize(onnx_name) for onnx_name in graph.inputs}
    output_names = {onnx_name: sanitize(onnx_name) for onnx_name in graph.outputs}
    if len(set(input_names.values()) | set(output_names.values())) != len(input_names) + len(output_names):
        raise OnnxImportError(f"input and output names {list(input_names) + list(output_names)} collide")

    convert = functools.partial(_convert, onnx_model, int_inputs, kinds, name, input_names, output_names)
    plans, rewrites, probe = _plan_dims(onnx_model, graph, dims, calib, convert)
    if rewrites:
        graph = apply_rewrites(graph, rewrites)
        matches = None  # the rewritten graph is matched again
    main, builder, ctx, scales = convert(graph, calib, rewrites, matches=matches)
    static = (list(main.nodes), builder.inputs, main.outputs)
    nodes, inputs, outputs = _dynamic_program(main, builder.inputs, plans, probe, input_names)
    source = {
        "format": "onnx",
        "opset": graph.opset,
        "producer": graph.producer,
        "sha256": graph.sha256,
        "folded_nodes": graph.folded,
        "patterns": ctx.patterns,
    }
    if plans:
        source["dims"] = {plan.name: plan.report() for plan in plans}
    meta = {
        **(metadata or {}),
        "source": source,
        "calibration_rows": rows - held,
        SCALES_KEY: {k: scales[k] for k in sorted(scales)},
    }

    def build(nodes, inputs, outputs) -> Program:
        return Program(
            name=name,
            inputs=inputs,
            outputs=outputs,
            nodes=tuple(nodes),
            params=builder.params,
            metadata=meta,
        )

    try:  # a dynamic program is also checked at the shortest lengths
        program = build(nodes, inputs, outputs)
    except ProgramError as error:
        if (nodes, inputs, outputs) == static:
            raise
        for plan in plans:
            if plan.dynamic:
                plan.reason = f"the program does not hold at the shortest lengths: {_why(error)}"
        source["dims"] = {plan.name: plan.report() for plan in plans}
        program = build(*static)
    test = {k: v.astype(np.int64) if k in kinds else v for k, v in test.items()}
    return program.with_metadata(onnx_fidelity=_fidelity(onnx_model, program, test, input_names, held > 0))


_PROBE_ROWS = 4
"""Calibration rows a probe conversion (`_plan_dims`) runs on: it needs the structure only."""


def _convert(
    onnx_model,
    int_inputs,
    kinds,
    name: str,
    input_names: Mapping[str, str],
    output_names: Mapping[str, str],
    graph,
    calib: Mapping[str, np.ndarray],
    rewrites: Mapping[str, Rewrite],
    *,
    matches=None,
    builder_type: type[GraphBuilder] = GraphBuilder,
) -> tuple[Converted, GraphBuilder, Context, dict[str, dict[str, int]]]:
    """Convert ``graph`` calibrated on ``calib``: what it gave, its builder and context, the I/O scales."""
    if matches is None:
        matches = match_patterns(graph, onnx_model, set(int_inputs))
    consumed = {n for m in matches for n in m.nodes}
    check_supported(graph, consumed)
    scales: dict[str, dict[str, int]] = {}
    feeds, input_scales = {}, {}
    for onnx_name, program_name in input_names.items():
        if onnx_name in kinds:  # token ids or a key mask: integers as they are, no scale
            feeds[program_name] = calib[onnx_name].astype(kinds[onnx_name][0])
            continue
        top = max(float(np.abs(calib[onnx_name]).max()), 1e-8)
        scales[program_name] = encode_scale(top / 127.0)
        input_scales[program_name] = decode_scale(scales[program_name])
        feeds[program_name] = quantize_to_scale(calib[onnx_name], scales[program_name])
    specs = tuple(
        ValueSpec(name=input_names[n], dtype=kinds[n][0], shape=row, bounds=kinds[n][1])
        if n in kinds
        else ValueSpec(name=input_names[n], dtype="int8", shape=row)
        for n, row in graph.inputs.items()
    )
    builder = builder_type(name, specs, feeds, input_scales)
    ctx = Context(graph, builder, reserved=set(input_names.values()) | set(output_names.values()))
    for onnx_name, program_name in input_names.items():
        ctx.bind(onnx_name, Val(program_name))
    emit_positions(ctx, rewrites, input_names)
    fold_batch_norms(ctx)
    anchors = {m.anchor: m for m in matches}
    for node in graph.nodes:
        match = anchors.get(node.name)
        if match is not None:
            if match.convert is not None:
                match.convert(ctx, match)
            ctx.patterns.append({"pattern": match.pattern, "nodes": list(match.nodes)})
        elif node.name not in consumed:
            find(node.op_type, graph.opset).convert(ctx, node)
    outputs = []
    for onnx_name, program_name in output_names.items():
        out, scale = _finish_output(ctx, onnx_name, program_name)
        scales[out] = encode_scale(scale)
        value = builder.values[out]
        outputs.append(ValueSpec(name=out, dtype=str(value.dtype), shape=tuple(value.shape[1:])))
    values = {spec.name: spec.shape for spec in specs}
    values.update({node.output: tuple(builder.values[node.output].shape[1:]) for node in builder.nodes})
    converted = Converted(tuple(builder.nodes), dict(builder.params), tuple(outputs), values)
    return converted, builder, ctx, scales


def _plan_dims(onnx_model, graph, dims, calib, convert) -> tuple[list[DimPlan], dict[str, Rewrite], Any]:
    """Which bound dims may become dynamic axes (see `aivm_jax.quant.onnx._dynamic`).

    Returns the plans (a static one with its reason), the constant rewrites the
    dynamic ones need, and the probe conversion at the longest lengths.
    """
    plans = [DimPlan(n, int(size), bound_axes(onnx_model, n)) for n, size in dims.items()]
    shortest: dict[str, Any] = {}
    for plan in plans:
        if plan.size < 2:
            plan.reason = "its length is 1"
            continue
        lengths = probe_lengths(plan.size)
        try:
            shorter = {length: read_graph(onnx_model, {**dims, plan.name: length}) for length in lengths}
        except OnnxImportError as error:
            plan.reason = f"the graph does not read at a shorter length: {_why(error)}"
            continue
        compare_graphs(plan, graph, shorter)
        shortest[plan.name] = shorter[plan.size - 1]
    owners: dict[str, list[DimPlan]] = {}
    for plan in plans:
        for const in plan.rewrites if plan.dynamic else ():
            owners.setdefault(const, []).append(plan)
    for const, shared in owners.items():
        if len(shared) > 1:
            for plan in shared:
                plan.reason = f"constant {const!r} follows the lengths of {[p.name for p in shared]}"
    rows = {k: v[:_PROBE_ROWS] for k, v in calib.items()}
    while True:
        live = [plan for plan in plans if plan.dynamic]
        if not live:
            return plans, {}, None
        rewrites = {k: r for plan in live for k, r in plan.rewrites.items()}
        try:
            base = convert(apply_rewrites(graph, rewrites), rows, rewrites, builder_type=ProbeBuilder)[0]
        except ProgramError as error:  # OnnxImportError included: the rewritten graph does not convert
            for plan in live:
                plan.reason = f"the graph with its length-free constants does not convert: {_why(error)}"
            continue
        retry = False
        for plan in live:
            short = apply_rewrites(shortest[plan.name], rewrites)
            try:
                found = convert(
                    short, truncate(rows, plan.axes, plan.size - 1), rewrites, builder_type=ProbeBuilder
                )[0]
            except ProgramError as error:
                found = f"the graph does not convert at length {plan.size - 1}: {_why(error)}"
            result = compare_programs(base, found) if isinstance(found, Converted) else found
            if isinstance(result, str):
                plan.reason = result
                retry = retry or bool(plan.rewrites)  # its rewrites must not stay in the program
            else:
                plan.entries, plan.outputs = result, output_axes(base, found)
        if not retry:
            return plans, rewrites, base


def _why(error: ProgramError) -> str:
    """An import error as one line: the unsupported nodes and why, or the message's first line."""
    if isinstance(error, UnsupportedOnnxError):
        return "; ".join(f"{op} {name!r}: {reason}" for op, name, reason in error.problems)
    return str(error).splitlines()[0]


def _dynamic_program(main: Converted, specs, plans: list[DimPlan], probe, input_names):
    """The program's nodes and I/O specs: with dynamic axes where the plans allow them, else static
    (the plans that were dynamic then say why)."""
    live = [plan for plan in plans if plan.dynamic]
    static = (list(main.nodes), tuple(specs), main.outputs)
    if not live:
        return static
    if not same_structure(main, probe):
        for plan in live:
            plan.reason = (
                "the calibrated program's structure differs from the probe's (a choice made from the data)"
            )
        return static
    nodes, reason = generalize(main, merge_entries([p.entries for p in live]), {s.name for s in main.outputs})
    if reason is not None:
        for plan in live:
            plan.reason = reason
        return static
    axes: dict[str, set[int]] = {}
    for plan in live:
        for onnx_name, axis in plan.axes.items():
            axes.setdefault(input_names[onnx_name], set()).add(axis)
        for out, found in plan.outputs.items():
            axes.setdefault(out, set()).update(found)
    inputs = tuple(dataclasses.replace(s, dynamic=tuple(sorted(axes.get(s.name, ())))) for s in specs)
    outputs = tuple(dataclasses.replace(s, dynamic=tuple(sorted(axes.get(s.name, ())))) for s in main.outputs)
    return nodes, inputs, outputs


_INTEGER_TYPES = frozenset({2, 3, 4, 5, 6, 7, 9, 12, 13})  # (U)INT8/16/32/64 and BOOL


def _integer_inputs(model, graph) -> list[str]:
    """Graph inputs of an integer (or boolean) element type: token ids and masks."""
    return [
        v.name
        for v in model.graph.input
        if v.name in graph.inputs and v.type.tensor_type.elem_type in _INTEGER_TYPES
    ]


def _input_kinds(graph, int_inputs, matches) -> dict[str, tuple[str, tuple[int, int] | None]]:
    """Program dtype and value bounds of each integer input.

    A key mask is int8 in ``[0, 1]``; token ids that index constant tables are
    int32 in ``[0, V - 1]`` for the smallest table ``V``; an integer input read
    only through folded shapes is int32 without bounds.
    """
    masks = {name for m in matches for name in m.params.get("inputs", ())}
    kinds = {}
    consumers = graph.consumers()
    for name in int_inputs:
        if name in masks:
            kinds[name] = ("int8", (0, 1))
            continue
        tables = [
            graph.const(node.inputs[0]).shape[0]
            for node in consumers.get(name, [])
            if node.op_type == "Gather" and node.inputs[1] == name and graph.const(node.inputs[0]) is not None
        ]
        kinds[name] = ("int32", (0, min(tables) - 1) if tables else None)
    return kinds


def _check_integer_rows(arrays, kinds) -> None:
    for name, (_, bounds) in kinds.items():
        values = arrays[name]
        if not np.array_equal(values, np.round(values)):
            raise OnnxImportError(f"calibration data for integer input {name!r} must hold integers")
        if bounds is not None and (values.min() < bounds[0] or values.max() > bounds[1]):
            raise OnnxImportError(
                f"calibration data for {name!r} must lie in [{bounds[0]}, {bounds[1]}], "
                f"got [{int(values.min())}, {int(values.max())}]"
            )


def _fidelity(onnx_model, program: Program, test, input_names, held_out: bool) -> dict[str, Any]:
    from aivm_jax.runtime import infer

    float_outs, engine = run_float(onnx_model, test)
    result = infer(program, {input_names[k]: v for k, v in test.items()})
    scales = program.metadata[SCALES_KEY]
    outputs = {}
    for (onnx_name, float_out), spec in zip(float_outs.items(), program.outputs):
        real = result.named_outputs[spec.name].astype(np.float64) * decode_scale(scales[spec.name])
        outputs[spec.name] = {"onnx_output": onnx_name, **compare_outputs(float_out, real)}
    first = next(iter(outputs.values()))
    report = {
        "reference": engine,
        "examples": int(next(iter(test.values())).shape[0]),
        "held_out": held_out,
        "outputs": outputs,
    }
    if "argmax_agreement" in first:
        report["argmax_agreement"] = first["argmax_agreement"]
    return report
