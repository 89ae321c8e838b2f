"""The dispute game on chain: deploying it with its one-step executors, and an agent that plays.

`GameAgent` reads a game's state from the `DisputeGame` contract
(``contracts/disputes/DisputeGame.sol``) and makes the one move its party owes, with the
answers of its `aivm_jax.disputes.TraceProvider`. `deploy_game` deploys the executors and
the game. `play` lets agents move in turn until a game ends (tests, demos).
"""

from __future__ import annotations

from collections.abc import Sequence

from aivm_jax._errors import CommitmentError, TransactionRevertedError
from aivm_jax.chain._artifacts import artifact
from aivm_jax.disputes import GameState, Phase, TraceProvider

__all__ = ["EXECUTORS", "GameAgent", "create_game", "deploy_game", "play"]

EXECUTORS = ("OneStepLinear", "OneStepElementwise", "OneStepRows")
"""The one-step executor contracts the game is deployed with (every op of the opset)."""


def deploy_game(chain) -> str:
    """Deploy the executors and a `DisputeGame` that uses them; return the game's address."""
    executors = []
    for name in EXECUTORS:
        compiled = artifact(name)
        executors.append(chain.deploy(compiled["abi"], compiled["bytecode"]))
    compiled = artifact("DisputeGame")
    return chain.deploy(compiled["abi"], compiled["bytecode"], executors)


def create_game(
    chain,
    game,
    *,
    defender: str,
    challenger: str,
    model,
    inputs,
    batch: int,
    defender_root: bytes,
    challenger_root: bytes,
    clock: int,
) -> int:
    """Start a game as its referee (``chain``'s account); return its id.

    ``model`` is the `aivm_jax.disputes.ModelCommitment`, ``inputs`` the request's
    `aivm_jax.disputes.InputCommitment`; each party gets ``clock`` seconds.
    """
    header = model.header()
    receipt = chain.transact(
        game.functions.create(
            defender,
            challenger,
            model.root,
            header.payload,
            list(header.proof),
            inputs.root,
            batch,
            defender_root,
            challenger_root,
            clock,
        )
    )
    (event,) = game.events.GameCreated().process_receipt(receipt)
    return event["args"]["id"]


class GameAgent:
    """Plays one party's moves in `DisputeGame` games from its `TraceProvider`.

    ``chain`` signs as the party (`aivm_jax.chain.Chain`); ``game`` is the web3 contract.
    """

    def __init__(self, chain, game, provider: TraceProvider) -> None:
        self.chain = chain
        self.game = game
        self.provider = provider
        self.address = chain.address
        self.receipts: list[tuple[str, dict]] = []  # (move name, receipt) of every move sent

    def state(self, game_id: int) -> GameState:
        return GameState.from_tuple(self.chain.call(self.game.functions.game(game_id)))

    def my_turn(self, state: GameState) -> bool:
        """Whether this party owes the next move (either party may send a final check)."""
        if state.phase == Phase.OVER:
            return False
        if state.phase in (Phase.SHAPE, Phase.INPUT, Phase.ONE_STEP):
            return True
        mover = state.challenger if state.challenger_to_move else state.defender
        return mover.lower() == self.address.lower()

    def act(self, game_id: int) -> str | None:
        """Make this party's next move in ``game_id``; return its name, or None when there is
        nothing to do (not its turn, or the game is over).

        Raises:
          TransactionRevertedError: the move reverted (a final check the other party sent
            first ends the game instead: that returns None).
        """
        state = self.state(game_id)
        if not self.my_turn(state):
            return None
        fn, name = self._move(game_id, state)
        try:
            receipt = self.chain.transact(fn)
        except TransactionRevertedError as error:
            if "GameOver" in str(error) and state.phase in (Phase.SHAPE, Phase.INPUT, Phase.ONE_STEP):
                return None
            raise
        self.receipts.append((name, receipt))
        return name

    def _move(self, game_id: int, state: GameState):
        f = self.game.functions
        p = self.provider
        if state.phase in (Phase.ROWS, Phase.STEPS, Phase.SLICES) and state.level > 0:
            left, right = p.children(state)
            return f.bisect(game_id, left, right), "bisect"
        if state.phase == Phase.ROWS:
            return f.revealRow(game_id, p.row_root(state.index)), "revealRow"
        if state.phase == Phase.STEPS:
            return f.revealStep(game_id, p.step_payload(state.row, state.index)), "revealStep"
        if state.phase == Phase.SLICES:
            data = p.slice_bytes(state.row, state.step, state.index)
            if not state.challenger_to_move:
                return f.revealSlice(game_id, data), "revealSlice"
            theirs = self._defender_slice(game_id, state)
            return f.revealSlices(game_id, data, theirs), "revealSlices"
        if state.phase == Phase.INPUT:
            row_proof = p.inputs.row_proof(state.row)
            payload_hash, step_proof = p.inputs.step(state.row, state.step)
            fn = f.resolveInput(game_id, p.inputs.row_roots[state.row], row_proof, payload_hash, step_proof)
            return fn, "resolveInput"
        descriptor, proof, values, step = p.step_openings(state)
        if state.phase == Phase.SHAPE:
            return f.checkShape(game_id, descriptor, proof, values), "checkShape"
        shapes = p.shapes(step, state.row)
        executor = self._executor(step[0])
        reads = self.chain.call(executor.functions.reads(step, shapes, state.element))
        slices, which = p.slice_openings(step, state.row, reads, shapes)
        return f.resolve(game_id, descriptor, proof, values, slices, which), "resolve"

    def _defender_slice(self, game_id: int, state: GameState) -> bytes:
        """The defender's slice bytes, from its `revealSlice` transaction's calldata."""
        logs = self.game.events.Moved().get_logs(
            from_block=0, argument_filters={"id": game_id, "mover": state.defender}
        )
        for log in reversed(logs):
            tx = self.chain.w3.eth.get_transaction(log["transactionHash"])
            fn, args = self.game.decode_function_input(tx["input"])
            if fn.fn_name == "revealSlice":
                return bytes(args["data"])
        raise CommitmentError(f"game {game_id}: the defender's revealSlice transaction was not found")

    def _executor(self, op: bytes):
        # Every executor has the IOneStep interface; any one's ABI serves.
        address = self.chain.call(self.game.functions.executorFor(op))
        return self.chain.w3.eth.contract(address=address, abi=artifact("OneStepLinear")["abi"])


def play(agents: Sequence[GameAgent], game_id: int, *, max_moves: int = 1000) -> GameState:
    """Let ``agents`` move in turn until game ``game_id`` is over (tests, demos)."""
    for _ in range(max_moves):
        moved = False
        for agent in agents:
            if agent.act(game_id) is not None:
                moved = True
            if agent.state(game_id).phase == Phase.OVER:
                return agent.state(game_id)
        if not moved:
            return agents[0].state(game_id)
    raise CommitmentError(f"game {game_id} did not end within {max_moves} moves")
