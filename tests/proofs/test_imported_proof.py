"""A CNN brought in through the ONNX importer proves like a zoo model: a real EZKL proof of a
held-out digit claims exactly what `infer` returns, verifies offline and in its own EVM verifier,
and an altered output is rejected."""

from __future__ import annotations

import copy
import io
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from web3 import EthereumTesterProvider, Web3  # noqa: E402

import aivm_jax  # noqa: E402
from aivm_jax import InvalidProofError, proofs  # noqa: E402
from aivm_jax.models import load_digits_data  # noqa: E402
from aivm_jax.quant import import_onnx  # noqa: E402
from aivm_jax.runtime._host import program_scales, quantize_to_scale  # noqa: E402

pytestmark = pytest.mark.slow


def _cnn(x: np.ndarray, y: np.ndarray) -> nn.Module:
    """Conv + BatchNorm + ReLU, max pool, conv + ReLU, a linear head: ops the proof exporter covers."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 8, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 10),
    )
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    xt, yt = torch.tensor(x), torch.tensor(y)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(model(xt), yt).backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def imported():
    data = load_digits_data()
    x = (data.x_train / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    model = _cnn(x, data.y_train)
    buffer = io.BytesIO()
    torch.onnx.export(
        model,
        (torch.tensor(x[:2]),),
        buffer,
        dynamo=False,
        opset_version=17,
        input_names=["x"],
        output_names=["logits"],
        dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
    )
    program = import_onnx(buffer.getvalue(), x, name="digits-cnn-imported")
    test = (data.x_test[:1] / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    row = quantize_to_scale(test, program_scales(program)["x"])
    return program, row


@pytest.fixture(scope="module")
def proved(imported, proof_cache):
    program, row = imported
    keys = proofs.setup(program, dev_srs=True, cache_dir=proof_cache)
    return keys, proofs.prove(program, row, cache_dir=proof_cache)


def test_proof_claims_what_infer_returns_and_verifies(imported, proved, proof_cache):
    program, row = imported
    _, document = proved
    result = aivm_jax.infer(program, row)
    assert document["model_id"] == program.model_id
    assert document["outputs"] == result.outputs.tolist()
    assert document["output_hash"] == result.output_hash
    checked = proofs.verify(document, cache_dir=proof_cache)
    np.testing.assert_array_equal(checked.outputs, result.outputs)


def test_altered_output_is_rejected(proved, proof_cache):
    _, document = proved
    altered = copy.deepcopy(document)
    altered["outputs"][0][0] += 1
    with pytest.raises(InvalidProofError):
        proofs.verify(altered, cache_dir=proof_cache)


def test_own_evm_verifier_accepts_it_and_rejects_tampering(proved, tmp_path):
    keys, document = proved
    proofs.write_verifier(keys, tmp_path)
    artifact = json.loads((tmp_path / "Verifier.json").read_text())
    w3 = Web3(EthereumTesterProvider())
    tx = (
        w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
        .constructor()
        .transact({"from": w3.eth.accounts[0]})
    )
    address = w3.eth.get_transaction_receipt(tx).contractAddress

    def accepted(calldata: bytes) -> bool:
        try:
            out = w3.eth.call({"to": address, "data": "0x" + calldata.hex()})
        except Exception:  # a revert is a rejection (the error type depends on the backend)
            return False
        return int.from_bytes(out[:32], "big") == 1

    calldata = proofs.evm_calldata(document, keys)
    assert accepted(calldata)
    tampered = bytearray(calldata)
    tampered[4 + 32 * 8 + 5] ^= 0x01  # inside the proof bytes
    assert not accepted(bytes(tampered))
