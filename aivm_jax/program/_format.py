"""The `.aivm` file: one canonical byte layout per program, and the model id it hashes to.

Layout (all integers little-endian)::

    MAGIC            8 bytes  b"\\x89AIVM\\r\\n\\x1a"
    format_version   u32      1
    manifest_length  u64
    manifest         canonical JSON, UTF-8 (sorted keys, no spaces, ASCII only,
                     no floats): opset, name, inputs, outputs, nodes, metadata,
                     and per parameter its name, dtype, shape, offset, nbytes
    tensor data      parameters in name order, C order, little-endian, no gaps
    checksum         32 bytes: SHA-256 of everything above

The **model id** is ``0x`` + hex(SHA-256 of everything before the checksum).
One program has exactly one such byte string, so the id covers everything that
can change an output bit (opset version, graph, attributes, tensors, specs)
and the metadata that travels with it. Loading checks the checksum, parses,
re-encodes and insists the bytes come out identical, so a file changed in any
way is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from aivm_jax._errors import (
    ModelFileError,
    ModelFileNotFoundError,
    ModelIdMismatchError,
    ProgramError,
    TamperedModelError,
)
from aivm_jax.program._program import Node, Program, ValueSpec

__all__ = ["FORMAT_VERSION", "MAGIC", "from_bytes", "load", "model_id_of", "save", "to_bytes"]

MAGIC = b"\x89AIVM\r\n\x1a"
FORMAT_VERSION = 1
_HEADER = struct.Struct("<8sIQ")
_CHECKSUM_BYTES = 32


def _canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _body(program: Program) -> bytes:
    entries, blobs, offset = [], [], 0
    for name in sorted(program.params):
        array = program.params[name]
        data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
        entries.append(
            {
                "name": name,
                "dtype": array.dtype.name,
                "shape": list(array.shape),
                "offset": offset,
                "nbytes": len(data),
            }
        )
        blobs.append(data)
        offset += len(data)
    manifest = {
        "opset": program.opset,
        "name": program.name,
        "inputs": [s.to_json() for s in program.inputs],
        "outputs": [s.to_json() for s in program.outputs],
        "nodes": [n.to_json() for n in program.nodes],
        "params": entries,
        "metadata": program.metadata,
    }
    text = _canonical_json(manifest)
    return _HEADER.pack(MAGIC, FORMAT_VERSION, len(text)) + text + b"".join(blobs)


def to_bytes(program: Program) -> bytes:
    """The program's canonical file bytes, checksum included."""
    body = _body(program)
    return body + hashlib.sha256(body).digest()


def model_id_of(program: Program) -> str:
    return "0x" + hashlib.sha256(_body(program)).hexdigest()


def from_bytes(data: bytes, *, expected_model_id: str | None = None, source: str = "<bytes>") -> Program:
    """Parse and verify `.aivm` bytes.

    Raises:
      ModelFileError: not an AIVM file, or an unsupported format version.
      TamperedModelError: checksum or canonical form does not hold.
      ModelIdMismatchError: the id differs from ``expected_model_id``.
    """
    if len(data) < _HEADER.size + _CHECKSUM_BYTES or data[:8] != MAGIC:
        raise ModelFileError(f"{source} is not an AIVM program file (no AIVM header)")
    magic, version, manifest_length = _HEADER.unpack_from(data)
    if version != FORMAT_VERSION:
        raise ModelFileError(
            f"{source} uses file format {version}; this runtime reads format {FORMAT_VERSION}"
        )
    body, checksum = data[:-_CHECKSUM_BYTES], data[-_CHECKSUM_BYTES:]
    digest = hashlib.sha256(body).digest()
    if digest != checksum:
        raise TamperedModelError(
            f"{source} has been modified: its bytes no longer match its checksum. "
            "Fetch the program again from a trusted source."
        )
    model_id = "0x" + digest.hex()
    if expected_model_id is not None and model_id != expected_model_id.lower():
        raise ModelIdMismatchError(
            f"{source} has model id {model_id}, expected {expected_model_id}; "
            "it is not the program you asked for"
        )
    try:
        program = _parse(body, manifest_length)
    except (ProgramError, ValueError, KeyError, TypeError) as error:
        raise TamperedModelError(f"{source} holds an invalid program: {error}") from None
    if _body(program) != body:
        raise TamperedModelError(f"{source} is not in canonical form; it was not written by `save`")
    program.__dict__["model_id"] = model_id
    return program


def _parse(body: bytes, manifest_length: int) -> Program:
    start = _HEADER.size
    manifest = json.loads(body[start : start + manifest_length].decode("ascii"))
    data = memoryview(body)[start + manifest_length :]
    params = {}
    for entry in manifest["params"]:
        dtype = np.dtype(entry["dtype"]).newbyteorder("<")
        end = entry["offset"] + entry["nbytes"]
        if end > len(data):
            raise ValueError(f"parameter {entry['name']!r} runs past the end of the file")
        array = np.frombuffer(data[entry["offset"] : end], dtype=dtype).reshape(entry["shape"])
        params[entry["name"]] = array.astype(dtype.newbyteorder("="))
    return Program(
        name=manifest["name"],
        opset=manifest["opset"],
        inputs=tuple(ValueSpec(**s) for s in manifest["inputs"]),
        outputs=tuple(ValueSpec(**s) for s in manifest["outputs"]),
        nodes=tuple(Node(**n) for n in manifest["nodes"]),
        params=params,
        metadata=manifest["metadata"],
    )


def save(program: Program, path: str | os.PathLike) -> str:
    """Write the program to ``path`` atomically (temp file + rename); return its model id."""
    path = Path(path)
    data = to_bytes(program)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a program file is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return program.model_id


def load(path: str | os.PathLike, *, expected_model_id: str | None = None) -> Program:
    """Read and verify a `.aivm` file (see `from_bytes` for what is checked)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ModelFileNotFoundError(f"no program file at {path}") from None
    except IsADirectoryError:
        raise ModelFileError(f"{path} is a directory, not a program file") from None
    return from_bytes(data, expected_model_id=expected_model_id, source=str(path))
