"""The market's money invariant under a stateful fuzz (hypothesis `RuleBasedStateMachine`).

Honest nodes, colluding liars, a copier of other nodes' commitments, an honest prover and a
re-entering verifier stake, unstake, request, commit, reveal, finalize, prove and withdraw in
any order, with the clock moving between. After every action:

* the market's balance equals what it owes: every stake and withdrawable balance, the fees of
  open requests and the burned bonds;
* an honest node loses stake only on a request where the honest committers were no strict
  majority (plurality is all that quorum mode promises without a judge);
* a request whose committers are a strict honest majority never finalizes another hash.

Honest nodes behave as their daemon does: they commit the true hash and reveal it as soon as
the commit window closes. ``AIVM_FUZZ_EXAMPLES`` / ``AIVM_FUZZ_STEPS`` raise the effort.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import aivm_jax
from aivm_jax import TransactionRevertedError
from aivm_jax.chain import Chain, Network, artifact
from aivm_jax.conformance import DATA_DIR

from ._money import owed

pytestmark = pytest.mark.slow

MLP = aivm_jax.load(DATA_DIR / "digits-mlp.aivm")
ROW = np.load(DATA_DIR / "digits-mlp.inputs.npy")[:1]
TRUTH = aivm_jax.infer(MLP, ROW).output_hash
LIE = "0x" + "ee" * 32
FIELD = 21888242871839275222246405745257275088548364400416034343698204186575808495617
INSTANCES = [
    int(v) % FIELD
    for v in (*ROW.reshape(-1).tolist(), *aivm_jax.infer(MLP, ROW).outputs.reshape(-1).tolist())
]
HONEST, LIARS, COPIER, PROVER = (1, 2, 3), (4, 5), 6, 7
WINDOW = 100


class MarketMachine(RuleBasedStateMachine):
    @initialize()
    def deploy(self):
        self.chain = Chain.embedded()
        self.chain.sync_clock = lambda: None  # the machine owns the clock
        self.tester = self.chain.w3.provider.ethereum_tester
        self.network = Network.deploy(self.chain)
        self.accounts = self.chain.w3.eth.accounts
        self.bond = self.network.bond()
        # model A: a verifier that accepts (only honest proofs are ever submitted to it, as a
        # real verifier would ensure); model B: the re-entering verifier, which is also its prover
        self.network.register(MLP, "file:///a.aivm")
        self.model_b = MLP.with_metadata(note="b")
        self.network.register(self.model_b, "file:///b.aivm")
        accept = self.chain.deploy(
            artifact("AcceptAllVerifier")["abi"], artifact("AcceptAllVerifier")["bytecode"]
        )
        self.network.set_verifier(MLP.model_id, accept)
        self.attacker = self.chain.deploy(
            artifact("ReentrantVerifier")["abi"],
            artifact("ReentrantVerifier")["bytecode"],
            self.network.market_address,
        )
        self.attacker_contract = self.chain.w3.eth.contract(
            address=self.attacker, abi=artifact("ReentrantVerifier")["abi"]
        )
        self.network.set_verifier(self.model_b.model_id, self.attacker)
        self.handles = {i: self.network.as_account(self.accounts[i]) for i in range(8)}
        for handle in self.handles.values():
            handle.chain.sync_clock = lambda: None
        self.deposits = {i: 0 for i in HONEST}
        for i in (*HONEST, *LIARS, COPIER):
            self._stake(i, 3 * self.bond)
        self.requests: dict[int, dict] = {}  # rid -> {"salts": {node: salt}, "kind": {node: str}, "b": bool}
        self.seen_block = self.chain.w3.eth.block_number + 1

    # ------------------------------------------------------------ helpers

    def _try(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except TransactionRevertedError:
            return None  # the contract refused the action: fine, the invariants still must hold

    def _stake(self, i, amount):
        self.handles[i].stake(amount)
        if i in HONEST:
            self.deposits[i] += amount

    def _now(self):
        return int(self.tester.get_block_by_number("pending")["timestamp"])

    def _info(self, rid):
        return self.network.request_info(rid)

    def _honest_reveals(self):
        """What honest daemons do: reveal every commitment as soon as its window opens."""
        now = self._now()
        for rid, r in self.requests.items():
            info = self._info(rid)
            if info["status"] != "open" or not info["commit_deadline"] <= now < info["reveal_deadline"]:
                continue
            for i, salt in r["salts"].items():
                if r["kind"][i] == "honest" and not r.get(("revealed", i)):
                    self.handles[i].reveal(rid, TRUTH, salt)
                    r[("revealed", i)] = True  # an honest reveal in its window must succeed

    # ------------------------------------------------------------ rules

    @rule(quorum=st.integers(1, 3), fee=st.sampled_from([0, 10**15, 3 * 10**16 + 1]), on_b=st.booleans())
    def request(self, quorum, fee, on_b):
        model = self.model_b if on_b else MLP
        rid = self.network.request(
            model.model_id, ROW, fee=fee, quorum=quorum, commit_window=WINDOW, reveal_window=WINDOW
        )
        self.requests[rid] = {"salts": {}, "kind": {}, "b": on_b}

    @precondition(lambda self: self.requests)
    @rule(data=st.data(), node=st.sampled_from([*HONEST, *LIARS, COPIER]))
    def commit(self, data, node):
        rid = data.draw(st.sampled_from(sorted(self.requests)))
        r = self.requests[rid]
        salt = os.urandom(32)
        if node == COPIER:
            victims = sorted(r["salts"])
            if not victims:
                return
            victim = data.draw(st.sampled_from(victims))
            copied = self.network.market.functions.commitments(rid, self.accounts[victim]).call()
            handle = self.handles[node]
            if self._try(handle.chain.transact, handle.market.functions.commit(rid, copied)) is not None:
                r["salts"][node], r["kind"][node] = r["salts"][victim], ("copy", victim)
            return
        answer = TRUTH if node in HONEST else LIE
        if self._try(self.handles[node].commit, rid, answer, salt) is None:
            return
        r["salts"][node], r["kind"][node] = salt, "honest" if node in HONEST else "liar"

    @precondition(lambda self: self.requests)
    @rule(data=st.data(), node=st.sampled_from([*LIARS, COPIER]))
    def dishonest_reveal(self, data, node):
        rid = data.draw(st.sampled_from(sorted(self.requests)))
        r = self.requests[rid]
        if node not in r["salts"]:
            return
        kind = r["kind"][node]
        answer = LIE if kind == "liar" else (TRUTH if r["kind"][kind[1]] == "honest" else LIE)
        self._try(self.handles[node].reveal, rid, answer, r["salts"][node])

    @rule(seconds=st.sampled_from([1, 30, WINDOW + 1, 2 * WINDOW + 1, 3_700]))
    def advance(self, seconds):
        target = self._now() + seconds
        # stop at every commit deadline on the way, so that honest nodes reveal in their window
        for deadline in sorted(self._info(rid)["commit_deadline"] for rid in self.requests):
            if self._now() <= deadline < target:
                self.tester.time_travel(deadline + 1)
                self.tester.mine_blocks(1)
                self._honest_reveals()
        self.tester.time_travel(target)
        self.tester.mine_blocks(1)
        self._honest_reveals()

    @precondition(lambda self: self.requests)
    @rule(data=st.data(), who=st.integers(0, 7))
    def finalize(self, data, who):
        rid = data.draw(st.sampled_from(sorted(self.requests)))
        self._try(self.handles[who].finalize, rid)

    @precondition(lambda self: self.requests)
    @rule(data=st.data())
    def honest_proof(self, data):
        rid = data.draw(st.sampled_from(sorted(self.requests)))
        if not self.requests[rid]["b"]:
            self._try(self.handles[PROVER].submit_proof_calldata, rid, os.urandom(16), INSTANCES)

    @precondition(lambda self: self.requests)
    @rule(data=st.data())
    def reentering_verifier(self, data):
        rid = data.draw(st.sampled_from(sorted(self.requests)))
        others = sorted(self.requests)
        self.chain.transact(self.attacker_contract.functions.setOther(data.draw(st.sampled_from(others))))
        proof = os.urandom(16)
        digest = self.network.market.functions.proofDigest(rid, self.attacker, proof).call()
        if (
            self._try(self.chain.transact, self.attacker_contract.functions.commitProof(rid, digest))
            is not None
        ):
            self._try(
                self.chain.transact, self.attacker_contract.functions.submitProof(rid, proof, INSTANCES)
            )

    @rule(node=st.sampled_from([*HONEST, *LIARS, COPIER]), bonds=st.integers(1, 2))
    def stake(self, node, bonds):
        self._stake(node, bonds * self.bond)

    @rule(node=st.sampled_from([*HONEST, *LIARS, COPIER]), bonds=st.integers(1, 3))
    def unstake(self, node, bonds):
        handle = self.handles[node]
        if self._try(handle.chain.transact, handle.market.functions.unstake(bonds * self.bond)) is not None:
            if node in HONEST:
                self.deposits[node] -= bonds * self.bond

    @rule(who=st.integers(0, 7))
    def withdraw(self, who):
        self.handles[who].withdraw()

    # ------------------------------------------------------------ invariants

    @invariant()
    def solvent(self):
        if not hasattr(self, "network"):
            return
        everyone = [*self.accounts[:8], self.attacker]
        balance = self.chain.w3.eth.get_balance(self.network.market_address)
        assert balance == owed(self.network, everyone)

    @invariant()
    def honest_nodes_lose_only_where_outnumbered(self):
        if not hasattr(self, "network"):
            return
        latest = self.chain.w3.eth.block_number
        if latest < self.seen_block:
            return
        events = self.network.market.events.Slashed().get_logs(from_block=self.seen_block, to_block=latest)
        self.seen_block = latest + 1
        for event in events:
            node = (
                self.accounts.index(event["args"]["node"]) if event["args"]["node"] in self.accounts else None
            )
            if node in HONEST:
                kinds = list(self.requests[event["args"]["requestId"]]["kind"].values())
                honest = kinds.count("honest")
                assert honest <= len(kinds) - honest, (
                    f"honest node {node} slashed while a strict majority: {kinds}"
                )

    @invariant()
    def an_honest_majority_finalizes_the_truth(self):
        if not hasattr(self, "network"):
            return
        for rid, r in self.requests.items():
            kinds = list(r["kind"].values())
            honest = kinds.count("honest")
            info = self._info(rid)
            if info["status"] == "finalized" and honest > len(kinds) - honest:
                assert info["output_hash"] == TRUTH, f"request {rid}: {kinds} finalized {info['output_hash']}"


MarketMachine.TestCase.settings = settings(
    max_examples=int(os.environ.get("AIVM_FUZZ_EXAMPLES", 8)),
    stateful_step_count=int(os.environ.get("AIVM_FUZZ_STEPS", 30)),
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
test_money_invariant = MarketMachine.TestCase
