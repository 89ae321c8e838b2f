"""`infer`: run an AIVM program on a batch of integer inputs and hash the result."""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from aivm_jax._errors import (
    InputDTypeError,
    InputRangeError,
    InputShapeError,
    ModelIdMismatchError,
    ProgramError,
)
from aivm_jax.ops._vnni import register_kernel
from aivm_jax.program import Program, ValueSpec, from_bytes, load
from aivm_jax.runtime._execute import Segment, evaluate, plan_segments, run_steps
from aivm_jax.runtime._fusion import fuse_chains
from aivm_jax.runtime._hashing import ResultHasher, result_hasher, result_hashes
from aivm_jax.runtime._host import SCALES_KEY, native_quantizer, program_scales, quantize_to_scale

__all__ = ["InferenceResult", "infer"]

Mode = Literal["jit", "eager", "reference"]
_CACHE_SIZE = 16


@dataclasses.dataclass(frozen=True, kw_only=True)
class InferenceResult:
    """What `infer` returns.

    Attributes:
      model_id: the program's id, ``0x`` + 64 hex digits.
      outputs: the program's (first) output, a NumPy integer array whose first
        axis is the batch.
      named_outputs: every output by name (same arrays).
      row_hashes: one ``0x``-hash per batch row; independent of the batch.
      output_hash: hash over ``row_hashes`` in order (see `aivm_jax.runtime`).
      input_quantized: whether float input was quantized on the host with the
        program's stored input scales (`aivm_jax.runtime.quantize_to_scale`).
    """

    model_id: str
    outputs: np.ndarray
    named_outputs: Mapping[str, np.ndarray]
    row_hashes: tuple[str, ...]
    output_hash: str
    input_quantized: bool = False


# Programs whose parameters fit in this many bytes run on one device with the
# parameters compiled into the executable as constants: a call then passes only
# the inputs (JAX's dispatch costs about 0.15 us per argument array).
EMBEDDED_PARAMS_MAX_BYTES = 1 << 20
# Where the CPU kernels are off, longer programs run on one device as a chain of
# executables of this many steps. XLA's fusion re-derives a layer norm's rows inside
# each consumer, and through the residual adds each layer's fusions recompute the
# layers before them, so a whole deep graph ran 2-3x slower than the same ops in
# short segments (all-MiniLM-L6-v2, 187 steps: 0.92 s vs 0.32 s per batch).
# The layer norm kernel is a custom call, which XLA never fuses into its readers:
# with it the whole graph is the faster plan (0.16 s vs 0.23 s). Both plans compute
# the same integers.
SEGMENT_STEPS = 8
# Where no input holds more than this many elements (a batch of one short row), each op has little
# work and the calls and XLA's per-op costs dominate: longer segments then. Same integers either
# way. Measured: the imported test encoder (87 steps) at batch 1 x 12 tokens, 343 us with segments
# of 32 steps vs 505 us with 8; MiniLM at 1 x 16 tokens 11.4 vs 13.0 ms, but at 1 x 128 tokens
# 70.5 vs 67.2 ms and at 8 x 128 518 vs 448 ms, where XLA's recomputation across long segments
# costs more than the calls save.
SMALL_INPUT_ELEMENTS = 64
SMALL_INPUT_SEGMENT_STEPS = 32


class _Compiled:
    """One program's jitted functions and its parameters placed per device set."""

    def __init__(self, program: Program) -> None:
        self.program = program
        self.fn = jax.jit(self._run)
        self.steps = fuse_chains(program)  # dense and attention chains as one fused op each
        small = sum(a.nbytes for a in program.params.values()) <= EMBEDDED_PARAMS_MAX_BYTES
        # Segment plans (empty: the program runs whole): the default, and the one for inputs of
        # at most SMALL_INPUT_ELEMENTS elements each.
        self._segments: list[tuple[Segment, Any]] = []
        self._small_segments: list[tuple[Segment, Any]] = []
        if len(self.steps) > SEGMENT_STEPS and not register_kernel():
            self._segments = self._plan(SEGMENT_STEPS)
            self._small_segments = self._plan(SMALL_INPUT_SEGMENT_STEPS)
        self._embedded = jax.jit(self._run_embedded) if small and not self._segments else None
        self._placed: dict[tuple[Any, ...], dict[str, jax.Array]] = {}
        self._sharded: dict[Mesh, tuple[Any, tuple]] = {}  # mesh -> (jitted shard_map, leading args)
        self.input_names = tuple(spec.name for spec in program.inputs)
        self.output_names = tuple(spec.name for spec in program.outputs)
        # input shapes -> the executable compiled for them (parameters bound), called directly
        self._executables: dict[tuple[tuple[int, ...], ...], Callable[..., list[jax.Array]]] = {}
        self._compile_lock = threading.Lock()
        # Signatures of plain ndarray inputs that `_feeds` returned unchanged, or quantized from
        # float32/float64 with a stored scale -> (what runs them, the outputs' hasher, the
        # quantizations: (input index, quantizer) for each float input).
        # One input: its (dtype, shape); several: a tuple of those in input order.
        self._accepted: dict[Any, tuple[Callable[..., list[jax.Array]], ResultHasher, tuple]] = {}
        # per input, the declared (low, high) its values must lie in (its dtype allows more)
        self._bounds = [(i, spec.bounds) for i, spec in enumerate(program.inputs) if spec.bounds]

    def _plan_for(self, arrays) -> list[tuple[Segment, Any]]:
        """The segments that run these inputs; empty where the program runs whole (a plan of
        one segment is the whole program, run as `executable` runs it)."""
        if not self._segments:
            return []
        small = all(a.size <= SMALL_INPUT_ELEMENTS for a in arrays)
        plan = self._small_segments if small else self._segments
        return plan if len(plan) > 1 else []

    def _plan(self, size: int) -> list[tuple[Segment, Any]]:
        return [
            (segment, jax.jit(functools.partial(_run_segment, segment)))
            for segment in plan_segments(self.program, self.steps, size)
        ]

    def _run(self, params, feeds):
        values = {**params, **feeds}
        run_steps(self.steps, values, "lowering")
        return [values[spec.name] for spec in self.program.outputs]

    def _run_embedded(self, feeds):
        return self._run(self.program.params, feeds)

    def run_local(self, feeds):
        """The program on JAX's default device: in segments when long and the CPU kernels
        are off (longer ones for the smallest inputs), else whole with its parameters as constants
        when small or as arguments."""
        plan = self._plan_for(feeds.values())
        if plan:
            params = self.params_on(None)
            values = dict(feeds)
            for segment, fn in plan:
                values.update(
                    fn({k: params[k] for k in segment.params}, {k: values[k] for k in segment.reads})
                )
            return [values[spec.name] for spec in self.program.outputs]
        arrays = [feeds[name] for name in self.input_names]
        return self.executable(tuple(a.shape for a in arrays))(*arrays)

    def call_accepted(self, inputs: Any) -> tuple[list[jax.Array], ResultHasher, bool] | None:
        """The outputs (device arrays), their hasher and whether float input was quantized, for
        plain ndarrays with the dtypes and shapes that `_feeds` accepted before (so its dtype,
        shape and agreement checks hold again): returned unchanged, or float rows it quantized
        with the input's stored scale (quantized here by the same native function, bit for bit).
        The integer values must lie within the declared bounds (vectorized min and max). None
        for anything else; `_feeds` then checks them."""
        if type(inputs) is np.ndarray:
            if len(self.input_names) != 1:
                return None
            arrays: tuple[Any, ...] = (inputs,)
            found = self._accepted.get((inputs.dtype, inputs.shape))
        elif type(inputs) is dict and len(inputs) == len(self.input_names):
            arrays = tuple(inputs.get(name) for name in self.input_names)
            if not all(type(a) is np.ndarray for a in arrays):
                return None
            found = self._accepted.get(tuple((a.dtype, a.shape) for a in arrays))
        else:
            return None
        if found is None:
            return None
        run, hasher, quantizations = found
        if quantizations:
            arrays = list(arrays)
            for i, quantize in quantizations:
                arrays[i] = quantize(arrays[i])  # InputRangeError on NaN, as `_feeds` raises
        for i, (low, high) in self._bounds:
            if arrays[i].min() < low or arrays[i].max() > high:
                return None
        return run(*arrays), hasher, bool(quantizations)

    def remember(self, inputs: Any, feeds: Mapping[str, np.ndarray], outs: Sequence[np.ndarray]) -> None:
        """After a run on ``feeds``: record the signature of ``inputs`` if `_feeds` returned each
        unchanged or quantized it from float32/float64 with its stored scale (where the native
        quantizer runs), with what runs them and the hasher of the outputs ``outs`` they gave."""
        if type(inputs) is np.ndarray and len(self.input_names) == 1:
            arrays: tuple[Any, ...] = (inputs,)
            key: Any = (inputs.dtype, inputs.shape)
        elif type(inputs) is dict:
            arrays = tuple(inputs.get(name) for name in self.input_names)
            key = tuple((a.dtype, a.shape) for a in arrays if type(a) is np.ndarray)
        else:
            return
        quantizations = []
        for i, (spec, a) in enumerate(zip(self.program.inputs, arrays)):
            if feeds[spec.name] is a:
                continue
            quantize = self._quantizer(spec, a)
            if quantize is None:
                return
            quantizations.append((i, quantize))
        if self._plan_for(arrays):
            run: Callable[..., list[jax.Array]] = functools.partial(
                _run_named, self.run_local, self.input_names
            )
        else:
            run = _direct(self.executable(tuple(a.shape for a in arrays)))
        if len(self._accepted) >= 1024:
            self._accepted.clear()
        hasher = result_hasher(self.program.model_id, self.output_names, outs)
        self._accepted[key] = (run, hasher, tuple(quantizations))

    def _quantizer(self, spec: ValueSpec, given: Any) -> Callable[[np.ndarray], np.ndarray] | None:
        """The native quantization of float rows ``given`` for input ``spec`` with its stored
        scale (the one `_feeds` applied), or None where there is none for them."""
        native = native_quantizer()
        scale = _scales_of(self.program).get(spec.name)
        if native is None or scale is None or type(given) is not np.ndarray:
            return None
        if given.dtype not in (np.float32, np.float64) or given.dtype.byteorder not in "=|":
            return None
        return functools.partial(native, m=scale["mantissa"], e=scale["exponent"], out=np.dtype(spec.dtype))

    def executable(self, shapes: tuple[tuple[int, ...], ...]) -> Callable[..., list[jax.Array]]:
        """The whole program compiled ahead of time for inputs of these shapes (in the spec
        dtypes), once per shape: parameters compiled in as constants when small, else placed on
        the device once and bound, so a call passes only the inputs."""
        executable = self._executables.get(shapes)
        if executable is not None:
            return executable
        with self._compile_lock:
            if shapes not in self._executables:
                specs = [
                    jax.ShapeDtypeStruct(shape, np.dtype(spec.dtype))
                    for shape, spec in zip(shapes, self.program.inputs)
                ]
                if self._embedded is not None:
                    self._executables[shapes] = jax.jit(self._run_flat_embedded).lower(*specs).compile()
                else:
                    params = self.params_on(None)
                    compiled = jax.jit(self._run_flat).lower(params, *specs).compile()
                    self._executables[shapes] = functools.partial(compiled, params)
            return self._executables[shapes]

    def _run_flat(self, params, *arrays):
        return self._run(params, dict(zip(self.input_names, arrays)))

    def _run_flat_embedded(self, *arrays):
        return self._run(self.program.params, dict(zip(self.input_names, arrays)))

    def local_cache_size(self) -> int:
        """How many input shapes `run_local` has compiled for."""
        plans = [plan for plan in (self._segments, self._small_segments) if len(plan) > 1]
        return sum(plan[0][1]._cache_size() for plan in plans) + len(self._executables)

    def run_sharded(self, feeds, mesh: Mesh):
        """The program on every device of a 1-D ``("batch",)`` mesh, each on its own rows
        (``shard_map``): rows never interact, so each device runs the whole program, CPU kernels
        included, on its block of rows. (Under a plain sharded ``jit``, XLA cannot split the
        kernels' custom calls and would gather every row onto every device first.)"""
        if mesh not in self._sharded:
            rows, replicated = PartitionSpec("batch"), PartitionSpec()
            if self._embedded is not None:  # small parameters: compiled in, as on one device
                body = jax.shard_map(
                    self._run_embedded, mesh=mesh, in_specs=(rows,), out_specs=rows, check_vma=False
                )
                self._sharded[mesh] = (jax.jit(body), ())
            else:
                body = jax.shard_map(
                    self._run, mesh=mesh, in_specs=(replicated, rows), out_specs=rows, check_vma=False
                )
                self._sharded[mesh] = (jax.jit(body), (self.params_on(NamedSharding(mesh, replicated)),))
        fn, leading = self._sharded[mesh]
        return fn(*leading, feeds)

    def params_on(self, sharding) -> dict[str, jax.Array]:
        key = (sharding,)
        if key not in self._placed:
            self._placed[key] = {k: jax.device_put(v, sharding) for k, v in self.program.params.items()}
        return self._placed[key]


def _direct(executable):
    """The C++ call behind a called `jax.stages.Compiled` (its ``__call__`` only forwards to it),
    saving a Python frame per call; the executable itself where JAX keeps no such attribute."""
    if isinstance(executable, functools.partial):
        return functools.partial(_direct(executable.func), *executable.args)
    return getattr(executable, "_call", None) or executable


def _run_named(run_local, names, *arrays):
    return run_local(dict(zip(names, arrays)))


def _run_segment(segment: Segment, params, values):
    values = {**params, **values}
    run_steps(segment.steps, values, "lowering")
    return {name: values[name] for name in segment.writes}


_compiled: collections.OrderedDict[str, _Compiled] = collections.OrderedDict()
_lock = threading.Lock()


def _compiled_for(program: Program) -> _Compiled:
    entry = _compiled.get(program.model_id)
    if entry is not None:
        try:
            _compiled.move_to_end(program.model_id)
            return entry
        except KeyError:  # evicted by another thread just now
            pass
    with _lock:
        entry = _compiled.get(program.model_id)
        if entry is None:
            entry = _compiled[program.model_id] = _Compiled(program)
            while len(_compiled) > _CACHE_SIZE:
                _compiled.popitem(last=False)
        _compiled.move_to_end(program.model_id)
        return entry


def _checked_input(spec: ValueSpec, value: Any, scale: Mapping[str, int] | None = None) -> np.ndarray:
    """Validate one batched input against its spec and return it in the spec's dtype.

    Float input is quantized with ``scale`` (the program's stored input scale) when there is one."""
    if isinstance(value, jax.Array):
        value = np.asarray(value)
    array = np.asarray(value)
    if array.dtype.kind == "f" and scale is not None:
        array = quantize_to_scale(array, scale, spec.dtype)
    if array.dtype.kind not in "iu":
        hint = (
            " Quantize float data on the host first with aivm_jax.quantize_input."
            if array.dtype.kind == "f"
            else ""
        )
        raise InputDTypeError(
            f"input {spec.name!r} must hold integers ({spec.dtype}), got dtype {array.dtype}.{hint}"
        )
    if array.ndim != len(spec.shape) + 1 or not spec.accepts_shape(tuple(array.shape[1:])):
        dims = ", ".join(["batch", *spec.dims()])
        raise InputShapeError(
            f"input {spec.name!r} must have shape ({dims}), got {array.shape}; "
            "add a leading batch axis for a single example"
        )
    if array.shape[0] == 0:
        raise InputShapeError(f"input {spec.name!r} has an empty batch; pass at least one row")
    allowed, what = (
        (spec.bounds, "its declared bounds") if spec.bounds else (_range_of(spec.dtype), spec.dtype)
    )
    given = _range_of(array.dtype)
    if given[0] < allowed[0] or given[1] > allowed[1]:  # else every value of its dtype is allowed
        low, high = int(array.min()), int(array.max())
        if low < allowed[0] or high > allowed[1]:
            raise InputRangeError(
                f"input {spec.name!r} holds values in [{low}, {high}], outside {what} "
                f"[{allowed[0]}, {allowed[1]}]"
            )
    return array.astype(spec.dtype, copy=False)


@functools.cache
def _range_of(dtype) -> tuple[int, int]:
    """The inclusive value range of an integer dtype."""
    info = np.iinfo(dtype)
    return int(info.min), int(info.max)


def _is_float(value: Any) -> bool:
    return (
        np.asarray(value).dtype.kind == "f" if not isinstance(value, jax.Array) else value.dtype.kind == "f"
    )


_scales: dict[str, dict[str, dict[str, int]]] = {}  # model id -> its checked input scales


def _scales_of(program: Program) -> dict[str, dict[str, int]]:
    """`program_scales`, checked once per model id (the metadata is part of the id)."""
    if SCALES_KEY not in program.metadata:
        return {}
    found = _scales.get(program.model_id)
    if found is None:
        found = program_scales(program)  # raises on bad metadata, every time: nothing is cached then
        if len(_scales) >= 64:
            _scales.clear()
        _scales[program.model_id] = found
    return found


def _feeds(program: Program, inputs: Any) -> tuple[dict[str, np.ndarray], bool]:
    """The checked integer feeds, and whether any float input was quantized on the host."""
    scales = _scales_of(program)
    if isinstance(inputs, Mapping):
        given = set(inputs)
        wanted = {s.name for s in program.inputs}
        if given != wanted:
            raise InputShapeError(f"program inputs are {sorted(wanted)}, got {sorted(given)}")
        raw = {s.name: inputs[s.name] for s in program.inputs}
    elif len(program.inputs) == 1:
        raw = {program.inputs[0].name: inputs}
    else:
        raise InputShapeError(f"program has inputs {[s.name for s in program.inputs]}; pass a dict of arrays")
    quantized = any(_is_float(raw[s.name]) and s.name in scales for s in program.inputs)
    feeds = {s.name: _checked_input(s, raw[s.name], scales.get(s.name)) for s in program.inputs}
    batches = {a.shape[0] for a in feeds.values()}
    if len(batches) != 1:
        raise InputShapeError(f"all inputs must share one batch size, got {sorted(batches)}")
    if any(spec.dynamic for spec in program.inputs):
        try:  # variable-length inputs must also agree with each other (same sequence length, ...)
            program.output_shapes({name: a.shape[1:] for name, a in feeds.items()})
        except ProgramError as error:
            raise InputShapeError(f"input shapes do not fit together: {error}") from None
    return feeds, quantized


def _result(
    program: Program, names: Sequence[str], outs: list[np.ndarray], quantized: bool
) -> InferenceResult:
    hashes, digest = result_hashes(program.model_id, names, outs)
    return InferenceResult(
        model_id=program.model_id,
        outputs=outs[0],
        named_outputs=dict(zip(names, outs)),
        row_hashes=hashes,
        output_hash=digest,
        input_quantized=quantized,
    )


_loaded: collections.OrderedDict[tuple[bytes, str | None], Program] = collections.OrderedDict()


def load_cached(path: str | os.PathLike, expected_model_id: str | None = None) -> Program:
    """`load`, with programs kept by the SHA-256 of their file's bytes: the file is read on every
    call, and a file with other bytes at the same path is loaded and verified afresh."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return load(path, expected_model_id=expected_model_id)  # raises load's own typed error
    key = (hashlib.sha256(data).digest(), expected_model_id)
    with _lock:
        program = _loaded.get(key)
        if program is not None:
            _loaded.move_to_end(key)
            return program
    program = from_bytes(data, expected_model_id=expected_model_id, source=str(path))
    with _lock:
        _loaded[key] = program
        while len(_loaded) > _CACHE_SIZE:
            _loaded.popitem(last=False)
    return program


def _run_sharded(entry: _Compiled, feeds: Mapping[str, np.ndarray], devices: Sequence[Any]):
    batch = next(iter(feeds.values())).shape[0]
    mesh = Mesh(np.array(list(devices)), ("batch",))
    rows = NamedSharding(mesh, PartitionSpec("batch"))
    padded = -batch % len(devices)  # zero rows, dropped below; rows never interact
    placed = {
        name: jax.device_put(np.concatenate([a, np.zeros((padded, *a.shape[1:]), a.dtype)]), rows)
        for name, a in feeds.items()
    }
    outs = entry.run_sharded(placed, mesh)
    return [np.asarray(o)[:batch] for o in outs]


def infer(
    model: Program | str | os.PathLike,
    inputs: Any,
    *,
    mode: Mode = "jit",
    devices: Sequence[Any] | Literal["all"] | None = None,
    expected_model_id: str | None = None,
) -> InferenceResult:
    """Run an AIVM program on a batch of integer inputs.

    Args:
      model: a `Program`, or the path of a `.aivm` file (loaded and verified;
        read on every call, and kept by the SHA-256 of its bytes, so a file
        replaced at the same path is loaded and verified again).
      inputs: an integer array of shape ``(batch, *input_shape)`` for a
        one-input program, or a dict of them by input name. Any integer dtype
        is accepted if every value fits the input's dtype. Floats are quantized
        on the host (`aivm_jax.runtime.quantize_to_scale`: round half up,
        saturate) for an input whose scale the program stores (imported
        programs do), and refused otherwise.
      mode: ``"jit"`` (default; compiled once per program and input shape),
        ``"eager"`` (op by op, same JAX ops) or ``"reference"`` (the NumPy
        yellow paper). All three give identical bits. In ``"jit"`` mode on the
        default device, inputs that are plain ndarrays of the same dtypes and
        shapes as those of an earlier call, which needed no conversion (or were
        float32/float64 rows quantized with the stored scale, by the native
        quantizer where it runs), skip the dtype and shape checks (values are
        still checked against declared bounds) and go straight to the
        executable compiled for their shapes.
      devices: ``None`` for JAX's default device, a list of devices or
        ``"all"`` to shard the batch over them (``mode="jit"`` only).
      expected_model_id: refuse a program file whose id differs.

    Returns:
      An `InferenceResult`; row ``i`` of it is bit-identical to running row
      ``i`` alone, on any device count.

    Raises:
      InputDTypeError, InputShapeError, InputRangeError: bad inputs.
      ModelFileError and subclasses: missing, tampered or unexpected program file.
    """
    program = model if isinstance(model, Program) else load_cached(model, expected_model_id)
    if isinstance(model, Program) and expected_model_id is not None:
        if program.model_id != expected_model_id.lower():
            raise ModelIdMismatchError(
                f"program has model id {program.model_id}, expected {expected_model_id}"
            )
    if mode == "jit" and devices is None:  # the common call: checked signatures, cached executable
        entry = _compiled_for(program)
        found = entry.call_accepted(inputs)
        if found is not None:
            outs, hasher, quantized = found
            outs = [np.asarray(o) for o in outs]
            hashes, digest = hasher(outs)
            result = object.__new__(InferenceResult)  # the dataclass's own __init__ sets these six
            result.__dict__.update(  # fields one by one through object.__setattr__ (frozen)
                model_id=program.model_id,
                outputs=outs[0],
                named_outputs=dict(zip(entry.output_names, outs)),
                row_hashes=hashes,
                output_hash=digest,
                input_quantized=quantized,
            )
            return result
    feeds, quantized = _feeds(program, inputs)
    if mode == "reference":
        outs = [np.asarray(o) for o in evaluate(program, feeds, program.params, "reference")]
    elif mode == "eager":
        params = {k: jax.numpy.asarray(v) for k, v in program.params.items()}
        with jax.disable_jit():
            outs = [np.asarray(o) for o in evaluate(program, feeds, params, "lowering")]
    elif mode == "jit":
        entry = _compiled_for(program)
        chosen = None if devices is None else jax.local_devices() if devices == "all" else list(devices)
        if chosen is None or chosen == [jax.devices()[0]]:  # JAX's default device alone: no mesh
            outs = [np.asarray(o) for o in entry.run_local(feeds)]
            if devices is None:
                entry.remember(inputs, feeds, outs)
        else:
            outs = _run_sharded(entry, feeds, chosen)
    else:
        raise ValueError(f"mode must be 'jit', 'eager' or 'reference', got {mode!r}")
    return _result(program, [s.name for s in program.outputs], outs, quantized)
