"""Hashes of inference results: one per batch row, and one over the whole batch.

``row_hash = SHA-256("aivm-row-v1" || model_id (32 bytes) || for each output in
order: len(name) u16 || name || dtype name || u8 rank || shape (u32 each) ||
row bytes little-endian)``.

``output_hash = SHA-256("aivm-out-v1" || model_id || batch size u64 || row
hashes in order)``. ``input_hash`` binds a request to its integer input the same
way. Hashes print as ``0x`` + 64 hex digits, a ``bytes32``.
A row hash depends only on the model and that row's outputs, so it is the
same whatever batch the row was computed in.

Row hashes of a batch are computed in one native call on the SHA extensions
where they run (`aivm_jax.runtime._sha256`), else with hashlib row by row.
`ResultHasher`, what `infer` calls, keeps the hashed prefixes of one result
layout (model id, output names, dtypes, row shapes) between calls, so a small
batch costs one hashlib copy, update and digest per row.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import math
import struct
import sys
from collections.abc import Sequence

import numpy as np

from aivm_jax.runtime._sha256 import (
    Part,
    native_available,
    native_rows,
    sha256_many,
    shared,
)

__all__ = [
    "digests_from_hex",
    "input_hash",
    "ResultHasher",
    "output_hash",
    "result_hasher",
    "result_hashes",
    "row_digests",
    "row_hash_table",
    "row_header",
    "row_hashes",
]

_NIBBLE = np.full(256, 255, np.uint8)  # ASCII byte -> hex digit value; 255: not a hex digit
_NIBBLE[np.frombuffer(b"0123456789abcdef", np.uint8)] = np.arange(16, dtype=np.uint8)
_NIBBLE[np.frombuffer(b"ABCDEF", np.uint8)] = np.arange(10, 16, dtype=np.uint8)


def _id_bytes(model_id: str) -> bytes:
    return bytes.fromhex(model_id[2:])


@functools.lru_cache(maxsize=1024)
def _dtype_name(dtype: np.dtype) -> str:
    return dtype.name  # numpy builds this string on every access


def row_header(name: str, dtype: str, row_shape: Sequence[int]) -> bytes:
    """The bytes that precede one output's row data in a row hash."""
    return _row_header(name, dtype, tuple(int(d) for d in row_shape))


@functools.lru_cache(maxsize=1024)
def _row_header(name: str, dtype: str, row_shape: tuple[int, ...]) -> bytes:
    encoded = name.encode()
    return (
        struct.pack("<H", len(encoded))
        + encoded
        + dtype.encode()
        + struct.pack(f"<B{len(row_shape)}I", len(row_shape), *row_shape)
    )


def _row_parts(model_id: str, names: Sequence[str], outputs: Sequence[np.ndarray]) -> list[Part]:
    """Each row's message as parts (see `_sha256`): the prefix and the headers of later
    outputs are shared, each output's row bytes (little-endian, C order) strided."""
    parts = []
    for i, (name, out) in enumerate(zip(names, outputs)):
        header = _row_header(name, _dtype_name(out.dtype), out.shape[1:])
        parts.append(shared((b"aivm-row-v1" + _id_bytes(model_id) + header) if i == 0 else header))
        little = np.ascontiguousarray(out, dtype=out.dtype.newbyteorder("<")).reshape(-1).view(np.uint8)
        size = little.size // out.shape[0] if out.shape[0] else 0
        parts.append((little, size, size))
    return parts


def row_hash_table(
    model_id: str, names: Sequence[str], outputs: Sequence[np.ndarray], *, native: bool | None = None
) -> tuple[bytes, list[str]]:
    """All row hashes of a result (see `row_hashes`): the 32-byte digests concatenated, and
    the ``0x`` strings. ``native`` as in `sha256_many` (None: the SHA extensions where they
    run and the batch is large enough)."""
    parts = _row_parts(model_id, names, outputs)
    return sha256_many(parts, outputs[0].shape[0], native=native, hex_strings=True)


_LITTLE_ENDIAN = sys.byteorder == "little"
# From this many rows, `ResultHasher` makes one native call (its ctypes call costs about as much
# as hashing 6 rows of a digits result with hashlib on a 2-core EPYC; 2x faster at 16 rows).
NATIVE_MIN_ROWS = 8
_COUNT = struct.Struct("<Q")


class ResultHasher:
    """The row hashes and output hash of results of one layout (model id, and each output's
    name, dtype and row shape), the same bytes as `row_hashes` and `output_hash`: the prefixes
    the rows share are hashed once, and each row costs one copy, update and digest of hashlib
    (batches of `NATIVE_MIN_ROWS` rows or more: one native call where it runs)."""

    __slots__ = ("_headers", "_model_id", "_names", "_native", "_one", "_out", "_row", "_single")

    def __init__(self, model_id: str, names: Sequence[str], outputs: Sequence[np.ndarray]) -> None:
        headers = [_row_header(n, _dtype_name(o.dtype), o.shape[1:]) for n, o in zip(names, outputs)]
        self._model_id, self._names = model_id, tuple(names)
        self._row = hashlib.sha256(b"aivm-row-v1" + _id_bytes(model_id) + headers[0])
        self._headers = tuple(headers[1:])
        self._out = hashlib.sha256(b"aivm-out-v1" + _id_bytes(model_id))
        self._one = self._out.copy()  # ... and the batch size 1
        self._one.update(_COUNT.pack(1))
        # one output whose bytes in memory are the hashed bytes whenever it is C-contiguous
        self._single = len(outputs) == 1 and (_LITTLE_ENDIAN or outputs[0].dtype.itemsize == 1)
        self._single = self._single and outputs[0].dtype.byteorder != ">"
        # for the native call: the shared parts (kept alive here), each part's size and stride
        shared_parts = [np.frombuffer(b"aivm-row-v1" + _id_bytes(model_id) + headers[0], np.uint8)]
        shared_parts += [np.frombuffer(h, np.uint8) for h in headers[1:]]
        rows = [o.dtype.itemsize * math.prod(o.shape[1:]) for o in outputs]
        sizes = [n for part, row in zip(shared_parts, rows) for n in (part.size, row)]
        strides = [n for row in rows for n in (0, row)]
        self._native = (
            shared_parts,
            [part.ctypes.data for part in shared_parts],
            (ctypes.c_int64 * len(sizes))(*sizes),
            (ctypes.c_int64 * len(strides))(*strides),
        )

    def __call__(self, outputs: Sequence[np.ndarray]) -> tuple[tuple[str, ...], str]:
        """``(row hashes as 0x strings, output hash)`` of ``outputs``, which have this layout."""
        count = outputs[0].shape[0]
        if count == 1 and self._single and outputs[0].flags.c_contiguous:
            h = self._row.copy()
            h.update(outputs[0])
            row = h.digest()
            h = self._one.copy()
            h.update(row)
            return ("0x" + row.hex(),), "0x" + h.hexdigest()
        if count >= NATIVE_MIN_ROWS and native_available():
            return self._native_hashes(outputs, count)
        views = [_row_view(out) for out in outputs] if count else []
        if count == 0:
            digests: list[bytes] = []
        elif count == 1 and not self._headers:
            h = self._row.copy()
            h.update(views[0])
            digests = [h.digest()]
        else:
            sizes = [len(view) // count for view in views]
            digests = []
            for r in range(count):
                h = self._row.copy()
                h.update(views[0][r * sizes[0] : (r + 1) * sizes[0]])
                for header, view, size in zip(self._headers, views[1:], sizes[1:]):
                    h.update(header)
                    h.update(view[r * size : (r + 1) * size])
                digests.append(h.digest())
        h = self._out.copy()
        h.update(_COUNT.pack(count) + b"".join(digests))
        return tuple(["0x" + d.hex() for d in digests]), "0x" + h.hexdigest()

    def _native_hashes(self, outputs: Sequence[np.ndarray], count: int) -> tuple[tuple[str, ...], str]:
        """All rows in one call of the native SHA-256 (`aivm_jax.runtime._sha256`), its parts
        laid out once per layout: shared prefix or header, then the output's rows."""
        _, shared, sizes, strides = self._native
        arrays = [_row_array(out) for out in outputs]
        addresses = [a for pair in zip(shared, [arr.ctypes.data for arr in arrays]) for a in pair]
        data = (ctypes.c_void_p * len(addresses))(*addresses)
        digests = ctypes.create_string_buffer(32 * count)
        hex_digits = ctypes.create_string_buffer(66 * count)
        native_rows()(count, len(addresses), data, sizes, strides, digests, hex_digits)
        text = hex_digits.raw.decode("ascii")
        h = self._out.copy()
        h.update(_COUNT.pack(count) + digests.raw)
        return tuple([text[i : i + 66] for i in range(0, 66 * count, 66)]), "0x" + h.hexdigest()


def _row_array(out: np.ndarray) -> np.ndarray:
    """The array as the hash reads it, C order and little-endian (itself when already so)."""
    order = out.dtype.byteorder
    if out.flags.c_contiguous and (order == "|" or order == "<" or (order == "=" and _LITTLE_ENDIAN)):
        return out
    return np.ascontiguousarray(out, dtype=out.dtype.newbyteorder("<"))


def _row_view(out: np.ndarray) -> memoryview:
    """The array's bytes as the hash reads them, C order and little-endian (no copy when so)."""
    view = memoryview(out)
    order = out.dtype.byteorder
    if not (view.c_contiguous and (order == "|" or order == "<" or (order == "=" and _LITTLE_ENDIAN))):
        view = memoryview(np.ascontiguousarray(out, dtype=out.dtype.newbyteorder("<")))
    return view.cast("B")


_hashers: dict[tuple, ResultHasher] = {}


def result_hasher(model_id: str, names: Sequence[str], outputs: Sequence[np.ndarray]) -> ResultHasher:
    """The `ResultHasher` of the layout of ``outputs`` (kept per layout)."""
    key = (model_id, *[(name, out.dtype, out.shape[1:]) for name, out in zip(names, outputs)])
    found = _hashers.get(key)
    if found is None:
        if len(_hashers) >= 1024:
            _hashers.clear()
        found = _hashers[key] = ResultHasher(model_id, names, outputs)
    return found


def result_hashes(
    model_id: str, names: Sequence[str], outputs: Sequence[np.ndarray]
) -> tuple[tuple[str, ...], str]:
    """The row hashes (``0x`` strings) and the output hash of one result (`ResultHasher`)."""
    return result_hasher(model_id, names, outputs)(outputs)


def digests_from_hex(hashes: Sequence[str] | np.ndarray) -> bytes:
    """``0x`` + 64-hex-digit hashes (a list, or a numpy string array) -> their 32-byte
    digests concatenated, decoded for all rows at once.

    Raises:
      ValueError: a hash that is not ``0x`` and 64 hex digits.
    """
    text = np.asarray(hashes)
    if text.size == 0:
        return b""
    if text.dtype.kind not in "US" or text.dtype.itemsize not in (66, 66 * 4):
        raise ValueError("row hashes must be '0x' and 64 hex digits")
    chars = np.frombuffer(text.astype("S66").tobytes(), np.uint8).reshape(-1, 66)
    values = _NIBBLE[chars[:, 2:]]
    if (chars[:, 0] != ord("0")).any() or (chars[:, 1] != ord("x")).any() or (values == 255).any():
        raise ValueError("row hashes must be '0x' and 64 hex digits")
    return (values[:, 0::2] * 16 + values[:, 1::2]).astype(np.uint8).tobytes()


def row_digests(model_id: str, names: Sequence[str], outputs: Sequence[np.ndarray]) -> list[bytes]:
    """The 32-byte row hashes (see `row_hashes`)."""
    blob, _ = row_hash_table(model_id, names, outputs)
    return [blob[i : i + 32] for i in range(0, len(blob), 32)]


def row_hashes(model_id: str, names: Sequence[str], outputs: Sequence[np.ndarray]) -> list[str]:
    """One hash per batch row over all outputs of that row (all outputs share the batch axis)."""
    return row_hash_table(model_id, names, outputs)[1]


def input_hash(model_id: str, inputs: np.ndarray) -> str:
    """``SHA-256("aivm-in-v1" || model_id || inputs, C order, little-endian)``: what a request commits to."""
    data = np.ascontiguousarray(inputs, dtype=inputs.dtype.newbyteorder("<")).tobytes()
    return "0x" + hashlib.sha256(b"aivm-in-v1" + _id_bytes(model_id) + data).hexdigest()


def output_hash(model_id: str, rows: Sequence[str] | Sequence[bytes] | bytes) -> str:
    """Hash over the ordered row hashes of one batch (``0x`` strings, 32-byte digests, or the
    digests concatenated as `row_hash_table` gives them)."""
    if isinstance(rows, bytes | bytearray):
        if len(rows) % 32:
            raise ValueError("concatenated row digests must be a multiple of 32 bytes")
        count, joined = len(rows) // 32, bytes(rows)
    else:
        count = len(rows)
        joined = b"".join(row if isinstance(row, bytes) else bytes.fromhex(row[2:]) for row in rows)
    h = hashlib.sha256(b"aivm-out-v1" + _id_bytes(model_id) + struct.pack("<Q", count))
    h.update(joined)
    return "0x" + h.hexdigest()
