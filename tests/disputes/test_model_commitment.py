"""The model commitment: step descriptors and parameter slices proven against its root."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from aivm_jax._errors import CommitmentError
from aivm_jax.disputes import (
    OPERAND_PARAM,
    OPERAND_VALUE,
    TAGS,
    attrs_words,
    decode_step_descriptor,
    model_commitment,
    rows_per_slice,
    step_descriptor,
)
from aivm_jax.program import Node, Program, from_bytes, to_bytes


def test_every_step_descriptor_is_proven_and_describes_its_node(zoo):
    for program, _ in zoo.values():
        commitment = model_commitment(program)
        params = sorted(program.params)
        first = len(program.inputs)
        for n, node in enumerate(program.nodes):
            opening = commitment.step(first + n)
            assert opening.verify(commitment.root)
            assert len(opening.proof) <= (commitment.leaf_count - 1).bit_length()
            assert opening.payload == step_descriptor(program, first + n)
            desc = decode_step_descriptor(opening.payload)
            assert desc["op"] == node.op
            assert desc["shape"] == program.value_shape(node.output)
            assert desc["attrs"] == attrs_words(node.attrs)
            for (kind, index, dtype, shape), name in zip(desc["operands"], node.inputs):
                if name in program.params:
                    assert (kind, params[index], shape) == (OPERAND_PARAM, name, program.params[name].shape)
                    assert dtype == {"int8": 8, "int32": 32}[program.params[name].dtype.name]
                else:
                    assert kind == OPERAND_VALUE and shape == program.value_shape(name)
            # The descriptor of one step does not open as another's.
            other = dataclasses.replace(opening, i=opening.i + 1)
            assert not other.verify(commitment.root)
        with pytest.raises(CommitmentError, match="not a node step"):
            step_descriptor(program, 0)
        assert commitment.input(0).verify(commitment.root)
        assert commitment.header().verify(commitment.root)


def test_weight_rows_and_columns_are_proven(zoo, merkle_check):
    program, _ = zoo["digits-cnn"]
    commitment = model_commitment(program)
    w = program.params["l5.kernel"]  # (128, 10) int8: a matmul's weight
    per = rows_per_slice(128, 1)  # columns of K = 128 bytes, 8 to a slice
    for n in range(w.shape[1]):
        opening = commitment.param_columns("l5.kernel", n // per)
        offset = (n % per) * 128
        column = np.frombuffer(opening.payload[offset : offset + 128], np.int8)
        np.testing.assert_array_equal(column, w[:, n])
        assert opening.verify(commitment.root)
    row = commitment.param_rows("l5.kernel", 0)
    np.testing.assert_array_equal(np.frombuffer(row.payload, np.int8)[:10], w[0])
    # A conv2d kernel (3, 3, 16, 32): output channel o is one column of 3*3*16 elements.
    k = program.params["l2.kernel"]
    opening = commitment.param_columns("l2.kernel", 30 // 7)  # 144-byte columns, 7 to a slice
    got = np.frombuffer(opening.payload, np.int8).reshape(-1, 144)
    np.testing.assert_array_equal(got[30 % 7], k[..., 30].reshape(-1))
    # int32 rows are little-endian.
    bias = commitment.param_rows("l5.bias", 0)
    np.testing.assert_array_equal(np.frombuffer(bias.payload, "<i4"), program.params["l5.bias"])
    # On chain: the contract rebuilds the leaf from the column bytes.
    fns = merkle_check.functions
    for o in (opening, bias):
        assert fns.verifyPayload(list(o.proof), commitment.root, o.tag, o.i, o.j, o.payload).call()
    forged = bytearray(opening.payload)
    forged[3] ^= 0x40
    assert not fns.verifyPayload(
        list(opening.proof), commitment.root, opening.tag, opening.i, opening.j, bytes(forged)
    ).call()
    with pytest.raises(CommitmentError, match="no column slice"):
        commitment.param_columns("l5.kernel", 2)
    with pytest.raises(CommitmentError, match="no parameter"):
        commitment.param_rows("nope", 0)
    assert commitment.param_columns("l5.kernel", 0).tag == TAGS["aivm.param.col.v1"]


def test_commitment_is_deterministic_and_binds_weights_and_attributes(zoo):
    program, _ = zoo["digits-mlp"]
    again = from_bytes(to_bytes(program))
    assert model_commitment(again).root == model_commitment(program).root
    params = dict(program.params)
    changed = params["l1.kernel"].copy()
    changed[7, 3] ^= 1
    tampered = Program(
        name=program.name,
        inputs=program.inputs,
        outputs=program.outputs,
        nodes=program.nodes,
        params={**params, "l1.kernel": changed},
        metadata=program.metadata,
    )
    original, other = model_commitment(program), model_commitment(tampered)
    assert other.root != original.root
    # The slice holding the changed element no longer opens under the original root.
    assert not other.param_rows("l1.kernel", 7 // rows_per_slice(32, 1)).verify(original.root)
    assert not other.param_columns("l1.kernel", 3 // rows_per_slice(64, 1)).verify(original.root)
    # Another requantize out_dtype changes the descriptor (and the root).
    nodes = list(program.nodes)
    last = nodes[-1]
    nodes[-1] = Node(op=last.op, inputs=last.inputs, output=last.output, attrs={"out_dtype": "int32"})
    outputs = (dataclasses.replace(program.outputs[0], dtype="int32"),)
    retyped = Program(
        name=program.name, inputs=program.inputs, outputs=outputs, nodes=tuple(nodes), params=params
    )
    s = len(program.inputs) + len(nodes) - 1
    assert step_descriptor(retyped, s) != step_descriptor(program, s)
    assert decode_step_descriptor(step_descriptor(retyped, s))["dtype"] == 32
