"""The dispute game's trace provider: what a party's commitments hold at any game position.

`TraceProvider` answers what the game asks about a position (a tree node's children, a
leaf's data, the openings of a one-step check) from a party's `Trace` (honest or not), the
model commitment and the request's input commitment; it knows nothing of turns or chains.
The agent that plays moves with it is `aivm_jax.chain.GameAgent`. `GameState` mirrors the
`DisputeGame` contract's state (``contracts/disputes/DisputeGame.sol``).

Tree positions follow the contract: level 0 holds the leaves, a tree of ``n`` leaves has
its root at level ``ceil(log2 n)``, and node ``(level, i)`` has children ``(level - 1,
2i)`` and ``(level - 1, 2i + 1)`` (an odd last node is carried up unchanged).
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Sequence
from typing import Any

from aivm_jax._errors import CommitmentError
from aivm_jax.disputes._input import InputCommitment
from aivm_jax.disputes._model import OPERAND_PARAM, ModelCommitment
from aivm_jax.disputes._rows import step_struct
from aivm_jax.disputes._trace import Trace

__all__ = ["GameState", "Outcome", "Phase", "TraceProvider", "divergence", "proof_to_level"]


class Phase(enum.IntEnum):
    """`DisputeGame.Phase`."""

    NONE = 0
    ROWS = 1
    STEPS = 2
    SLICES = 3
    SHAPE = 4
    INPUT = 5
    ONE_STEP = 6
    OVER = 7


class Outcome(enum.IntEnum):
    """`DisputeGame.Outcome`."""

    PENDING = 0
    DEFENDER_WINS = 1
    CHALLENGER_WINS = 2
    BOTH_WRONG = 3


@dataclasses.dataclass(frozen=True)
class GameState:
    """A game as `DisputeGame.game(id)` returns it (field names as in the contract)."""

    referee: str
    defender: str
    challenger: str
    model_root: bytes
    input_root: bytes
    batch: int
    n_inputs: int
    n_steps: int
    turn_start: int
    clock_defender: int
    clock_challenger: int
    phase: Phase
    outcome: Outcome
    challenger_to_move: bool
    moves: int
    level: int
    index: int
    leaves: int
    node_d: bytes
    node_c: bytes
    pending_left: bytes
    pending_right: bytes
    row: int
    step: int
    payload_d: bytes
    payload_c: bytes
    dtype: int
    element: int
    value_d: int
    value_c: int
    spent_d: int
    spent_c: int

    @classmethod
    def from_tuple(cls, values: Sequence[Any]) -> GameState:
        fields = [f.name for f in dataclasses.fields(cls)]
        data = dict(zip(fields, values, strict=True))
        data["phase"] = Phase(data["phase"])
        data["outcome"] = Outcome(data["outcome"])
        return cls(**data)


def divergence(t: int, s: int) -> int:
    """The level at which leaves ``t < s`` part (the contract's ``_divergence``)."""
    return max((t ^ s).bit_length() - 1, 0)


def proof_to_level(levels: Sequence[Sequence[bytes]], index: int, level: int) -> list[bytes]:
    """The siblings of leaf ``index`` up to its ancestor at ``level`` (a subtree's root)."""
    path = []
    for below in levels[:level]:
        sibling = index ^ 1
        if sibling < len(below):
            path.append(below[sibling])
        index //= 2
    return path


class TraceProvider:
    """What one party's commitments hold: its `Trace` (honest or not), the model commitment,
    and the request's input commitment."""

    def __init__(self, trace: Trace, model: ModelCommitment, inputs: InputCommitment, n_inputs: int) -> None:
        self.trace = trace
        self.model = model
        self.inputs = inputs
        self.n_inputs = n_inputs

    def _levels(self, state: GameState) -> Sequence[Sequence[bytes]]:
        if state.phase == Phase.ROWS:
            return self.trace._levels
        if state.phase == Phase.STEPS:
            return self.trace.rows[state.row]._levels
        if state.phase == Phase.SLICES:
            return self.trace.rows[state.row]._step_levels[state.step]
        raise CommitmentError(f"no tree is descended in phase {state.phase.name}")

    def node(self, state: GameState) -> bytes:
        """This party's node at the game's position."""
        return bytes(self._levels(state)[state.level][state.index])

    def children(self, state: GameState) -> tuple[bytes, bytes]:
        """The two children of this party's node at the game's position."""
        below = self._levels(state)[state.level - 1]
        return bytes(below[2 * state.index]), bytes(below[2 * state.index + 1])

    def row_root(self, row: int) -> bytes:
        return self.trace.rows[row].root

    def step_payload(self, row: int, step: int) -> bytes:
        return self.trace.step(row, step).payload

    def slice_bytes(self, row: int, step: int, j: int) -> bytes:
        return self.trace.slice(row, step, j).payload

    def step_openings(
        self, state: GameState
    ) -> tuple[bytes, list[bytes], list[tuple[bytes, list[bytes]]], Any]:
        """The disputed step's descriptor and proof, its value operands' step leaves with
        proofs up to the agreed subtrees, and its `step_struct`."""
        opening = self.model.step(state.step)
        step = step_struct(opening.payload)
        levels = self.trace.rows[state.row]._levels
        values = []
        for kind, t, _, _ in step[1]:
            if kind == OPERAND_PARAM:
                continue
            payload = self.trace.step(state.row, t).payload
            values.append((payload, proof_to_level(levels, t, divergence(t, state.step))))
        return opening.payload, list(opening.proof), values, step

    def shapes(self, step: Any, row: int) -> list[list[int]]:
        """Each operand's actual shape: a trace value's row shape, a parameter's shape."""
        shapes = []
        for kind, index, _, shape in step[1]:
            shapes.append(list(shape) if kind == OPERAND_PARAM else list(self.trace.values[index].shape[1:]))
        return shapes

    def slice_openings(
        self, step: Any, row: int, reads: Sequence[Sequence[Any]], shapes
    ) -> tuple[list, list[int]]:
        """The slices that hold ``reads`` (each ``(operand, column, index)``), deduplicated,
        and for each read the index of its slice: `DisputeGame.resolve`'s last two arguments."""
        from aivm_jax.disputes._leaves import rows_per_slice

        slices: list[tuple] = []
        where: dict[tuple[int, bool, int], int] = {}
        which = []
        for operand, column, index in reads:
            kind, position, dtype, _ = step[1][operand]
            shape = shapes[operand]
            d = shape[-1] if shape else 1
            if column:
                d = max(1, _size(shape) // d)
            j = index // rows_per_slice(d, dtype // 8)
            key = (operand, bool(column), j)
            if key not in where:
                if kind == OPERAND_PARAM:
                    name = self.model.param_names[position]
                    opening = self.model.param_columns(name, j) if column else self.model.param_rows(name, j)
                else:
                    opening = self.trace.slice(row, position, j)
                where[key] = len(slices)
                slices.append((operand, bool(column), j, opening.payload, list(opening.proof)))
            which.append(where[key])
        return slices, which


def _size(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n
