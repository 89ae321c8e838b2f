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

from aivm_jax._errors import NotDeployedError, ResultTimeoutError
from aivm_jax.chain._artifacts import artifact
from aivm_jax.chain._connect import Chain
from aivm_jax.program import Program
from aivm_jax.runtime import input_hash, row_header

__all__ = ["DEFAULT_BOND", "Network", "RequestStatus", "commitment", "default_deployments_path"]

DEFAULT_BOND = 10**16  # 0.01 ether locked per commitment and lost on a wrong or missing reveal


class RequestStatus(enum.IntEnum):
    NONE = 0
    OPEN = 1
    FINALIZED = 2
    FAILED = 3


def commitment(output_hash: str, salt: bytes) -> bytes:
    """``keccak256(outputHash || salt)``, what a node commits before revealing."""
    from eth_utils import keccak

    return keccak(bytes.fromhex(output_hash[2:]) + salt)


def default_deployments_path() -> Path:
    return Path(os.environ.get("AIVM_DEPLOYMENTS") or Path.home() / ".cache" / "aivm" / "deployments.json")


def _bytes32(hex_id: str) -> bytes:
    return bytes.fromhex(hex_id.removeprefix("0x"))


@dataclasses.dataclass(frozen=True)
class Network:
    """The registry and market contracts on a chain, used as ``chain``'s account."""

    chain: Chain
    registry_address: str
    market_address: str

    @property
    def registry(self):
        return self.chain.w3.eth.contract(address=self.registry_address, abi=artifact("ModelRegistry")["abi"])

    @property
    def market(self):
        return self.chain.w3.eth.contract(address=self.market_address, abi=artifact("InferenceMarket")["abi"])

    # -------------------------------------------------------------- deployment

    @classmethod
    def deploy(cls, chain: Chain, bond: int = DEFAULT_BOND) -> Network:
        registry = chain.deploy(artifact("ModelRegistry")["abi"], artifact("ModelRegistry")["bytecode"])
        market = chain.deploy(
            artifact("InferenceMarket")["abi"], artifact("InferenceMarket")["bytecode"], registry, bond
        )
        return cls(chain, registry, market)

    def save(self, path: Path | None = None) -> Path:
        """Record the addresses for this chain id, so later commands find them."""
        path = Path(path or default_deployments_path())
        path.parent.mkdir(parents=True, exist_ok=True)
        records = json.loads(path.read_text()) if path.exists() else {}
        records[str(self.chain.chain_id)] = {
            "ModelRegistry": self.registry_address,
            "InferenceMarket": self.market_address,
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
        network = cls(chain, entry["ModelRegistry"], entry["InferenceMarket"])
        if not chain.w3.eth.get_code(network.market_address):
            raise NotDeployedError(
                f"{path} records contracts for chain {chain.chain_id}, but none are there (a restarted "
                "devnet?); run `aivm chain deploy` again"
            )
        return network

    def as_account(self, address: str, key: str | None = None) -> Network:
        return dataclasses.replace(self, chain=self.chain.as_account(address, key))

    # -------------------------------------------------------------- registry

    def register(self, program: Program, uri: str, parent: str | None = None) -> str:
        """Register ``program`` (its id, where to fetch it, opset, fidelity, I/O shape)."""
        metadata = json.dumps(
            {"name": program.name, "fidelity": program.metadata.get("fidelity", {})}, sort_keys=True
        )
        spec = program.outputs[0]
        shape = (
            int(np.prod(program.inputs[0].shape)),
            int(np.prod(spec.shape)),
            row_header(spec.name, spec.dtype, spec.shape),
        )
        model_id = _bytes32(program.model_id)
        if parent is None:
            fn = self.registry.functions.register(model_id, uri, program.opset, metadata, shape)
        else:
            fn = self.registry.functions.registerVersion(
                _bytes32(parent), model_id, uri, program.opset, metadata, shape
            )
        self.chain.transact(fn)
        return program.model_id

    def model(self, model_id: str) -> dict[str, Any]:
        m = self.chain.call(self.registry.functions.getModel(_bytes32(model_id)))
        keys = (
            "owner",
            "parent",
            "opset",
            "registered_at",
            "uri",
            "metadata",
            "input_size",
            "output_size",
            "output_header",
            "verifier",
            "vka_digest",
        )
        out = dict(zip(keys, m))
        out["parent"] = "0x" + out["parent"].hex()
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
        )
        out = dict(zip(keys, r))
        for k in ("model_id", "input_hash", "output_hash"):
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

    def commit(self, request_id: int, output_hash: str, salt: bytes) -> None:
        self.chain.transact(self.market.functions.commit(request_id, commitment(output_hash, salt)))

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
        """Finalize a request at once with a proof (the model's verifier must be registered)."""
        from eth_abi import decode

        from aivm_jax.proofs import evm_calldata, read_vka

        own_verifier = self.model(self.request_info(request_id)["model_id"])["vka_digest"] == bytes(32)
        calldata = evm_calldata(document, keys)
        proof, instances = decode(["bytes", "uint256[]"], calldata[4:])
        vka = [] if own_verifier else read_vka(keys.vka)
        self.chain.transact(self.market.functions.submitProof(request_id, proof, list(instances), vka))
