"""The trace: step outputs equal `infer` bit for bit; roots deterministic, sensitive, batch-independent."""

from __future__ import annotations

import numpy as np
import pytest

from aivm_jax import infer
from aivm_jax._errors import CommitmentError, InputShapeError
from aivm_jax.disputes import TAGS, commit_values, step_values, trace
from aivm_jax.runtime._fusion import FusedDense, fuse_chains


@pytest.mark.parametrize("name", ["digits-mlp", "digits-cnn"])
def test_trace_outputs_equal_infer_bit_for_bit(zoo, name):
    program, x = zoo[name]
    # Both zoo programs run fused chains under infer; the trace runs every op alone.
    assert any(isinstance(step, FusedDense) for step in fuse_chains(program))
    result = infer(program, x)
    got = trace(program, x)
    assert got.model_id == result.model_id
    assert got.output_hash == result.output_hash
    assert got.steps == len(program.inputs) + len(program.nodes)
    for spec in program.outputs:
        value = got.values[got.step_names.index(spec.name)]
        assert value.dtype == result.named_outputs[spec.name].dtype
        np.testing.assert_array_equal(value, result.named_outputs[spec.name])
    # The JAX engine's every intermediate equals the NumPy reference's.
    reference = step_values(program, x, engine="reference")
    for a, b in zip(got.values, reference):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    assert trace(program, x, engine="reference").root == got.root


def test_trace_root_is_deterministic(zoo):
    program, x = zoo["digits-cnn"]
    first, second = trace(program, x[:3]), trace(program, x[:3].copy())
    assert first.root == second.root
    assert [r.step_roots for r in first.rows] == [r.step_roots for r in second.rows]


def test_one_changed_element_changes_its_step_root_and_the_trace_root(zoo):
    program, x = zoo["digits-cnn"]
    honest = trace(program, x[:2])
    values = [v.copy() for v in honest.values]
    step = 6  # the second conv2d's int32 output, (4, 4, 32) per row: slices of 8 rows
    values[step][1, 2, 3, 7] += 1
    lying = commit_values(program, values)
    assert lying.rows[0].root == honest.rows[0].root  # the other batch row is untouched
    changed = [s for s in range(honest.steps) if lying.rows[1].step_roots[s] != honest.rows[1].step_roots[s]]
    assert changed == [step]
    assert lying.rows[1].root != honest.rows[1].root and lying.root != honest.root
    j = (2 * 4 + 3) // 8  # row (2, 3) of the (16, 32) rows
    opening = lying.slice(1, step, j)
    assert not opening.verify(honest.rows[1].step_roots[step])
    assert opening.verify(lying.rows[1].step_roots[step])
    assert honest.slice(1, step, j).verify(honest.rows[1].step_roots[step])
    # The other slice of that step is the same leaf in both trees.
    assert lying.slice(1, step, 1 - j).leaf == honest.slice(1, step, 1 - j).leaf


def test_openings_chain_from_a_slice_to_the_trace_root(zoo, merkle_check):
    program, x = zoo["digits-mlp"]
    got = trace(program, x[:5])
    row, step = 3, 6
    sl, st, rw = got.slice(row, step, 0), got.step(row, step), got.row(row)
    assert sl.verify(got.rows[row].step_roots[step])
    assert st.payload[:32] == got.rows[row].step_roots[step] and st.verify(got.rows[row].root)
    assert rw.payload == got.rows[row].root and rw.j == 5 and rw.verify(got.root)
    assert sl.tag == TAGS["aivm.trace.slice.v1"]
    value = np.frombuffer(sl.payload, "<i4" if got.values[step].dtype == np.int32 else np.int8)
    np.testing.assert_array_equal(value, got.values[step][row].reshape(-1))
    fns = merkle_check.functions
    for opening, root in [(sl, st.payload[:32]), (st, rw.payload), (rw, got.root)]:
        assert fns.verifyPayload(
            list(opening.proof), root, opening.tag, opening.i, opening.j, opening.payload
        ).call()
    with pytest.raises(CommitmentError, match="not in a batch of 5"):
        got.slice(5, 0, 0)
    with pytest.raises(CommitmentError, match="slices"):
        got.slice(0, step, 1)


def test_row_traces_do_not_depend_on_the_batch(zoo):
    for program, x in zoo.values():
        whole = trace(program, x[:6])
        for i in (0, 4):
            alone = trace(program, x[i : i + 1])
            assert alone.rows[0].root == whole.rows[i].root
            assert alone.rows[0].step_roots == whole.rows[i].step_roots
        assert trace(program, x[:5]).root != whole.root  # the batch root binds the batch


def test_inputs_infer_refuses_are_refused(zoo):
    program, x = zoo["digits-mlp"]
    with pytest.raises(InputShapeError):
        trace(program, x[:, :10])
    with pytest.raises(CommitmentError, match="one per step"):
        commit_values(program, trace(program, x[:1]).values[:-1])
