"""What a dispute costs: moves, gas per move and per one-step check, for lies placed across the zoo.

.venv/bin/python benchmarks/dispute_costs.py [--models digits-mlp,digits-cnn,char-gpt,minilm-l6]
.venv/bin/python benchmarks/dispute_costs.py --ops [mean_pool,gather,layer_norm,softmax,matmul]

For each model, one request row, a liar (`aivm_jax.disputes.faulty_values`) that changes one
element of a step and commits to the consistent trace that follows, against an honest node,
on the in-process chain (py-evm): the honest node challenges, both agents play the game
(`DisputeGame`) to the end. Lies are placed at the first, a middle and the last node step,
and at the largest instance (output elements) of every op kind in the program. Printed per
game: the step and op, moves, the largest gas of any descent move, the gas of the final
check, total gas, wall time; then the targets of issue 20 (one-step check <= 5M gas, other
moves <= 300k gas, moves <= 2 ceil(log2 steps) + 2 ceil(log2 elements) + 4) with the
anchors beside them: opML's MIPS-level game and zk-OPML's published end-to-end times
(LeNet 494 s, MobileNet 1,115 s).

With ``--ops``, the one-step checks alone at MiniLM's largest shapes (T = 256 tokens, D = 384,
FFN K = 1536, a 30,522-row vocabulary), each on a one-node program: the gas of the
executor's ``execute`` called directly (calldata included) and of the game's ``resolve`` after
a full game against a liar at the node's last output element.
"""

from __future__ import annotations

import argparse
import math
import platform
import time

import numpy as np

ZOO = ("digits-mlp", "digits-cnn", "char-gpt", "minilm-l6")


def _program_and_inputs(name: str):
    from aivm_jax.conformance import DATA_DIR
    from aivm_jax.program import load

    if name in ("digits-mlp", "digits-cnn"):
        return load(DATA_DIR / f"{name}.aivm"), np.load(DATA_DIR / f"{name}.inputs.npy")[:1]
    from aivm_jax.models import build

    program = build(name)
    if name == "char-gpt":
        from aivm_jax.models._char_gpt import heldout_windows, train_char_gpt

        _, vocab = train_char_gpt()
        window = heldout_windows(vocab, count=1, length=int(program.inputs[0].shape[0]))
        return program, {program.inputs[0].name: window.astype(np.int32)}
    from aivm_jax.models._minilm import load_minilm_tokenizer, tokenize_batch

    ids, mask = tokenize_batch(load_minilm_tokenizer(), ["A dispute settles one element on chain."] * 1)
    names = {spec.name: spec for spec in program.inputs}
    feeds = {}
    for spec_name, spec in names.items():
        feeds[spec_name] = (mask if "mask" in spec_name else ids).astype(spec.dtype)
    return program, feeds


def _lie_steps(program, trace) -> dict[int, str]:
    first = len(program.inputs)
    steps = {
        first: "first",
        first + len(program.nodes) // 2: "middle",
        first + len(program.nodes) - 1: "last",
    }
    largest: dict[str, tuple[int, int]] = {}
    for n, node in enumerate(program.nodes):
        size = int(np.prod(trace.values[first + n].shape[1:]))
        if node.op not in largest or size > largest[node.op][0]:
            largest[node.op] = (size, first + n)
    for op, (_, s) in largest.items():
        steps.setdefault(s, f"largest {op}")
    return dict(sorted(steps.items()))


OPS = ("mean_pool", "gather", "layer_norm", "softmax", "matmul")
MINILM_T, MINILM_D, MINILM_FFN, MINILM_VOCAB, MINILM_HEADS = 256, 384, 1536, 30522, 12


def _one_op_case(op: str):
    """A one-node program at MiniLM's largest shapes for ``op``, and its one-row inputs."""
    from aivm_jax.program import Node, Program, ValueSpec

    rng = np.random.default_rng(20)
    t, d = MINILM_T, MINILM_D
    mask = ValueSpec(name="mask", dtype="int8", shape=(t,), dynamic=(0,), bounds=(0, 1))
    feeds = {"mask": np.ones((1, t), np.int8)}
    params: dict[str, np.ndarray] = {}
    attrs: dict = {}
    if op == "mean_pool":  # MiniLM pools its last layer_norm's int32 output
        inputs = [ValueSpec(name="x", dtype="int32", shape=(t, d), dynamic=(0,)), mask]
        feeds["x"] = rng.integers(-(2**15), 2**15, (1, t, d)).astype(np.int32)
        out = ValueSpec(name="y", dtype="int32", shape=(d,))
    elif op == "gather":  # the word embeddings: the game reads one column of the table
        inputs = [
            ValueSpec(name="ids", dtype="int32", shape=(t,), dynamic=(0,), bounds=(0, MINILM_VOCAB - 1))
        ]
        feeds = {"ids": rng.integers(0, MINILM_VOCAB, (1, t)).astype(np.int32)}
        params["table"] = rng.integers(-128, 128, (MINILM_VOCAB, d)).astype(np.int8)
        out = ValueSpec(name="y", dtype="int8", shape=(t, d), dynamic=(0,))
    elif op == "layer_norm":
        inputs = [ValueSpec(name="x", dtype="int32", shape=(t, d), dynamic=(0,))]
        feeds = {"x": rng.integers(-(2**24), 2**24, (1, t, d)).astype(np.int32)}
        params["gamma"], params["beta"] = rng.integers(-(2**16), 2**16, (2, d)).astype(np.int32)
        attrs = {"eps": 1}
        out = ValueSpec(name="y", dtype="int32", shape=(t, d), dynamic=(0,))
    elif op == "softmax":  # one layer's attention scores (heads, Tq, Tk)
        shape = (MINILM_HEADS, t, t)
        inputs = [ValueSpec(name="x", dtype="int32", shape=shape, dynamic=(1, 2)), mask]
        feeds["x"] = rng.integers(-(2**20), 2**20, (1, *shape)).astype(np.int32)
        # the exp2 table as the quantizer builds it (floats here only make a parameter)
        params["table"] = np.round(2.0**30 * 2.0 ** (-np.arange(256) / 256)).astype(np.int32)
        attrs = {"causal": False, "out_bits": 15}
        out = ValueSpec(name="y", dtype="int32", shape=shape, dynamic=(1, 2))
    elif op == "matmul":  # the FFN's down projection: K = 1536
        inputs = [ValueSpec(name="x", dtype="int8", shape=(t, MINILM_FFN), dynamic=(0,))]
        feeds = {"x": rng.integers(-128, 128, (1, t, MINILM_FFN)).astype(np.int8)}
        params["w"] = rng.integers(-128, 128, (MINILM_FFN, d)).astype(np.int8)
        out = ValueSpec(name="y", dtype="int32", shape=(t, d), dynamic=(0,))
    else:
        raise SystemExit(f"--ops: unknown op {op!r}; choose from {', '.join(OPS)}")
    node = Node(op=op, inputs=(*(spec.name for spec in inputs), *params), output="y", attrs=attrs)
    program = Program(
        name=f"one-{op.replace('_', '-')}", inputs=tuple(inputs), outputs=(out,), nodes=(node,), params=params
    )
    return program, feeds


def _liar_against_honest(chain, game, accounts, model, inputs_root, first, liar, honest):
    """A game over one request whose defender (account 1) committed ``liar``'s trace and whose
    challenger (account 2) the honest one: ``(defender agent, challenger agent, game id)``."""
    from aivm_jax.chain import GameAgent, create_game
    from aivm_jax.disputes import TraceProvider

    defender = GameAgent(chain.as_account(accounts[1]), game, TraceProvider(liar, model, inputs_root, first))
    challenger = GameAgent(
        chain.as_account(accounts[2]), game, TraceProvider(honest, model, inputs_root, first)
    )
    game_id = create_game(
        chain,
        game,
        defender=defender.address,
        challenger=challenger.address,
        model=model,
        inputs=inputs_root,
        batch=1,
        defender_root=liar.root,
        challenger_root=honest.root,
        clock=86_400,
    )
    return defender, challenger, game_id


def _calldata_floor(data: bytes) -> int:
    """EIP-7623's floor on a transaction's gas: 21000 + 10 per calldata token (a zero byte is one
    token, any other four)."""
    zeros = data.count(0)
    return 21_000 + 10 * (zeros + 4 * (len(data) - zeros))


def _ops_main(ops: list[str]) -> None:
    """The one-step checks at MiniLM's largest shapes: execute's and resolve's gas."""
    from aivm_jax._errors import TransactionRevertedError
    from aivm_jax.chain import Chain, artifact, deploy_game, play
    from aivm_jax.disputes import (
        commit_values,
        faulty_values,
        input_commitment,
        model_commitment,
        read_rows,
        step_descriptor,
        step_struct,
        step_values,
    )

    chain = Chain.embedded()
    game = chain.w3.eth.contract(address=deploy_game(chain), abi=artifact("DisputeGame")["abi"])
    accounts = chain.w3.eth.accounts
    print(f"{platform.processor() or platform.machine()}; py-evm in process; MiniLM shapes, one row")
    print(
        f"{'op':<11} {'operands':<34} {'reads':>5} {'row bytes':>10} {'execute gas':>12} {'resolve gas':>12} "
        f"{'data floor':>11}  outcome"
    )
    worst = 0
    for op in ops:
        program, feeds = _one_op_case(op)
        first = len(program.inputs)
        values = step_values(program, feeds, engine="reference")
        model = model_commitment(program)
        honest = commit_values(program, values)
        inputs_root = input_commitment(honest, first)
        element = int(np.prod(values[first].shape[1:])) - 1
        # execute, called directly with the rows it reads
        step = step_struct(step_descriptor(program, first))
        names = sorted(program.params)
        operands = [values[i][0] if kind == 0 else program.params[names[i]] for kind, i, _, _ in step[1]]
        shapes = [list(np.shape(a)) for a in operands]
        executor = chain.w3.eth.contract(
            address=game.functions.executorFor(step[0]).call(), abi=artifact("OneStepLinear")["abi"]
        )
        wanted = executor.functions.reads(step, shapes, element).call()
        rows = read_rows(operands, wanted)
        row_bytes = sum(len(r) if isinstance(r, bytes) else 32 * len(r) for r in rows)
        try:
            execute_gas = f"{executor.functions.execute(step, shapes, element, rows).estimate_gas():,}"
        except Exception as error:  # over the embedded chain's block gas limit, say
            execute_gas = f"({type(error).__name__})"
        # resolve, at the end of a game against a liar at that element
        liar = commit_values(program, faulty_values(program, feeds, first, element=element))
        d, c, game_id = _liar_against_honest(chain, game, accounts, model, inputs_root, first, liar, honest)
        try:
            state = play([d, c], game_id)
            outcome = state.outcome.name.lower()
            (sent,) = [r for n, r in d.receipts + c.receipts if n == "resolve"]
            floor = _calldata_floor(bytes(chain.w3.eth.get_transaction(sent["transactionHash"])["input"]))
            resolve_gas = f"{sent['gasUsed']:,}"
            worst = max(worst, sent["gasUsed"])
        except TransactionRevertedError as error:
            resolve_gas, floor, outcome = "(reverted)", 0, str(error)[:60]
        described = " ".join("x".join(map(str, s)) for s in shapes)
        print(
            f"{op:<11} {described:<34} {len(wanted):>5} {row_bytes:>10,} {execute_gas:>12} {resolve_gas:>12} "
            f"{floor:>11,}  {outcome}"
        )
    print()
    print(f"largest resolve: {worst:,} gas (target <= 5,000,000)")
    print(
        "data floor: EIP-7623's least gas for resolve's calldata (21000 + 10 per zero byte, 40 per "
        "other; py-evm runs Prague): where resolve equals it, its slices' bytes, not the check, set its cost"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(ZOO))
    parser.add_argument(
        "--ops",
        nargs="?",
        const=",".join(OPS),
        default=None,
        help="measure the one-step checks alone at MiniLM's shapes (default: all of them)",
    )
    args = parser.parse_args()
    if args.ops is not None:
        _ops_main(args.ops.split(","))
        return

    from aivm_jax.chain import Chain, artifact, deploy_game
    from aivm_jax.disputes import (
        Outcome,
        commit_values,
        faulty_values,
        input_commitment,
        model_commitment,
        step_values,
    )

    chain = Chain.embedded()
    game = chain.w3.eth.contract(address=deploy_game(chain), abi=artifact("DisputeGame")["abi"])
    accounts = chain.w3.eth.accounts
    print(f"{platform.processor() or platform.machine()}; py-evm in process; one request row")
    header = (
        f"{'model':<11} {'step':>4} {'op':<13} {'where':<20} {'moves':>5} {'bound':>5} "
        f"{'max move gas':>12} {'check gas':>10} {'total gas':>10} {'wall s':>7}  outcome"
    )
    print(header)
    worst_check, worst_move, over_bound = 0, 0, 0
    for name in args.models.split(","):
        program, inputs = _program_and_inputs(name)
        model = model_commitment(program)
        honest = commit_values(program, step_values(program, inputs, engine="reference"))
        inputs_root = input_commitment(honest, len(program.inputs))
        first = len(program.inputs)
        for step, where in _lie_steps(program, honest).items():
            op = program.nodes[step - first].op
            liar = commit_values(program, faulty_values(program, inputs, step))
            defender, challenger, game_id = _liar_against_honest(
                chain, game, accounts, model, inputs_root, first, liar, honest
            )
            start = time.perf_counter()
            while True:
                moved = [agent.act(game_id) for agent in (defender, challenger)]
                state = challenger.state(game_id)
                if state.outcome != Outcome.PENDING or not any(moved):
                    break
            wall = time.perf_counter() - start
            receipts = defender.receipts + challenger.receipts
            defender.receipts, challenger.receipts = [], []
            finals = [r["gasUsed"] for n, r in receipts if n in ("resolve", "checkShape", "resolveInput")]
            moves = [r["gasUsed"] for n, r in receipts if n not in ("resolve", "checkShape", "resolveInput")]
            elements = int(np.prod(honest.values[step].shape[1:]))
            bound = 2 * math.ceil(math.log2(honest.steps)) + 2 * math.ceil(math.log2(max(elements, 1))) + 4
            check = max(finals, default=0)
            worst_check, worst_move = max(worst_check, check), max(worst_move, max(moves, default=0))
            over_bound += state.moves > bound
            print(
                f"{name:<11} {step:>4} {op:<13} {where:<20} {state.moves:>5} {bound:>5} "
                f"{max(moves, default=0):>12,} {check:>10,} {sum(r['gasUsed'] for _, r in receipts):>10,} "
                f"{wall:>7.1f}  {state.outcome.name.lower()}"
            )
    print()
    print(f"largest one-step check: {worst_check:,} gas (target <= 5,000,000)")
    print(f"largest other move:     {worst_move:,} gas (target <= 300,000)")
    print(f"games over the move bound: {over_bound}")
    print(
        "anchors: opML bisects over MIPS instructions of a float VM (one-step = one instruction); "
        "zk-OPML reports LeNet 494 s and MobileNet 1,115 s end to end"
    )


if __name__ == "__main__":
    main()
