"""`Network`: the AIVM contracts on one chain, and the calls users and nodes make on them."""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from aivm_jax._errors import (
    NotDeployedError,
    RegistrationMismatchError,
    ResultTimeoutError,
    UntrustedVerifierError,
)
from aivm_jax.chain._artifacts import artifact
from aivm_jax.chain._connect import Chain
from aivm_jax.program import Program, to_bytes
from aivm_jax.runtime import input_hash, row_header

__all__ = [
    "DEFAULT_BOND",
    "DEFAULT_WINDOWS",
    "Network",
    "RequestStatus",
    "Windows",
    "commitment",
    "default_deployments_path",
    "default_verifiers_path",
    "record_verifier",
]

DEFAULT_BOND = 10**16  # 0.01 ether locked per commitment and lost on a wrong or missing reveal


@dataclasses.dataclass(frozen=True, kw_only=True)
class Windows:
    """The market's bounds on a request's windows (seconds), fixed when it is deployed.

    A requester picks its commit and reveal windows inside them, so it can neither
    slash every committer with a 1-second reveal window nor lock bonds for
    centuries. ``proof``: how long a tied request waits for a proof after its
    reveal deadline, when the model has a verifier.
    """

    min_commit: int = 10
    max_commit: int = 86_400
    min_reveal: int = 10
    max_reveal: int = 86_400
    proof: int = 3_600

    def __post_init__(self) -> None:
        if not (0 < self.min_commit <= self.max_commit and 0 < self.min_reveal <= self.max_reveal):
            raise ValueError(f"windows need 0 < min <= max, got {self}")
        if self.proof < 0:
            raise ValueError(f"the proof window must be >= 0, got {self.proof}")

    def as_tuple(self) -> tuple[int, int, int, int, int]:
        return (self.min_commit, self.max_commit, self.min_reveal, self.max_reveal, self.proof)


DEFAULT_WINDOWS = Windows()


class RequestStatus(enum.IntEnum):
    NONE = 0
    OPEN = 1
    FINALIZED = 2
    FAILED = 3


def commitment(
    chain_id: int, market: str, request_id: int, node: str, output_hash: str, salt: bytes
) -> bytes:
    """What ``node`` commits for a request before revealing: bound to the chain, the market,
    the request and the node, so that no other node can copy it and no request can replay it.

    ``keccak256(abi.encode(chainId, market, requestId, node, outputHash, salt))``, the market's
    ``commitmentOf``.
    """
    from eth_abi import encode
    from eth_utils import keccak, to_checksum_address

    return keccak(
        encode(
            ["uint256", "address", "uint256", "address", "bytes32", "bytes32"],
            [
                chain_id,
                to_checksum_address(market),
                request_id,
                to_checksum_address(node),
                _bytes32(output_hash),
                salt,
            ],
        )
    )


def default_deployments_path() -> Path:
    return Path(os.environ.get("AIVM_DEPLOYMENTS") or Path.home() / ".cache" / "aivm" / "deployments.json")


def default_verifiers_path() -> Path:
    """Where this machine records the verifiers it generated from programs (`aivm prove verifier`)."""
    return Path(os.environ.get("AIVM_VERIFIERS") or Path.home() / ".cache" / "aivm" / "verifiers.json")


def record_verifier(model_id: str, codehash: str, vka_digest: str | None, path: Path | None = None) -> Path:
    """Record the code hash (and VKA digest, for the reusable verifier) of a verifier generated
    from ``model_id``'s program, so that `Network.check_verifier` can confirm the registered one."""
    path = Path(path or default_verifiers_path())
    path.parent.mkdir(parents=True, exist_ok=True)
    records = json.loads(path.read_text()) if path.exists() else {}
    records[model_id] = {"codehash": codehash, "vka_digest": vka_digest or "0x" + "00" * 32}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(records, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path


def registration_of(program: Program) -> dict[str, Any]:
    """What the registry records of ``program`` besides its id: row sizes, the output row-hash
    header (the zk path recomputes output hashes from them), the program file's size and the
    model commitment (``0x`` + hex; dispute games open steps and weights against it)."""
    from aivm_jax.disputes import model_commitment

    spec = program.outputs[0]
    return {
        "input_size": int(np.prod(program.inputs[0].shape)),
        "output_size": int(np.prod(spec.shape)),
        "output_header": row_header(spec.name, spec.dtype, spec.shape),
        "size": len(to_bytes(program)),
        "commitment": model_commitment(program).hex,
    }


def _bytes32(hex_id: str) -> bytes:
    return bytes.fromhex(hex_id.removeprefix("0x"))


@dataclasses.dataclass(frozen=True)
class Network:
    """The registry and market contracts on a chain, used as ``chain``'s account.

    ``deploy_block``: the block the market was deployed in (where a node's first log scan starts).
    """

    chain: Chain
    registry_address: str
    market_address: str
    deploy_block: int = 0

    @property
    def registry(self):
        return self.chain.w3.eth.contract(address=self.registry_address, abi=artifact("ModelRegistry")["abi"])

    @property
    def market(self):
        return self.chain.w3.eth.contract(address=self.market_address, abi=artifact("InferenceMarket")["abi"])

    # -------------------------------------------------------------- deployment

    @classmethod
    def deploy(cls, chain: Chain, bond: int = DEFAULT_BOND, windows: Windows = DEFAULT_WINDOWS) -> Network:
        registry = chain.deploy(artifact("ModelRegistry")["abi"], artifact("ModelRegistry")["bytecode"])
        market = chain.deploy(
            artifact("InferenceMarket")["abi"],
            artifact("InferenceMarket")["bytecode"],
            registry,
            bond,
            windows.as_tuple(),
        )
        return cls(chain, registry, market, int(chain.w3.eth.block_number))

    def save(self, path: Path | None = None) -> Path:
        """Record the addresses for this chain id, so later commands find them."""
        path = Path(path or default_deployments_path())
        path.parent.mkdir(parents=True, exist_ok=True)
        records = json.loads(path.read_text()) if path.exists() else {}
        records[str(self.chain.chain_id)] = {
            "ModelRegistry": self.registry_address,
            "InferenceMarket": self.market_address,
            "deploy_block": self.deploy_block,
        }
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(records, indent=1) + "\n")
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, chain: Chain, path: Path | None = None) -> Network:
        path = Path(path or default_deployments_path())
        records = json.loads(path.read_text()) if path.exists() else {}
        entry = records.get(str(chain.chain_id))
        if entry is None:
            raise NotDeployedError(
                f"no AIVM contracts recorded for chain {chain.chain_id} in {path}; run `aivm chain deploy`"
            )
        network = cls(
            chain, entry["ModelRegistry"], entry["InferenceMarket"], int(entry.get("deploy_block", 0))
        )
        if not chain.w3.eth.get_code(network.market_address):
            raise NotDeployedError(
                f"{path} records contracts for chain {chain.chain_id}, but none are there (a restarted "
                "devnet?); run `aivm chain deploy` again"
            )
        return network

    def windows(self) -> Windows:
        """The market's bounds on request windows."""
        m = self.market.functions
        return Windows(
            min_commit=int(m.minCommitWindow().call()),
            max_commit=int(m.maxCommitWindow().call()),
            min_reveal=int(m.minRevealWindow().call()),
            max_reveal=int(m.maxRevealWindow().call()),
            proof=int(m.proofWindow().call()),
        )

    def as_account(self, address: str, key: str | None = None) -> Network:
        return dataclasses.replace(self, chain=self.chain.as_account(address, key))

    # -------------------------------------------------------------- registry

    def register(self, program: Program, uri: str, parent: str | None = None) -> str:
        """Register ``program``: its id, where to fetch it, its file size, opset, fidelity, I/O
        shape and model commitment."""
        metadata = json.dumps(
            {"name": program.name, "fidelity": program.metadata.get("fidelity", {})}, sort_keys=True
        )
        record = registration_of(program)
        shape = (record["input_size"], record["output_size"], record["output_header"])
        model_id = _bytes32(program.model_id)
        size = record["size"]
        commitment = _bytes32(record["commitment"])
        if parent is None:
            fn = self.registry.functions.register(
                model_id, uri, size, program.opset, metadata, shape, commitment
            )
        else:
            fn = self.registry.functions.registerVersion(
                _bytes32(parent), model_id, uri, size, program.opset, metadata, shape, commitment
            )
        self.chain.transact(fn)
        return program.model_id

    def check_registration(self, program: Program, model: dict[str, Any] | None = None) -> None:
        """Raise `RegistrationMismatchError` if the registry's record of ``program`` (row sizes,
        output row-hash header, file size, model commitment) is not what the program itself gives.

        The registry cannot read the program, so its owner could register a wrong shape
        or header (breaking the zk path's hashes); nodes check before serving, users before
        requesting.
        """
        model = model if model is not None else self.model(program.model_id)
        expected = registration_of(program)
        wrong = [k for k, v in expected.items() if model.get(k) != v]
        if wrong:
            shown = ", ".join(
                f"{k} registered {model.get(k)!r}, program gives {expected[k]!r}" for k in wrong
            )
            raise RegistrationMismatchError(
                f"model {program.model_id}: the registry's record is wrong: {shown}"
            )

    def check_verifier(self, model_id: str, verifiers_path: Path | None = None) -> str | None:
        """Confirm that ``model_id``'s registered verifier is the one its program generates.

        Returns None for a model without a verifier, else the verifier's address. The
        registered code hash (and VKA digest) must equal what this machine recorded when it
        generated the verifier from the program (`aivm prove verifier`, `record_verifier`), and
        the code at the address must still hash to it.

        Raises:
          UntrustedVerifierError: not recorded here, or different.
        """
        v = self.chain.call(self.registry.functions.verifierOf(_bytes32(model_id)))
        return self._confirm_verifier(model_id, v[0], "0x" + v[1].hex(), "0x" + v[2].hex(), verifiers_path)

    def check_request_verifier(self, info: dict[str, Any], verifiers_path: Path | None = None) -> str | None:
        """`check_verifier` for the verifier a request was made with (`request_info`'s snapshot),
        which is the one that judges its proofs, whatever the registry says now."""
        return self._confirm_verifier(
            info["model_id"], info["verifier"], info["vka_digest"], info["verifier_codehash"], verifiers_path
        )

    def _confirm_verifier(
        self, model_id: str, address: str, vka_digest: str, codehash: str, verifiers_path: Path | None
    ) -> str | None:
        if int(address, 16) == 0:
            return None
        path = Path(verifiers_path or default_verifiers_path())
        records = json.loads(path.read_text()) if path.exists() else {}
        expected = records.get(model_id)
        if expected is None:
            raise UntrustedVerifierError(
                f"model {model_id} has verifier {address} (code hash {codehash}), which this machine "
                f"has not generated from the program; run `aivm prove verifier FILE -o DIR` to "
                f"generate and record it in {path}, then try again"
            )
        from eth_utils import keccak

        live = "0x" + keccak(bytes(self.chain.w3.eth.get_code(address))).hex()
        if (codehash, vka_digest) != (expected["codehash"], expected["vka_digest"]) or live != codehash:
            raise UntrustedVerifierError(
                f"model {model_id}'s verifier {address} is not the one its program generates: "
                f"code hash {codehash} (live {live}), VKA digest {vka_digest}; expected "
                f"{expected['codehash']}, {expected['vka_digest']} ({path}). Do not request or serve it."
            )
        return address

    def model(self, model_id: str) -> dict[str, Any]:
        m = self.chain.call(self.registry.functions.getModel(_bytes32(model_id)))
        keys = (
            "owner",
            "parent",
            "opset",
            "registered_at",
            "size",
            "uri",
            "metadata",
            "input_size",
            "output_size",
            "output_header",
            "verifier",
            "vka_digest",
            "verifier_codehash",
            "commitment",
        )
        out = dict(zip(keys, m))
        for k in ("parent", "vka_digest", "verifier_codehash", "commitment"):
            out[k] = "0x" + out[k].hex()
        out["output_header"] = bytes(out["output_header"])
        return out

    def set_verifier(self, model_id: str, verifier: str, vka: list[bytes] | None = None) -> None:
        """Register the model's verifier: its own (``vka`` None), or EZKL's reusable one with
        the model's VKA (already registered in it with ``registerVka``)."""
        from eth_utils import keccak

        digest = bytes(32) if vka is None else keccak(b"".join(vka))
        self.chain.transact(self.registry.functions.setVerifier(_bytes32(model_id), verifier, digest))

    # -------------------------------------------------------------- market

    def stake(self, amount: int) -> None:
        self.chain.transact(self.market.functions.stake(), value=amount)

    def free_stake(self, address: str | None = None) -> int:
        address = address or self.chain.address
        m = self.market.functions
        return int(m.stakeOf(address).call()) - int(m.lockedOf(address).call())

    def bond(self) -> int:
        return int(self.market.functions.bond().call())

    def request(
        self,
        model_id: str,
        inputs: np.ndarray,
        *,
        fee: int = 10**15,
        quorum: int = 2,
        commit_window: int = 30,
        reveal_window: int = 30,
        input_uri: str = "",
        inline: bool = True,
    ) -> int:
        """Request inference of ``model_id`` on an integer batch; return the request id.

        The input travels inline in the request's event (``inline``) or at
        ``input_uri``; either way the request commits to its `input_hash`.
        """
        inputs = np.ascontiguousarray(inputs)
        data = inputs.astype(inputs.dtype.newbyteorder("<")).tobytes() if inline else b""
        fn = self.market.functions.requestInference(
            _bytes32(model_id),
            _bytes32(input_hash(model_id, inputs)),
            data,
            input_uri,
            quorum,
            commit_window,
            reveal_window,
        )
        receipt = self.chain.transact(fn, value=fee)
        (event,) = self.market.events.InferenceRequested().process_receipt(receipt)
        return int(event["args"]["requestId"])

    def request_info(self, request_id: int) -> dict[str, Any]:
        r = self.chain.call(self.market.functions.getRequest(request_id))
        keys = (
            "model_id",
            "requester",
            "input_hash",
            "fee",
            "commit_deadline",
            "reveal_deadline",
            "quorum",
            "status",
            "by_proof",
            "commits",
            "reveals",
            "output_hash",
            "verifier",
            "vka_digest",
            "verifier_codehash",
        )
        out = dict(zip(keys, r))
        for k in ("model_id", "input_hash", "output_hash", "vka_digest", "verifier_codehash"):
            out[k] = "0x" + out[k].hex()
        out["status"] = RequestStatus(out["status"]).name.lower()
        out["request_id"] = request_id
        return out

    def wait_for_result(self, request_id: int, timeout: float = 300, poll: float = 0.5) -> dict[str, Any]:
        """Poll until the request is finalized or failed; `ResultTimeoutError` after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            info = self.request_info(request_id)
            if info["status"] in ("finalized", "failed"):
                return info
            if time.monotonic() > deadline:
                raise ResultTimeoutError(
                    f"request {request_id} is still {info['status']} after {timeout:.0f} s"
                )
            time.sleep(poll)

    def commitment_for(
        self, request_id: int, output_hash: str, salt: bytes, node: str | None = None
    ) -> bytes:
        """The commitment ``node`` (default: this account) makes to ``output_hash`` for a request."""
        return commitment(
            self.chain.chain_id,
            self.market_address,
            request_id,
            node or self.chain.address,
            output_hash,
            salt,
        )

    def commit(self, request_id: int, output_hash: str, salt: bytes) -> None:
        self.chain.transact(
            self.market.functions.commit(request_id, self.commitment_for(request_id, output_hash, salt))
        )

    def reveal(self, request_id: int, output_hash: str, salt: bytes) -> None:
        self.chain.transact(self.market.functions.reveal(request_id, _bytes32(output_hash), salt))

    def finalize(self, request_id: int) -> None:
        self.chain.transact(self.market.functions.finalize(request_id))

    def withdrawable(self, address: str | None = None) -> int:
        return int(self.market.functions.withdrawable(address or self.chain.address).call())

    def withdraw(self) -> int:
        amount = self.withdrawable()
        if amount:
            self.chain.transact(self.market.functions.withdraw())
        return amount

    def submit_proof(self, request_id: int, document: dict[str, Any], keys) -> None:
        """Finalize a request with a proof, checked by the verifier the request was made with.

        Two transactions: a commitment to the proof (``commitProof``), then, in a later
        block, the proof itself; so a copy of the second transaction cannot take the fee.
        """
        from eth_abi import decode

        from aivm_jax.proofs import evm_calldata, read_vka

        own_verifier = self.request_info(request_id)["vka_digest"] == "0x" + "00" * 32
        calldata = evm_calldata(document, keys)
        proof, instances = decode(["bytes", "uint256[]"], calldata[4:])
        vka = [] if own_verifier else read_vka(keys.vka)
        self.submit_proof_calldata(request_id, proof, list(instances), vka)

    def submit_proof_calldata(
        self, request_id: int, proof: bytes, instances: list[int], vka: list[bytes] | None = None
    ) -> None:
        """`submit_proof` from the verifier's arguments: commit, then submit (the commitment's
        receipt is in hand before the proof is sent, so the proof lands in a later block)."""
        digest = self.chain.call(self.market.functions.proofDigest(request_id, self.chain.address, proof))
        self.chain.transact(self.market.functions.commitProof(request_id, digest))
        self.chain.transact(self.market.functions.submitProof(request_id, proof, instances, vka or []))
