"""The dispute game on py-evm: honest nodes beat liars wherever the lie is, and every move
that is not the game's is refused with a named error."""

from __future__ import annotations

import numpy as np
import pytest

from aivm_jax._errors import TransactionRevertedError
from aivm_jax.chain import Chain, GameAgent, artifact, create_game, deploy_game, play
from aivm_jax.disputes import (
    GameState,
    Outcome,
    Phase,
    TraceProvider,
    commit_values,
    faulty_values,
    input_commitment,
    model_commitment,
    step_values,
)

CLOCK = 3600


@pytest.fixture(scope="module")
def setup():
    chain = Chain.embedded()
    address = deploy_game(chain)
    game = chain.w3.eth.contract(address=address, abi=artifact("DisputeGame")["abi"])
    return chain, game


@pytest.fixture(scope="module")
def mlp(zoo):
    program, inputs = zoo["digits-mlp"]
    return program, inputs[:3]


class Table:
    """One request: the honest trace and commitments, and liars made from them."""

    def __init__(self, program, inputs):
        self.program = program
        self.inputs = inputs
        self.model = model_commitment(program)
        self.honest = commit_values(program, step_values(program, inputs, engine="reference"))
        self.input = input_commitment(self.honest, len(program.inputs))

    def liar(self, step, **fault):
        return commit_values(self.program, faulty_values(self.program, self.inputs, step, **fault))

    def provider(self, trace):
        return TraceProvider(trace, self.model, self.input, len(self.program.inputs))


def _create(chain, game, table, defender_trace, challenger_trace, defender, challenger, clock=CLOCK):
    return create_game(
        chain,
        game,
        defender=defender,
        challenger=challenger,
        model=table.model,
        inputs=table.input,
        batch=len(table.honest.rows),
        defender_root=defender_trace.root,
        challenger_root=challenger_trace.root,
        clock=clock,
    )


def _agents(chain, game, table, defender_trace, challenger_trace):
    accounts = chain.w3.eth.accounts
    d = GameAgent(chain.as_account(accounts[1]), game, table.provider(defender_trace))
    c = GameAgent(chain.as_account(accounts[2]), game, table.provider(challenger_trace))
    return d, c


def _play(setup, table, defender_trace, challenger_trace) -> GameState:
    chain, game = setup
    d, c = _agents(chain, game, table, defender_trace, challenger_trace)
    game_id = _create(chain, game, table, defender_trace, challenger_trace, d.address, c.address)
    return play([d, c], game_id)


def test_a_liar_about_the_input_loses_to_the_input_commitment(setup, mlp):
    table = Table(*mlp)
    liar = table.liar(0, row=1, element=5)
    state = _play(setup, table, table.honest, liar)
    assert (state.phase, state.outcome) == (Phase.OVER, Outcome.DEFENDER_WINS)
    assert (state.row, state.step) == (1, 0)
    state = _play(setup, table, liar, table.honest)  # and as the defender
    assert state.outcome == Outcome.CHALLENGER_WINS


def test_moves_out_of_turn_by_third_parties_and_with_forged_data_revert(setup, mlp):
    chain, game = setup
    table = Table(*mlp)
    liar = table.liar(0, row=2, element=0)
    d, c = _agents(chain, game, table, table.honest, liar)
    game_id = _create(chain, game, table, table.honest, liar, d.address, c.address)
    state = d.state(game_id)
    assert state.phase == Phase.ROWS and state.level == 2  # 3 rows: the root is at level 2

    left, right = table.provider(liar).children(state)
    with pytest.raises(TransactionRevertedError, match="NotYourTurn"):
        c.chain.transact(game.functions.bisect(game_id, left, right))
    stranger = chain.as_account(chain.w3.eth.accounts[3])
    with pytest.raises(TransactionRevertedError, match="NotAParty"):
        stranger.transact(game.functions.bisect(game_id, left, right))
    with pytest.raises(
        TransactionRevertedError, match="BadProof"
    ):  # the liar's children are not the defender's
        d.chain.transact(game.functions.bisect(game_id, left, right))
    with pytest.raises(TransactionRevertedError, match="WrongPhase"):
        d.chain.transact(game.functions.revealRow(game_id, table.honest.rows[0].root))
    assert d.act(game_id) == "bisect"
    with pytest.raises(TransactionRevertedError, match="NotYourTurn"):  # a replay
        d.chain.transact(game.functions.bisect(game_id, *table.provider(table.honest).children(state)))
    state = play([d, c], game_id)
    assert state.outcome == Outcome.DEFENDER_WINS and state.row == 2
    with pytest.raises(TransactionRevertedError, match="GameOver"):
        d.chain.transact(game.functions.timeout(game_id))


def test_create_refuses_equal_roots_and_a_forged_header(setup, mlp):
    chain, game = setup
    table = Table(*mlp)
    accounts = chain.w3.eth.accounts
    header = table.model.header()
    args = [
        accounts[1],
        accounts[2],
        table.model.root,
        header.payload,
        list(header.proof),
        table.input.root,
        3,
    ]
    with pytest.raises(TransactionRevertedError, match="SameRoots"):
        chain.transact(game.functions.create(*args, table.honest.root, table.honest.root, CLOCK))
    forged = header.payload[:-1] + b"\x01"
    args[3] = forged
    with pytest.raises(TransactionRevertedError, match="BadProof"):
        chain.transact(game.functions.create(*args, table.honest.root, b"\x01" * 32, CLOCK))


def test_a_party_that_stops_answering_loses_on_its_clock(setup, mlp, monkeypatch):
    chain, game = setup
    monkeypatch.setattr(Chain, "sync_clock", lambda self: None)  # the test owns the clock
    table = Table(*mlp)
    liar = table.liar(0, row=0, element=1)
    d, c = _agents(chain, game, table, liar, table.honest)
    game_id = _create(chain, game, table, liar, table.honest, d.address, c.address, clock=600)
    assert d.act(game_id) == "bisect"
    assert c.act(game_id) == "bisect"
    with pytest.raises(TransactionRevertedError, match="ClockRunning"):
        c.chain.transact(game.functions.timeout(game_id))
    tester = chain.w3.provider.ethereum_tester
    tester.time_travel(int(tester.get_block_by_number("pending")["timestamp"]) + 601)
    with pytest.raises(TransactionRevertedError, match="ClockExpired"):  # too late to move
        d.act(game_id)
    c.chain.transact(game.functions.timeout(game_id))
    assert c.state(game_id).outcome == Outcome.CHALLENGER_WINS


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_an_honest_node_beats_a_liar_at_any_node_step(setup, mlp, where):
    table = Table(*mlp)
    first = len(table.program.inputs)
    step = {"first": first, "middle": first + len(table.program.nodes) // 2, "last": table.honest.steps - 1}[
        where
    ]
    liar = table.liar(step, row=1, element=3)
    state = _play(setup, table, liar, table.honest)
    assert state.outcome == Outcome.CHALLENGER_WINS
    assert (state.row, state.step) == (1, step)
    assert state.element == 3 and state.value_c == int(table.honest.values[step][1].reshape(-1)[3])
    state = _play(setup, table, table.honest, liar)
    assert state.outcome == Outcome.DEFENDER_WINS


def test_the_moves_stay_within_the_bound(setup, mlp):
    table = Table(*mlp)
    step = table.honest.steps - 2
    state = _play(setup, table, table.liar(step, row=0, element=7), table.honest)
    elements = int(np.prod(table.honest.values[step].shape[1:]))
    bound = 2 * int(np.ceil(np.log2(3))) + 2 * int(np.ceil(np.log2(table.honest.steps)))
    bound += 2 * int(np.ceil(np.log2(elements))) + 4
    assert state.outcome == Outcome.CHALLENGER_WINS and state.moves <= bound


def test_two_liars_lose_to_one_honest_node(setup, mlp):
    chain, game = setup
    table = Table(*mlp)
    step = len(table.program.inputs) + 4
    liars = [table.liar(step, row=0, element=2), table.liar(step, row=0, element=2)]
    accounts = chain.w3.eth.accounts
    honest = GameAgent(chain.as_account(accounts[2]), game, table.provider(table.honest))
    for n, liar in enumerate(liars):
        agent = GameAgent(chain.as_account(accounts[3 + n]), game, table.provider(liar))
        game_id = _create(chain, game, table, liar, table.honest, agent.address, honest.address)
        assert play([agent, honest], game_id).outcome == Outcome.CHALLENGER_WINS
        game_id = _create(chain, game, table, table.honest, liar, honest.address, agent.address)
        assert play([honest, agent], game_id).outcome == Outcome.DEFENDER_WINS


def test_a_forged_one_step_opening_reverts(setup, mlp):
    chain, game = setup
    table = Table(*mlp)
    step = len(table.program.inputs)  # the first matmul: reads an input row and a weight column
    liar = table.liar(step, row=0, element=0)
    d, c = _agents(chain, game, table, liar, table.honest)
    game_id = _create(chain, game, table, liar, table.honest, d.address, c.address)
    while d.state(game_id).phase != Phase.ONE_STEP:
        assert d.act(game_id) or c.act(game_id)
    state = c.state(game_id)
    fn, name = c._move(game_id, state)
    assert name == "resolve"
    args = list(fn.args)
    slices = [list(s) for s in args[4]]
    forged = [list(s) for s in slices]
    forged[0][3] = bytes([forged[0][3][0] ^ 1]) + forged[0][3][1:]
    with pytest.raises(TransactionRevertedError, match="BadProof"):
        c.chain.transact(game.functions.resolve(*args[:4], forged, args[5]))
    if len(slices) > 1:
        swapped = list(reversed(args[5]))
        with pytest.raises(TransactionRevertedError, match="OperandMismatch|BadArguments"):
            c.chain.transact(game.functions.resolve(*args[:4], slices, swapped))
    values = [list(v) for v in args[3]]
    values[0][0] = table.liar(0, row=0, element=9).step(0, 0).payload  # an input leaf no one agreed to
    with pytest.raises(TransactionRevertedError, match="BadProof"):
        c.chain.transact(game.functions.resolve(args[0], args[1], args[2], values, slices, args[5]))
    assert c.act(game_id) == "resolve"
    assert c.state(game_id).outcome == Outcome.CHALLENGER_WINS
