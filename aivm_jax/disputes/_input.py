"""A request's input commitment: the root a dispute over a program input is settled against.

For batch row ``r`` the row's input root is the Merkle root of the trace's step leaves of
the input steps ``0 .. I-1`` (the same ``aivm.trace.step.v1`` leaves a trace has, so an
honest trace agrees with it leaf for leaf), and

    input_root = merkle_root(leaf("aivm.input.row.v1", r, batch, row_input_root_r) for r)

The requester (or the market, from the input it publishes) computes it; a game over an
input step opens one row leaf and one step leaf under it (`DisputeGame.resolveInput`).
"""

from __future__ import annotations

import dataclasses

from aivm_jax.disputes._keccak import keccak256
from aivm_jax.disputes._leaves import TAGS, encode_leaf
from aivm_jax.disputes._merkle import hash_leaf, merkle_levels, proof_from_levels
from aivm_jax.disputes._trace import Trace

__all__ = ["InputCommitment", "input_commitment"]

_ROW, _STEP = TAGS["aivm.input.row.v1"], TAGS["aivm.trace.step.v1"]


def _leaf(tag: bytes, i: int, j: int, payload: bytes) -> bytes:
    return hash_leaf(encode_leaf(tag, i, j, keccak256(payload)))


@dataclasses.dataclass(frozen=True, eq=False)
class InputCommitment:
    """`root` over the batch's rows; `row_roots[r]` over row ``r``'s input step leaves."""

    root: bytes
    row_roots: tuple[bytes, ...]
    _payloads: tuple[tuple[bytes, ...], ...] = dataclasses.field(repr=False)
    _row_levels: tuple[list[list[bytes]], ...] = dataclasses.field(repr=False)
    _levels: list[list[bytes]] = dataclasses.field(repr=False)

    @property
    def hex(self) -> str:
        return "0x" + self.root.hex()

    def row_proof(self, row: int) -> list[bytes]:
        """The proof of row ``row``'s leaf under `root`."""
        return proof_from_levels(self._levels, row)

    def step(self, row: int, step: int) -> tuple[bytes, list[bytes]]:
        """Input step ``step`` of row ``row``: (keccak of its leaf payload, proof under the row's
        input root)."""
        return keccak256(self._payloads[row][step]), proof_from_levels(self._row_levels[row], step)


def input_commitment(trace: Trace, inputs: int) -> InputCommitment:
    """The input commitment of the first ``inputs`` steps of ``trace`` (a program's inputs are
    its first steps; pass ``len(program.inputs)``)."""
    batch = len(trace.rows)
    payloads, row_levels, roots = [], [], []
    for r in range(batch):
        row_payloads = tuple(trace.step(r, s).payload for s in range(inputs))
        levels = merkle_levels([_leaf(_STEP, s, 0, p) for s, p in enumerate(row_payloads)])
        payloads.append(row_payloads)
        row_levels.append(levels)
        roots.append(levels[-1][0])
    levels = merkle_levels([_leaf(_ROW, r, batch, root) for r, root in enumerate(roots)])
    return InputCommitment(
        root=levels[-1][0],
        row_roots=tuple(roots),
        _payloads=tuple(payloads),
        _row_levels=tuple(row_levels),
        _levels=levels,
    )
