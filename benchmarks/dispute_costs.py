"""What a dispute costs: moves, gas per move and per one-step check, for lies placed across the zoo.

.venv/bin/python benchmarks/dispute_costs.py [--models digits-mlp,digits-cnn,char-gpt,minilm-l6]

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(ZOO))
    args = parser.parse_args()

    from aivm_jax.chain import Chain, GameAgent, artifact, create_game, deploy_game
    from aivm_jax.disputes import (
        Outcome,
        TraceProvider,
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
            defender = GameAgent(
                chain.as_account(accounts[1]), game, TraceProvider(liar, model, inputs_root, first)
            )
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
