"""OneStepRows (contracts/disputes/OneStepRows.sol) against the NumPy reference on py-evm.

Every element checked goes the way the dispute game takes it: `reads` names the rows,
`read_rows` cuts them from the operands (a trace value's batch row, a parameter), `execute`
recomputes the element, and the result equals `aivm_jax.ops.reference` bit for bit.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aivm_jax import TransactionRevertedError
from aivm_jax.chain._connect import decode_revert
from aivm_jax.disputes import read_rows, step_descriptor, step_struct, step_values, tag
from aivm_jax.ops import reference
from aivm_jax.program import Node, Program, ValueSpec

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
VALUE, PARAM = 0, 1
FAMILY = ("layer_norm", "softmax", "mean_pool")


@pytest.fixture(scope="module")
def rows():
    from aivm_jax.chain import Chain, artifact

    chain = Chain.embedded()
    compiled = artifact("OneStepRows")
    address = chain.deploy(compiled["abi"], compiled["bytecode"])
    return chain.w3.eth.contract(address=address, abi=compiled["abi"])


# --------------------------------------------------------------------------- helpers


def _step(op, operands, out_shape, attrs, out_dtype=32):
    """A ``Step`` tuple: operands as ``(kind, index, dtype, declared shape)``."""
    return (tag(op), [(k, i, d, list(s)) for k, i, d, s in operands], out_dtype, list(out_shape), list(attrs))


def _shapes(operands):
    return [list(np.shape(a)) for a in operands]


def _check(contract, step, operands, expected, elements):
    """`reads` -> `read_rows` -> `execute` equals ``expected.flat[e]`` for every element."""
    shapes = _shapes(operands)
    assert contract.functions.outputShape(step, shapes).call() == list(expected.shape)
    for e in elements:
        wanted = contract.functions.reads(step, shapes, e).call()
        got = contract.functions.execute(step, shapes, e, read_rows(operands, wanted)).call()
        assert got == int(expected.flat[e]), (e, got, int(expected.flat[e]))


def _elements(size, data, extra=3):
    """First, last and a few drawn positions (every one when the row is small)."""
    if size <= 6:
        return list(range(size))
    drawn = data.draw(st.lists(st.integers(0, size - 1), min_size=extra, max_size=extra), label="elements")
    return sorted({0, size - 1, *drawn})


def _reverts(call, name):
    with pytest.raises(Exception) as info:
        call()
    error = info.value if isinstance(info.value, TransactionRevertedError) else decode_revert(info.value)
    assert error.error_name == name, error
    return error.error_args


def _array(data, shape, values, dtype, label):
    n = math.prod(shape)
    flat = data.draw(st.lists(values, min_size=n, max_size=n), label=label)
    return np.array(flat, dtype=np.int64).reshape(shape).astype(dtype)


INT32_EDGES = [
    INT32_MIN,
    INT32_MIN + 1,
    -(2**24) - 1,
    -(2**24),
    -1,
    0,
    1,
    2**24,
    2**24 + 1,
    INT32_MAX - 1,
    INT32_MAX,
]
INT32S = st.one_of(st.integers(INT32_MIN, INT32_MAX), st.sampled_from(INT32_EDGES))
SMALL = st.integers(-4, 4)
INT8S = st.one_of(st.integers(-128, 127), st.sampled_from([-128, -1, 0, 1, 127]))


def _int32s_regime(data, label):
    """Full-range values with the int32 and clip edges, or small ones (ties, tiny variance)."""
    return data.draw(st.sampled_from(["wide", "small", "edges"]), label=label)


def _values(regime):
    return {"wide": INT32S, "small": SMALL, "edges": st.sampled_from(INT32_EDGES)}[regime]


# --------------------------------------------------------------------------- isqrt


def test_isqrt_is_the_floor_of_the_exact_root_at_the_edges(rows):
    cases = {0, 1, 2, 3, 4, 5, 8, 9, 10, 15, 16, 17, 2**51, 2**62, 2**62 - 1, 2**62 + 1, 2**63 - 1, 2**64 - 1}
    for k in [2, 3, 1000, 2**25, 2**31 - 1, 2**31, 2**32 - 1, 2**63, 2**127, 2**128 - 1]:
        cases |= {k * k - 1, k * k, k * k + 1}
    cases |= {2**256 - 1, 2**255}
    for a in sorted(cases):
        assert rows.functions.isqrt(a).call() == math.isqrt(a), a


@settings(max_examples=60, deadline=None)
@given(
    st.one_of(
        st.integers(0, 2**64), st.integers(0, 2**256 - 1), st.integers(1, 2**128 - 1).map(lambda k: k * k)
    )
)
def test_isqrt_matches_math_isqrt(rows, a):
    assert rows.functions.isqrt(a).call() == math.isqrt(a)


# --------------------------------------------------------------------------- layer_norm


def _layer_norm_case(data):
    rank = data.draw(st.integers(1, 3), label="rank")
    lead = data.draw(st.lists(st.integers(1, 2), min_size=rank - 1, max_size=rank - 1), label="lead")
    d = data.draw(st.one_of(st.integers(1, 6), st.integers(7, 24)), label="D")
    shape = (*lead, d)
    x = _array(data, shape, _values(_int32s_regime(data, "x regime")), np.int32, "x")
    gamma = _array(data, (d,), _values(_int32s_regime(data, "gamma regime")), np.int32, "gamma")
    beta = _array(data, (d,), INT32S, np.int32, "beta")
    eps = data.draw(
        st.one_of(st.integers(0, 16), st.integers(0, 2**31 - 1), st.sampled_from([2**31 - 1])), label="eps"
    )
    return x, gamma, beta, eps


def _layer_norm_step(x_shape, eps, declared=None):
    d = x_shape[-1]
    operands = [(VALUE, 0, 32, declared or x_shape), (PARAM, 0, 32, (d,)), (PARAM, 1, 32, (d,))]
    return _step("layer_norm", operands, declared or x_shape, [1, eps])


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_layer_norm_matches_the_reference(rows, data):
    x, gamma, beta, eps = _layer_norm_case(data)
    expected = reference.layer_norm(x[None], gamma, beta, eps=eps)[0]
    # the sequence axis may be dynamic: the descriptor may declare longer leading axes
    declared = tuple(n + data.draw(st.integers(0, 2), label="longer") for n in x.shape[:-1]) + x.shape[-1:]
    step = _layer_norm_step(x.shape, eps, declared)
    d = x.shape[-1]
    row_starts = [r * d for r in range(x.size // d)]
    ends = [s + d - 1 for s in row_starts]
    elements = sorted({*_elements(x.size, data, extra=2), row_starts[-1], ends[0]})
    _check(rows, step, [x, gamma, beta], expected, elements)


def test_layer_norm_rounds_ties_half_up_and_saturates(rows):
    # x = [0, 1]: mean 0, var floor(1 / 2) = 0, r = isqrt(0 + 4) = 2, y = c * gamma / 2.
    x = np.array([[0, 1], [1, 0]], np.int32)
    for g in [1, 3, -1, -3, INT32_MAX, INT32_MIN]:
        gamma = np.array([g, g], np.int32)
        beta = np.array([0, INT32_MAX], np.int32)
        expected = reference.layer_norm(x[None], gamma, beta, eps=4)[0]
        if g in (1, 3, -1, -3):
            # c = 1: g / 2 half up; column 1 of row 0 has c = 1 too, plus beta = INT32_MAX
            assert expected[0, 1] == min((2 * g + 2) // 4 + INT32_MAX, INT32_MAX)
            assert expected[1, 0] == (2 * g + 2) // 4
        _check(rows, _layer_norm_step(x.shape, 4), [x, gamma, beta], expected, range(x.size))
    # the clip at +-2^24 and r = max(isqrt(var + eps), 1) = 1 when var + eps = 0
    x = np.array([INT32_MAX, INT32_MIN, 2**24, -(2**24) - 1, 0], np.int32)
    gamma = np.array([INT32_MAX] * 5, np.int32)
    beta = np.array([INT32_MIN, INT32_MAX, 0, 1, -1], np.int32)
    expected = reference.layer_norm(x[None], gamma, beta, eps=0)[0]
    assert {INT32_MIN, INT32_MAX} <= set(expected.tolist())
    _check(rows, _layer_norm_step(x.shape, 0), [x, gamma, beta], expected, range(5))
    constant = np.full((3,), 7, np.int32)
    expected = reference.layer_norm(constant[None], gamma[:3], beta[:3], eps=0)[0]
    _check(rows, _layer_norm_step((3,), 0), [constant, gamma[:3], beta[:3]], expected, range(3))


def test_layer_norm_reads_its_row_and_the_two_vectors(rows):
    step = _layer_norm_step((3, 4), 1)
    shapes = [[3, 4], [4], [4]]
    assert rows.functions.reads(step, shapes, 0).call() == [(0, False, 0), (1, False, 0), (2, False, 0)]
    assert rows.functions.reads(step, shapes, 7).call() == [(0, False, 1), (1, False, 0), (2, False, 0)]
    assert rows.functions.reads(step, shapes, 11).call() == [(0, False, 2), (1, False, 0), (2, False, 0)]


# --------------------------------------------------------------------------- softmax


@functools.cache
def _exp2_table(n: int) -> np.ndarray:
    """``round(2^30 * 2^(-f / n))`` for f < n (n a power of two), as the quantizer builds the
    table, in integers: fixed point at 2^-200 from the repeated square roots 2^(-1 / 2^j)."""
    one = 2**200
    roots, r = [], one // 2  # 2^(-1), 2^(-1/2), 2^(-1/4), ...
    for _ in range(n.bit_length()):
        roots.append(r)
        r = math.isqrt(r * one)
    out = []
    for f in range(n):
        v = 2**30 * one
        for j in range(n.bit_length() - 1):  # f / n = sum of the bits of f over 2^(k - j)
            if f >> j & 1:
                v = v * roots[n.bit_length() - 1 - j] // one
        out.append((v + one // 2) // one)
    return np.array(out, np.int32)


def _table(data, k):
    kind = data.draw(st.sampled_from(["exp2", "random", "edges"]), label="table kind")
    if kind == "exp2":
        return _exp2_table(2**k)
    values = st.integers(0, 2**30) if kind == "random" else st.sampled_from([0, 1, 2**29, 2**30])
    return _array(data, (2**k,), values, np.int32, "table")


def _softmax_case(data):
    lead = data.draw(st.lists(st.integers(1, 2), min_size=0, max_size=1), label="heads")
    tq = data.draw(st.integers(1, 4), label="Tq")
    tk = data.draw(st.integers(1, 6), label="Tk")
    shape = (*lead, tq, tk)
    regime = data.draw(st.sampled_from(["wide", "small", "edges", "near"]), label="x regime")
    values = st.integers(-3000, 3000) if regime == "near" else _values(regime)
    x = _array(data, shape, values, np.int32, "x")
    mask_kind = data.draw(st.sampled_from(["ones", "random", "zeros"]), label="mask kind")
    if mask_kind == "ones":
        mask = np.ones((tk,), np.int8)
    elif mask_kind == "zeros":
        mask = np.zeros((tk,), np.int8)
    else:
        mask = _array(data, (tk,), st.one_of(st.just(0), INT8S), np.int8, "mask")
    k = data.draw(st.integers(1, 8), label="k")
    table = _table(data, k)
    causal = data.draw(st.booleans(), label="causal")
    out_bits = data.draw(st.one_of(st.integers(1, 30), st.sampled_from([1, 15, 30])), label="out_bits")
    return x, mask, table, causal, out_bits


def _softmax_step(x_shape, table_len, causal, out_bits, declared=None, mask_declared=None):
    declared = declared or x_shape
    operands = [
        (VALUE, 2, 32, declared),
        (VALUE, 1, 8, mask_declared or (declared[-1],)),
        (PARAM, 0, 32, (table_len,)),
    ]
    return _step("softmax", operands, declared, [1, int(causal), 1, out_bits])


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_softmax_matches_the_reference(rows, data):
    x, mask, table, causal, out_bits = _softmax_case(data)
    expected = reference.softmax(x[None], mask[None], table, causal=causal, out_bits=out_bits)[0]
    # dynamic Tq, Tk: the descriptor declares the longest, the request is shorter
    longer_q = data.draw(st.integers(0, 3), label="longer Tq")
    longer_k = data.draw(st.integers(0, 3), label="longer Tk")
    declared = (*x.shape[:-2], x.shape[-2] + longer_q, x.shape[-1] + longer_k)
    step = _softmax_step(x.shape, len(table), causal, out_bits, declared)
    _check(rows, step, [x, mask, table], expected, _elements(x.size, data, extra=3))


def test_softmax_masked_causal_and_saturated_rows(rows):
    table = np.array([2**30, 2**29 + 12345, 2**29, 1], np.int32)
    x = np.array(
        [
            [INT32_MAX, INT32_MIN, 0, 5],  # distances past 31 whole steps: e = table[f] >> 31
            [7, 7, 7, 7],  # ties for the max
            [-5, INT32_MIN, INT32_MIN, INT32_MAX],
        ],
        np.int32,
    )
    out_bits = iter([1, 30, 15, 29, 2, 30, 30, 1])
    for mask in ([1, 1, 1, 1], [0, 1, -128, 0], [0, 0, 0, 0], [127, 0, 0, 0]):
        mask = np.array(mask, np.int8)
        for causal in (False, True):
            bits = next(out_bits)
            expected = reference.softmax(x[None], mask[None], table, causal=causal, out_bits=bits)[0]
            if not mask.any():
                assert not expected.any()
            step = _softmax_step(x.shape, len(table), causal, bits)
            _check(rows, step, [x, mask, table], expected, range(x.size))
    # Tq > Tk with causal: the first queries keep no key (all masked), the last sees them all
    x = np.arange(5 * 2, dtype=np.int32).reshape(5, 2)
    mask = np.ones((2,), np.int8)
    expected = reference.softmax(x[None], mask[None], table, causal=True, out_bits=15)[0]
    assert not expected[:3].any() and expected[4].sum() > 0
    _check(rows, _softmax_step(x.shape, 4, True, 15), [x, mask, table], expected, [0, 5, 6, 8, 9])
    # a zero table: S = 0 with kept keys gives 0
    zero = np.zeros((2,), np.int32)
    expected = reference.softmax(x[None], mask[None], zero, causal=False, out_bits=30)[0]
    assert not expected.any()
    _check(rows, _softmax_step(x.shape, 2, False, 30), [x, mask, zero], expected, [0, 9])


def test_softmax_reads_its_scores_row_the_mask_and_the_table(rows):
    step = _softmax_step((2, 3, 4), 8, True, 8)
    shapes = [[2, 3, 4], [4], [8]]
    for e, r in [(0, 0), (5, 1), (23, 5)]:
        assert rows.functions.reads(step, shapes, e).call() == [(0, False, r), (1, False, 0), (2, False, 0)]


# --------------------------------------------------------------------------- mean_pool


def _mean_pool_step(t, d, dtype=32, declared_t=None):
    declared_t = declared_t or t
    operands = [(VALUE, 3, dtype, (declared_t, d)), (VALUE, 1, 8, (declared_t,))]
    return _step("mean_pool", operands, (d,), [])


@settings(max_examples=30, deadline=None)
@given(st.data())
def test_mean_pool_matches_the_reference(rows, data):
    t = data.draw(st.integers(1, 8), label="T")
    d = data.draw(st.integers(1, 4), label="D")
    dtype = data.draw(st.sampled_from([8, 32]), label="dtype")
    if dtype == 8:
        x = _array(data, (t, d), INT8S, np.int8, "x")
    else:
        x = _array(data, (t, d), _values(_int32s_regime(data, "x regime")), np.int32, "x")
    mask_kind = data.draw(st.sampled_from(["ones", "random", "zeros", "prefix"]), label="mask kind")
    if mask_kind == "ones":
        mask = np.ones((t,), np.int8)
    elif mask_kind == "zeros":
        mask = np.zeros((t,), np.int8)
    elif mask_kind == "prefix":  # padding at the end, as a batch of shorter texts has
        mask = (np.arange(t) < data.draw(st.integers(0, t), label="kept")).astype(np.int8)
    else:
        mask = _array(data, (t,), st.one_of(st.just(0), INT8S), np.int8, "mask")
    expected = reference.mean_pool(x[None], mask[None])[0]
    step = _mean_pool_step(t, d, dtype, declared_t=t + data.draw(st.integers(0, 4), label="longer T"))
    _check(rows, step, [x, mask], expected, range(d))


def test_mean_pool_rounds_half_up_and_sums_past_int32(rows):
    x = np.array(
        [[INT32_MAX, INT32_MIN, 1, -1], [INT32_MAX, INT32_MIN, 0, -2], [INT32_MAX, INT32_MIN, 0, 0]], np.int32
    )
    for mask in ([1, 1, 1], [1, 1, 0], [0, 0, 0], [0, 0, -1]):
        mask = np.array(mask, np.int8)
        expected = reference.mean_pool(x[None], mask[None])[0]
        _check(rows, _mean_pool_step(3, 4), [x, mask], expected, range(4))
    # two kept rows: 1 / 2 rounds up to 1, -1 / 2 up to 0, -3 / 2 up to -1
    x = np.array([[1, -1, -3], [0, 0, 0]], np.int32)
    expected = reference.mean_pool(x[None], np.ones((1, 2), np.int8))[0]
    assert expected.tolist() == [1, 0, -1]
    _check(rows, _mean_pool_step(2, 3), [x, np.ones((2,), np.int8)], expected, range(3))


def test_mean_pool_reads_every_row_then_the_mask(rows):
    reads = rows.functions.reads(_mean_pool_step(3, 2, declared_t=5), [[3, 2], [3]], 1).call()
    assert reads == [(0, False, 0), (0, False, 1), (0, False, 2), (1, False, 0)]


# --------------------------------------------------------------------------- errors


def test_handles_exactly_the_family(rows):
    for op in FAMILY:
        assert rows.functions.handles(tag(op)).call()
    for op in ("matmul", "argmax", "layer_norm2", "softmax_", "mean", ""):
        assert not rows.functions.handles(tag(op)).call()


def test_other_ops_revert_unsupported_op(rows):
    step = _step("matmul", [(VALUE, 0, 8, (4,)), (PARAM, 0, 8, (4, 2))], (2,), [])
    shapes = [[4], [4, 2]]
    for call in (
        rows.functions.outputShape(step, shapes).call,
        rows.functions.reads(step, shapes, 0).call,
        rows.functions.execute(step, shapes, 0, [bytes(4), bytes(4)]).call,
    ):
        assert _reverts(call, "UnsupportedOp") == (tag("matmul"),)


def test_elements_past_the_output_revert(rows):
    cases = [
        (_layer_norm_step((2, 3), 0), [[2, 3], [3], [3]], 6),
        (_softmax_step((2, 3), 2, False, 8), [[2, 3], [3], [2]], 6),
        (_mean_pool_step(2, 3, declared_t=4), [[2, 3], [2]], 3),
    ]
    for step, shapes, size in cases:
        for element in (size, size + 1, 2**256 - 1):
            assert _reverts(rows.functions.reads(step, shapes, element).call, "ElementOutOfRange") == (
                element,
                size,
            )
            call = rows.functions.execute(step, shapes, element, [bytes(4)]).call
            assert _reverts(call, "ElementOutOfRange") == (element, size)


def test_wrong_rows_revert_bad_rows(rows):
    x = np.arange(6, dtype=np.int32).reshape(2, 3)
    gamma, beta = np.ones(3, np.int32), np.zeros(3, np.int32)
    mask3, table = np.ones(3, np.int8), np.array([2**30, 2**29], np.int32)
    cases = [
        (_layer_norm_step((2, 3), 0), [x, gamma, beta], 4),
        (_softmax_step((2, 3), 2, True, 8), [x, mask3, table], 4),
        (_mean_pool_step(2, 3), [x, np.ones(2, np.int8)], 2),
    ]
    for step, operands, element in cases:
        shapes = _shapes(operands)
        wanted = rows.functions.reads(step, shapes, element).call()
        good = read_rows(operands, wanted)
        rows.functions.execute(step, shapes, element, good).call()  # the right rows pass
        size = [step[1][k][2] // 8 for k, _, _ in wanted]  # bytes per element of each row
        bad = [
            good[:-1],
            [*good, good[-1]],
            [],
            # one element short or long, one byte short or long (an int32 row not whole)
            *([*good[:i], good[i][: -size[i]], *good[i + 1 :]] for i in range(len(good))),
            *([*good[:i], good[i] + bytes(size[i]), *good[i + 1 :]] for i in range(len(good))),
            *([*good[:i], good[i][:-1], *good[i + 1 :]] for i in range(len(good))),
            *([*good[:i], good[i] + b"\x00", *good[i + 1 :]] for i in range(len(good))),
        ]
        for wrong in bad:
            _reverts(rows.functions.execute(step, shapes, element, wrong).call, "BadRows")


def test_shapes_that_do_not_fit_revert_bad_operands(rows):
    ln = _layer_norm_step((2, 3), 0, declared=(4, 3))
    sm = _softmax_step((2, 3), 4, False, 8, declared=(4, 5))
    mp = _mean_pool_step(2, 3, declared_t=4)
    cases = [
        (ln, [[2, 3], [3], [4]]),  # beta of another length
        (ln, [[2, 3], [3, 1], [3]]),  # gamma not a vector
        (ln, [[5, 3], [3], [3]]),  # longer than declared
        (ln, [[0, 3], [3], [3]]),  # an empty axis
        (ln, [[3], [3], [3]]),  # another rank
        (ln, [[2, 3], [3]]),  # an operand short
        (_layer_norm_step((2, 8193), 0), [[2, 8193], [8193], [8193]]),  # past LAYER_NORM_MAX_AXIS
        (
            _step(
                "layer_norm", [(VALUE, 0, 32, (3,)), (VALUE, 1, 32, (3,)), (PARAM, 1, 32, (3,))], (3,), [1, 0]
            ),
            [[3], [3], [3]],
        ),
        (
            _step(
                "layer_norm", [(VALUE, 0, 8, (3,)), (PARAM, 0, 32, (3,)), (PARAM, 1, 32, (3,))], (3,), [1, 0]
            ),
            [[3], [3], [3]],
        ),
        (sm, [[2, 3], [4], [4]]),  # mask of another length
        (sm, [[2, 3], [3], [3]]),  # table length not in the descriptor
        (_softmax_step((2, 3), 3, False, 8), [[2, 3], [3], [3]]),  # table length not a power of two
        (_softmax_step((2, 3), 1, False, 8), [[2, 3], [3], [1]]),  # table of one entry
        (_softmax_step((2, 3), 2**17, False, 8), [[2, 3], [3], [2**17]]),  # table past 2^16
        (_softmax_step((3,), 2, False, 8), [[3], [3], [2]]),  # no query axis
        (mp, [[2, 3], [3]]),  # mask of another length
        (mp, [[2, 4], [2]]),  # D longer than declared
        (_step("mean_pool", [(VALUE, 3, 32, (2, 2, 3)), (VALUE, 1, 8, (2,))], (2, 3), []), [[2, 2, 3], [2]]),
        (_step("mean_pool", [(VALUE, 3, 32, (2, 3)), (PARAM, 1, 8, (2,))], (3,), []), [[2, 3], [2]]),
        (_step("mean_pool", [(VALUE, 3, 32, (2, 3)), (VALUE, 1, 32, (2,))], (3,), []), [[2, 3], [2]]),
    ]
    for step, shapes in cases:
        _reverts(rows.functions.outputShape(step, shapes).call, "BadOperands")
        _reverts(rows.functions.reads(step, shapes, 0).call, "BadOperands")


def test_attributes_out_of_range_revert_bad_attributes(rows):
    shapes_ln, shapes_sm = [[2, 3], [3], [3]], [[2, 3], [3], [2]]
    ln = _layer_norm_step((2, 3), 0)
    sm = _softmax_step((2, 3), 2, False, 8)
    for attrs in ([1, -1], [1, 2**31], [2, 0, 0], [], [1]):
        step = (*ln[:4], attrs)
        _reverts(rows.functions.outputShape(step, shapes_ln).call, "BadAttributes")
    for attrs in ([1, 2, 1, 8], [1, -1, 1, 8], [1, 0, 1, 0], [1, 0, 1, 31], [1, 0, 1], [1, 0, 2, 8, 8], []):
        step = (*sm[:4], attrs)
        _reverts(rows.functions.outputShape(step, shapes_sm).call, "BadAttributes")
    mp = _mean_pool_step(2, 3)
    _reverts(rows.functions.outputShape((*mp[:4], [0]), [[2, 3], [2]]).call, "BadAttributes")
    # the edges of the ranges pass
    assert rows.functions.outputShape((*ln[:4], [1, 2**31 - 1]), shapes_ln).call() == [2, 3]
    assert rows.functions.outputShape((*sm[:4], [1, 1, 1, 30]), shapes_sm).call() == [2, 3]
    assert rows.functions.outputShape((*sm[:4], [1, 0, 1, 1]), shapes_sm).call() == [2, 3]


# --------------------------------------------------------------------------- real descriptors


def _one_node_program(op, inputs, params, attrs, out_shape, out_dynamic=()):
    node = Node(op=op, inputs=(*(s.name for s in inputs), *params), output="y", attrs=attrs)
    return Program(
        name=f"one-{op.replace('_', '-')}",
        inputs=tuple(inputs),
        outputs=(ValueSpec(name="y", dtype="int32", shape=out_shape, dynamic=out_dynamic),),
        nodes=(node,),
        params=params,
    )


def _check_program_step(contract, program, feeds, elements=range):
    """The ``elements(size)`` of the program's node step, batch row by batch row."""
    step_index = len(program.inputs)
    step = step_struct(step_descriptor(program, step_index))
    values = step_values(program, feeds, engine="reference")
    names = sorted(program.params)
    node = program.nodes[0]
    for b in range(values[step_index].shape[0]):
        operands = [
            program.params[name]
            if name in program.params
            else values[[s.name for s in program.inputs].index(name)][b]
            for name in node.inputs
        ]
        assert [o[1] for o in step[1]] == [
            names.index(n) if n in program.params else [s.name for s in program.inputs].index(n)
            for n in node.inputs
        ]
        expected = values[step_index][b]
        _check(contract, step, operands, expected, elements(expected.size))


def test_real_descriptors_of_one_node_programs(rows):
    rng = np.random.default_rng(20)
    # layer_norm over a dynamic sequence
    ln = _one_node_program(
        "layer_norm",
        [ValueSpec(name="x", dtype="int32", shape=(4, 5), dynamic=(0,))],
        {
            "g": rng.integers(-(2**20), 2**20, 5).astype(np.int32),
            "b": rng.integers(-1000, 1000, 5).astype(np.int32),
        },
        {"eps": 3},
        (4, 5),
        (0,),
    )
    x = rng.integers(-(2**25), 2**25, (2, 3, 5)).astype(np.int32)
    _check_program_step(rows, ln, x, lambda n: [*range(0, n, 4), n - 1])
    # softmax with a causal rule, a padded mask and a shorter sequence
    t = _exp2_table(16)
    sm = _one_node_program(
        "softmax",
        [
            ValueSpec(name="s", dtype="int32", shape=(2, 6, 6), dynamic=(1, 2)),
            ValueSpec(name="m", dtype="int8", shape=(6,), dynamic=(0,)),
        ],
        {"t": t},
        {"causal": True, "out_bits": 15},
        (2, 6, 6),
        (1, 2),
    )
    scores = rng.integers(-400, 400, (2, 2, 4, 4)).astype(np.int32)
    mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0]], np.int8)
    _check_program_step(rows, sm, {"s": scores, "m": mask}, lambda n: [*range(0, n, 5), n - 1])
    # mean_pool over a shorter, padded sequence
    mp = _one_node_program(
        "mean_pool",
        [
            ValueSpec(name="x", dtype="int8", shape=(6, 3), dynamic=(0,)),
            ValueSpec(name="m", dtype="int8", shape=(6,), dynamic=(0,)),
        ],
        {},
        {},
        (3,),
    )
    xs = rng.integers(-128, 128, (3, 4, 3)).astype(np.int8)
    masks = np.array([[1, 1, 1, 1], [1, 1, 1, 0], [0, 0, 0, 0]], np.int8)
    _check_program_step(rows, mp, {"x": xs, "m": masks})


# --------------------------------------------------------------------------- gas


@pytest.mark.slow  # py-evm takes seconds per estimate at these sizes
def test_gas_at_the_zoo_largest_shapes(rows):
    """layer_norm (256, 384), softmax (12, 256, 256) with a 256-entry table and mean_pool over
    (256, 384) int32: MiniLM's. A direct call's estimate, calldata included: the packed rows
    keep layer_norm and softmax near 0.6M; mean_pool's 256 rows of 1,536 bytes cost mostly
    as calldata (as int256 rows it ran past the 30M block limit)."""
    rng = np.random.default_rng(7)
    x = rng.integers(-(2**24), 2**24, (256, 384)).astype(np.int32)
    gamma, beta = rng.integers(-(2**16), 2**16, (2, 384)).astype(np.int32)
    step = _layer_norm_step(x.shape, 0)
    shapes = _shapes([x, gamma, beta])
    element = x.size - 1
    args = (
        step,
        shapes,
        element,
        read_rows([x, gamma, beta], rows.functions.reads(step, shapes, element).call()),
    )
    assert rows.functions.execute(*args).estimate_gas() < 1_000_000
    scores = rng.integers(-(2**20), 2**20, (12, 256, 256)).astype(np.int32)
    mask = np.ones((256,), np.int8)
    table = _exp2_table(256)
    step = _softmax_step(scores.shape, 256, False, 15)
    shapes = _shapes([scores, mask, table])
    element = scores.size - 1
    wanted = rows.functions.reads(step, shapes, element).call()
    args = (step, shapes, element, read_rows([scores, mask, table], wanted))
    assert rows.functions.execute(*args).estimate_gas() < 1_000_000
    pooled = rng.integers(-(2**15), 2**15, (256, 384)).astype(np.int32)
    step = _mean_pool_step(256, 384)
    shapes = _shapes([pooled, mask])
    element = 383
    wanted = rows.functions.reads(step, shapes, element).call()
    args = (step, shapes, element, read_rows([pooled, mask], wanted))
    expected = reference.mean_pool(pooled[None], mask[None])[0, element]
    assert rows.functions.execute(*args).call() == int(expected)
    assert rows.functions.execute(*args).estimate_gas() < 6_000_000


# --------------------------------------------------------------------------- the zoo


@pytest.fixture(scope="session")
def minilm_case(built_zoo):
    """MiniLM (built once: a minute or more) and two real sentences, the second padded."""
    import json
    from pathlib import Path

    visible = json.loads((Path(__file__).parent.parent / "data" / "minilm_visible.json").read_text())
    return built_zoo("minilm-l6"), minilm_feeds(visible["input_ids"][0], visible["input_ids"][1][:-3])


def minilm_feeds(*sentences):
    length = max(len(ids) for ids in sentences)
    ids = np.zeros((len(sentences), length), np.int32)
    mask = np.zeros((len(sentences), length), np.int8)
    for b, row in enumerate(sentences):
        ids[b, : len(row)], mask[b, : len(row)] = row, 1
    return {"input_ids": ids, "attention_mask": mask}


@pytest.fixture(scope="session")
def char_gpt_case(built_zoo):
    """char-gpt (built once: it trains, many minutes) with 5 new tokens after 3 cached ones."""
    program = built_zoo("char-gpt")
    return program, char_gpt_feeds(program, new=5, cached=3)


def char_gpt_feeds(program, new, cached):
    """Two rows of ``new`` tokens after ``cached`` cache slots; row 1 has a padded cache slot and
    a padded last token, so its softmax rows mix masked keys, the causal rule and Tk > Tq."""
    rng = np.random.default_rng(3)
    specs = {spec.name: spec for spec in program.inputs}
    feeds = {
        "tokens": rng.integers(0, specs["tokens"].bounds[1] + 1, (2, new)).astype(np.int32),
        "positions": np.broadcast_to(cached + np.arange(new, dtype=np.int32), (2, new)).copy(),
        "new_mask": np.array([[1] * new, [1] * (new - 1) + [0]], np.int8),
        "past_mask": np.array([[1] * cached, [0] + [1] * (cached - 1)], np.int8),
    }
    for name, spec in specs.items():
        if name.startswith("past_") and name != "past_mask":
            heads, _, dh = spec.shape
            feeds[name] = rng.integers(-60, 61, (2, heads, cached, dh)).astype(np.int8)
    return feeds


def _check_zoo_steps(contract, program, inputs):
    """First, middle, last and the middle of the last row of every family step, each batch row,
    against the traced values (`step_values`, the JAX engine)."""
    values = step_values(program, inputs)
    first = len(program.inputs)
    names = sorted(program.params)
    checked = []
    for n, node in enumerate(program.nodes):
        if node.op not in FAMILY:
            continue
        s = first + n
        step = step_struct(step_descriptor(program, s))
        for b in range(values[s].shape[0]):
            operands = [
                values[index][b] if kind == VALUE else program.params[names[index]]
                for kind, index, _, _ in step[1]
            ]
            expected = values[s][b]
            middle_of_last_row = expected.size - 1 - expected.shape[-1] // 2
            _check(
                contract,
                step,
                operands,
                expected,
                sorted({0, expected.size // 2, middle_of_last_row, expected.size - 1}),
            )
        checked.append(node.op)
    return checked


def test_zoo_digits_have_no_row_ops(zoo):
    # digits-mlp and digits-cnn use none of this family: nothing to check there
    for program, _ in zoo.values():
        assert not {node.op for node in program.nodes} & set(FAMILY)


@pytest.mark.slow
def test_zoo_minilm_steps(rows, minilm_case):
    program, inputs = minilm_case
    checked = _check_zoo_steps(rows, program, inputs)
    assert sorted(set(checked)) == ["layer_norm", "mean_pool", "softmax"]


@pytest.mark.slow
def test_zoo_char_gpt_steps(rows, char_gpt_case):
    program, inputs = char_gpt_case
    checked = _check_zoo_steps(rows, program, inputs)
    assert {"layer_norm", "softmax"} <= set(checked)
