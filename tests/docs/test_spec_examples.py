"""The specification's worked examples, run through the code, so the pages cannot drift from it.

``docs/spec/opset.md`` holds ```` ```aivm-example ```` blocks, one op application each
(the format is described at the top of that page and in ``docs/contributing.md``)::

    op: requantize
    attrs: {"out_dtype": "int8"}
    x: int32 [[-5, 5, 3, 2147483647]]
    multiplier: int32 1
    shift: int32 1
    expect: int8 [[-2, 3, 2, 127]]

Every block runs through the NumPy reference, the op's JAX lowering under ``jit``, and
``aivm_jax.infer`` on a one-node program (which takes the CPU kernels where they run); all three
must give exactly the numbers on the page, dtype and shape included. Every op of the opset must
have at least one example.

``docs/spec/program-format.md`` and ``docs/spec/determinism.md`` hold ```` ```aivm-program ````
and ```` ```aivm-hash ```` blocks: a program's manifest, file size and model id, and a row's and
a batch's hashes, checked the same way.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import jax
import numpy as np
import pytest

import aivm_jax
from aivm_jax.batch import merkle_root
from aivm_jax.ops import OPSET
from aivm_jax.program import _format
from aivm_jax.runtime import input_hash, output_hash, row_hashes

DOCS = Path(__file__).resolve().parents[2] / "docs"
_BLOCK = re.compile(r"^```(aivm-[a-z]+)\n(.*?)^```$", re.S | re.M)


def blocks(page: str, kind: str) -> list[tuple[int, str]]:
    """``(line number, body)`` of every fenced block of ``kind`` on a docs page."""
    text = (DOCS / page).read_text()
    return [
        (text.count("\n", 0, m.start()) + 1, m.group(2)) for m in _BLOCK.finditer(text) if m.group(1) == kind
    ]


def parse_example(body: str) -> tuple[str, dict, list[np.ndarray], np.ndarray]:
    """One ``aivm-example`` block: ``(op, attrs, operands in order, expected output)``.

    Lines are ``key: value``; ``op`` names the op, ``attrs`` is a JSON object (optional),
    ``expect`` is the output, and every other line is an operand, in the op's operand order:
    ``name: dtype json-value`` (activations with their batch axis, parameters without).
    Lines starting with ``#`` are comments.
    """
    op, attrs, operands, expect = None, {}, [], None
    for line in body.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "op":
            op = value
        elif key == "attrs":
            attrs = json.loads(value)
        else:
            dtype, _, literal = value.partition(" ")
            array = _literal(literal)
            info = np.iinfo(dtype)
            assert info.min <= array.min() and array.max() <= info.max, f"{key}: values outside {dtype}"
            array = array.astype(dtype)
            if key == "expect":
                expect = array
            else:
                operands.append(array)
    assert op in OPSET, f"unknown op {op!r}"
    assert expect is not None, "an example needs an 'expect:' line"
    return op, attrs, operands, expect


def _literal(text: str) -> np.ndarray:
    """A JSON number or nested list, or ``range(start, stop[, step])``, as int64."""
    ranged = re.fullmatch(r"range\(([-\d, ]+)\)", text.strip())
    if ranged:
        return np.arange(*(int(v) for v in ranged.group(1).split(",")), dtype=np.int64)
    return np.array(json.loads(text), dtype=np.int64)


EXAMPLES = blocks("spec/opset.md", "aivm-example")


def _same(got, expected) -> None:
    got = np.asarray(got)
    assert (got.dtype, got.shape) == (expected.dtype, expected.shape)
    np.testing.assert_array_equal(got, expected)


def _one_node_program(op: str, attrs: dict, operands: list[np.ndarray], expect: np.ndarray):
    kinds = list(OPSET[op].operands)
    if kinds[-1] == "...":
        kinds = kinds[:-1] + [kinds[-2]] * (len(operands) - len(kinds) + 1)
    inputs, params, names, feeds = [], {}, [], {}
    for i, (kind, array) in enumerate(zip(kinds, operands)):
        if kind == "act":
            name = f"x{i}"
            inputs.append(aivm_jax.ValueSpec(name=name, dtype=array.dtype.name, shape=array.shape[1:]))
            feeds[name] = array
        else:
            name = f"p{i}"
            params[name] = array
        names.append(name)
    program = aivm_jax.Program(
        name=f"spec-{op}",
        inputs=tuple(inputs),
        outputs=(aivm_jax.ValueSpec(name="y", dtype=expect.dtype.name, shape=expect.shape[1:]),),
        nodes=(aivm_jax.Node(op=op, inputs=tuple(names), output="y", attrs=attrs),),
        params=params,
    )
    return program, feeds


@pytest.mark.parametrize("line, body", EXAMPLES, ids=[f"opset.md:{line}" for line, _ in EXAMPLES])
def test_opset_example(line, body):
    op, attrs, operands, expect = parse_example(body)
    _same(OPSET[op].reference(*operands, **attrs), expect)
    lowered = jax.jit(lambda *xs: OPSET[op].lowering(*xs, **attrs))(*operands)
    _same(lowered, expect)
    program, feeds = _one_node_program(op, attrs, operands, expect)
    _same(aivm_jax.infer(program, feeds).outputs, expect)


def test_every_op_has_an_example():
    covered = {parse_example(body)[0] for _, body in EXAMPLES}
    assert covered == set(OPSET), f"ops without an example in docs/spec/opset.md: {set(OPSET) - covered}"


def _fields(body: str) -> dict[str, str]:
    out = {}
    for line in body.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition(":")
            out[key.strip()] = value.strip()
    return out


def _program_from_manifest(manifest: dict, params: dict) -> aivm_jax.Program:
    def spec(s):
        return aivm_jax.ValueSpec(
            name=s["name"],
            dtype=s["dtype"],
            shape=tuple(s["shape"]),
            dynamic=tuple(s.get("dynamic", ())),
            bounds=tuple(s["bounds"]) if "bounds" in s else None,
        )

    return aivm_jax.Program(
        name=manifest["name"],
        inputs=tuple(spec(s) for s in manifest["inputs"]),
        outputs=tuple(spec(s) for s in manifest["outputs"]),
        nodes=tuple(
            aivm_jax.Node(op=n["op"], inputs=tuple(n["inputs"]), output=n["output"], attrs=n.get("attrs", {}))
            for n in manifest["nodes"]
        ),
        params={name: np.array(v["values"], dtype=v["dtype"]) for name, v in params.items()},
        metadata=manifest.get("metadata", {}),
    )


PROGRAMS = blocks("spec/program-format.md", "aivm-program")


@pytest.mark.parametrize("line, body", PROGRAMS, ids=[f"program-format.md:{line}" for line, _ in PROGRAMS])
def test_program_example(line, body):
    fields = _fields(body)
    program = _program_from_manifest(json.loads(fields["program"]), json.loads(fields["params"]))
    data = _format.to_bytes(program)
    header = 8 + 4 + 8
    manifest_length = int.from_bytes(data[12:20], "little")
    assert data[header : header + manifest_length].decode() == fields["manifest"]
    assert data[:header].hex() == fields["header"]
    assert data[header + manifest_length : -32].hex() == fields["tensors"]
    assert len(data) == int(fields["file size"])
    assert program.model_id == fields["model id"]
    assert data[-32:].hex() == fields["model id"][2:]  # the checksum is the model id's digest
    assert _format.from_bytes(data).model_id == program.model_id


HASHES = blocks("spec/determinism.md", "aivm-hash")


@pytest.mark.parametrize("line, body", HASHES, ids=[f"determinism.md:{line}" for line, _ in HASHES])
def test_hash_example(line, body):
    """The hashes of a result, from their formulas; and ``infer`` of the program-format page's
    example program on the block's input gives those outputs and hashes."""
    fields = _fields(body)
    model_id = fields["model id"]
    outputs = json.loads(fields["outputs"])  # {"name": [dtype, values with the batch axis]}
    names = list(outputs)
    arrays = [np.array(values, dtype=dtype) for dtype, values in outputs.values()]
    rows = row_hashes(model_id, names, arrays)
    assert list(rows) == json.loads(fields["row hashes"])
    assert output_hash(model_id, rows) == fields["output hash"]
    assert merkle_root(rows) == fields["merkle root"]
    dtype, _, literal = fields["input"].partition(" ")
    x = np.array(json.loads(literal), dtype=dtype)
    assert input_hash(model_id, x) == fields["input hash"]
    (_, program_body), *_ = PROGRAMS
    program_fields = _fields(program_body)
    program = _program_from_manifest(
        json.loads(program_fields["program"]), json.loads(program_fields["params"])
    )
    assert program.model_id == model_id
    for mode in ("jit", "reference"):
        result = aivm_jax.infer(program, x, mode=mode)
        for name, expected in zip(names, arrays):
            _same(result.named_outputs[name], expected)
        assert list(result.row_hashes) == list(rows) and result.output_hash == fields["output hash"]
