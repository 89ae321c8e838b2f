"""OneStepLinear (contracts/disputes/OneStepLinear.sol) against the NumPy reference, bit for bit.

Every element checked goes the way the dispute game takes it: the executor's `reads`, the rows
cut by `aivm_jax.disputes.read_rows`, then `execute`; the result must equal the reference's
output at that element. Random and edge values (int32 limits, rounding ties, saturation, sums
that wrap past 2**31), shorter dynamic shapes, every position class (first, last, the padded
borders of a convolution); the errors; and the real steps of the zoo programs.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aivm_jax import TransactionRevertedError
from aivm_jax.disputes import (
    DTYPE_CODES,
    attrs_words,
    pack_row,
    read_rows,
    step_descriptor,
    step_struct,
    step_values,
    tag,
)
from aivm_jax.ops import reference
from aivm_jax.program import Node, Program, ValueSpec

OPS = ("matmul", "batch_matmul", "conv2d", "bias_add", "requantize", "add")
VALUE, PARAM = 0, 1
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
LIMITS = {"int8": (-128, 127), "int32": (INT32_MIN, INT32_MAX)}
EDGES = {"int8": (-128, 127, 0, -1, 1), "int32": (INT32_MIN, INT32_MAX, 0, -1, 1, 2**30, -(2**30))}


@pytest.fixture(scope="module")
def linear():
    """``(chain, contract)``: OneStepLinear deployed on an embedded py-evm chain."""
    from aivm_jax.chain import Chain, artifact

    chain = Chain.embedded()
    compiled = artifact("OneStepLinear")
    address = chain.deploy(compiled["abi"], compiled["bytecode"])
    return chain, chain.w3.eth.contract(address=address, abi=compiled["abi"])


# ------------------------------------------------------------------ helpers


def _step(op, operands, out_dtype, out_shape, attrs=None):
    """A ``Step`` tuple; ``operands`` as ``(kind, index, dtype name, shape)``."""
    return (
        tag(op),
        [(kind, index, DTYPE_CODES[dtype], list(shape)) for kind, index, dtype, shape in operands],
        DTYPE_CODES[out_dtype],
        list(out_shape),
        attrs_words(attrs or {}),
    )


def _values(rng, shape, dtype, edges=0.25, low=None, high=None):
    """Random values of ``dtype`` (or in ``[low, high]``), about ``edges`` of them edge values."""
    lo, hi = LIMITS[dtype]
    lo, hi = (lo if low is None else low), (hi if high is None else high)
    out = rng.integers(lo, hi, size=shape, endpoint=True, dtype=np.int64)
    pool = np.array([v for v in (*EDGES[dtype], lo, hi) if lo <= v <= hi], np.int64)
    pick = rng.random(size=shape) < edges
    out[pick] = rng.choice(pool, size=int(pick.sum()))
    return out.astype(dtype)


def _shapes(arrays):
    return [list(a.shape) for a in arrays]


def _run(contract, step, arrays, element):
    """(execute's result, reads) for one element, the rows cut from ``arrays``."""
    shapes = _shapes(arrays)
    wanted = contract.functions.reads(step, shapes, element).call()
    rows = read_rows(arrays, wanted)
    return contract.functions.execute(step, shapes, element, rows).call(), wanted


def _check(contract, step, arrays, expected, elements):
    """The executor's output shape is ``expected``'s and each element equals it."""
    assert tuple(contract.functions.outputShape(step, _shapes(arrays)).call()) == expected.shape
    flat = expected.reshape(-1)
    for element in sorted(set(elements)):
        got, _ = _run(contract, step, arrays, element)
        assert got == int(flat[element]), (element, got, int(flat[element]))


def _positions(size, data):
    """Two elements of an output of ``size`` (each call of the executor costs ~0.1 s on py-evm):
    one of the first, the last or the middle one, and one anywhere."""
    return [data.draw(st.sampled_from([0, size - 1, size // 2])), data.draw(st.integers(0, size - 1))]


def _reverts(chain, fn, name):
    with pytest.raises(TransactionRevertedError, match=name) as info:
        chain.call(fn)
    return info.value


def _longer(shape, axis, rng_extra):
    """The descriptor's shape (dynamic ``axis`` at its longest) for an actual ``shape``."""
    out = list(shape)
    if out:
        out[axis] += rng_extra
    return out


# ------------------------------------------------------------------ matmul

dims = st.integers(1, 5)
seeds = st.integers(0, 2**32 - 1)


@settings(max_examples=30, deadline=None)
@given(lead=st.lists(dims, min_size=0, max_size=2), k=st.integers(1, 9), n=dims, seed=seeds, data=st.data())
def test_matmul_equals_the_reference(linear, lead, k, n, seed, data):
    _, contract = linear
    rng = np.random.default_rng(seed)
    x = _values(rng, (*lead, k), "int8", edges=rng.choice([0.0, 0.3, 1.0]))
    w = _values(rng, (k, n), "int8", edges=rng.choice([0.0, 0.3, 1.0]))
    expected = reference.matmul(x[None], w)[0]
    extra = data.draw(st.integers(0, 3))  # a dynamic first axis: the descriptor has it longer
    step = _step(
        "matmul",
        [(VALUE, 0, "int8", _longer(x.shape, 0, extra)), (PARAM, 0, "int8", w.shape)],
        "int32",
        _longer(expected.shape, 0, extra),
    )
    _check(contract, step, [x, w], expected, _positions(expected.size, data))


def test_matmul_extremes_and_reads(linear):
    _, contract = linear
    x = np.full((3, 8), -128, np.int8)
    x[1] = 127
    w = np.full((8, 4), -128, np.int8)
    w[:, 3] = 127
    expected = reference.matmul(x[None], w)[0]
    assert expected[0, 0] == 8 * 2**14 and expected[1, 3] == 8 * 127 * 127
    step = _step("matmul", [(VALUE, 0, "int8", [3, 8]), (PARAM, 0, "int8", [8, 4])], "int32", [3, 4])
    _check(contract, step, [x, w], expected, [0, 3, 4, 7, 11])
    _, wanted = _run(contract, step, [x, w], 7)  # (m, n) = (1, 3): x's row 1 and W's column 3
    assert [tuple(r) for r in wanted] == [(0, False, 1), (1, True, 3)]


@settings(max_examples=25, deadline=None)
@given(k=st.integers(1, 8), n=dims, seed=seeds, data=st.data())
def test_matmul_wraps_sums_past_int32(linear, k, n, seed, data):
    """Values beyond int8 (an int8 matmul wraps only for K > 2**17): the executor wraps exactly
    where the reference's int64 sum does. The descriptor declares the operands int32 (the opset
    refuses that; the executor decodes each row in its declared dtype)."""
    _, contract = linear
    rng = np.random.default_rng(seed)
    x = _values(rng, (2, k), "int32", low=-(2**24), high=2**24)
    w = _values(rng, (k, n), "int32", low=-(2**24), high=2**24)
    expected = reference.matmul(x[None], w)[0]
    step = _step("matmul", [(VALUE, 0, "int32", [2, k]), (PARAM, 0, "int32", [k, n])], "int32", [2, n])
    _check(contract, step, [x, w], expected, _positions(expected.size, data))


# ------------------------------------------------------------------ batch_matmul


@settings(max_examples=30, deadline=None)
@given(
    lead=st.lists(dims, min_size=0, max_size=2),
    m=dims,
    k=st.integers(1, 6),
    n=dims,
    dtypes=st.tuples(st.sampled_from(["int8", "int32"]), st.sampled_from(["int8", "int32"])),
    seed=seeds,
    data=st.data(),
)
def test_batch_matmul_equals_the_reference(linear, lead, m, k, n, dtypes, seed, data):
    _, contract = linear
    rng = np.random.default_rng(seed)
    a = _values(rng, (*lead, m, k), dtypes[0], edges=rng.choice([0.0, 0.3, 1.0]))
    b = _values(rng, (*lead, k, n), dtypes[1], edges=rng.choice([0.0, 0.3, 1.0]))
    expected = reference.batch_matmul(a[None], b[None])[0]
    step = _step(
        "batch_matmul",
        [(VALUE, 0, dtypes[0], a.shape), (VALUE, 1, dtypes[1], b.shape)],
        "int32",
        expected.shape,
    )
    _check(contract, step, [a, b], expected, _positions(expected.size, data))


def test_batch_matmul_wraps_and_reads_b_rows(linear):
    _, contract = linear
    a = np.full((2, 3, 4), INT32_MIN, np.int32)
    b = np.full((2, 4, 5), INT32_MIN, np.int32)
    b[1, :, 2] = INT32_MAX
    a[1, 2, 3] = -1
    expected = reference.batch_matmul(a[None], b[None])[0]
    step = _step(
        "batch_matmul", [(VALUE, 0, "int32", a.shape), (VALUE, 1, "int32", b.shape)], "int32", [2, 3, 5]
    )
    _check(contract, step, [a, b], expected, [0, 17, 27, 29])
    # (lead, m, n) = (1, 2, 2): a's row 1*3 + 2, then b's rows 1*4 + k for k < 4.
    _, wanted = _run(contract, step, [a, b], 1 * 15 + 2 * 5 + 2)
    assert [tuple(r) for r in wanted] == [(0, False, 5)] + [(1, False, 4 + i) for i in range(4)]


def test_batch_matmul_with_a_shorter_dynamic_sequence(linear):
    """Attention's ``Q K^T`` and ``P V`` at T = 3 of a longest 8: the executor uses the actual
    shapes, not the descriptor's."""
    _, contract = linear
    rng = np.random.default_rng(5)
    q = _values(rng, (2, 3, 4), "int8")
    kt = _values(rng, (2, 4, 3), "int8")
    scores = reference.batch_matmul(q[None], kt[None])[0]
    step = _step(
        "batch_matmul", [(VALUE, 0, "int8", [2, 8, 4]), (VALUE, 1, "int8", [2, 4, 8])], "int32", [2, 8, 8]
    )
    _check(contract, step, [q, kt], scores, [0, 10, 17])
    p = _values(rng, (2, 3, 3), "int32", low=0, high=2**16)
    v = _values(rng, (2, 3, 4), "int8")
    context = reference.batch_matmul(p[None], v[None])[0]
    step = _step(
        "batch_matmul", [(VALUE, 0, "int32", [2, 8, 8]), (VALUE, 1, "int8", [2, 8, 4])], "int32", [2, 8, 4]
    )
    _check(contract, step, [p, v], context, [0, 13, 23])


# ------------------------------------------------------------------ conv2d


def _conv_positions(out_shape, data):
    """Two elements: one at a corner or an edge of the output (where windows reach into the
    padding) or its centre, and one anywhere."""
    ho, wo, o = out_shape
    i = data.draw(st.sampled_from([0, ho // 2, ho - 1]))
    j = data.draw(st.sampled_from([0, wo // 2, wo - 1]))
    return [(i * wo + j) * o + data.draw(st.integers(0, o - 1)), data.draw(st.integers(0, ho * wo * o - 1))]


@st.composite
def conv_cases(draw):
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    h, w = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    c, o = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    # Pads up to the window (beyond the opset's pad < window) so that windows lying wholly in the
    # padding are exercised too.
    top, bottom = draw(st.integers(0, kh)), draw(st.integers(0, kh))
    left, right = draw(st.integers(0, kw)), draw(st.integers(0, kw))
    if h + top + bottom < kh or w + left + right < kw:
        top, left = top + kh, left + kw  # makes the window fit
    strides = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    return (h, w, c), (kh, kw, c, o), ((top, bottom), (left, right)), strides


def _conv_step(x, k, padding, strides, out_shape, dtype="int8"):
    return _step(
        "conv2d",
        [(VALUE, 0, dtype, x.shape), (PARAM, 3, dtype, k.shape)],
        "int32",
        out_shape,
        {"padding": padding, "strides": strides},
    )


@settings(max_examples=30, deadline=None)
@given(case=conv_cases(), seed=seeds, data=st.data())
def test_conv2d_equals_the_reference(linear, case, seed, data):
    _, contract = linear
    x_shape, k_shape, padding, strides = case
    rng = np.random.default_rng(seed)
    x = _values(rng, x_shape, "int8", edges=rng.choice([0.0, 0.3, 1.0]))
    k = _values(rng, k_shape, "int8", edges=rng.choice([0.0, 0.3, 1.0]))
    expected = reference.conv2d(x[None], k, strides=strides, padding=padding)[0]
    step = _conv_step(x, k, padding, strides, expected.shape)
    _check(contract, step, [x, k], expected, _conv_positions(expected.shape, data))


def test_conv2d_reads_the_receptive_field_inside_the_input(linear):
    _, contract = linear
    x = np.arange(5 * 4 * 2, dtype=np.int64).reshape(5, 4, 2).astype(np.int8)
    k = np.ones((3, 3, 2, 2), np.int8)
    padding, strides = ((1, 1), (1, 1)), (2, 1)
    expected = reference.conv2d(x[None], k, strides=strides, padding=padding)[0]
    assert expected.shape == (3, 4, 2)
    step = _conv_step(x, k, padding, strides, expected.shape)
    _check(contract, step, [x, k], expected, [0, 7, 13, 17, 23])
    # Output (0, 0), channel 1: the kernel's column 1, then input pixels (0..1) x (0..1).
    _, wanted = _run(contract, step, [x, k], 1)
    assert [tuple(r) for r in wanted] == [
        (1, True, 1),
        (0, False, 0),
        (0, False, 1),
        (0, False, 4),
        (0, False, 5),
    ]
    # Output (1, 2) (rows 1..3, columns 1..3, all inside), channel 0: nine pixel rows.
    _, wanted = _run(contract, step, [x, k], (1 * 4 + 2) * 2)
    assert [tuple(r)[2] for r in wanted[1:]] == [h * 4 + w for h in (1, 2, 3) for w in (1, 2, 3)]
    # A window wholly in the padding reads the kernel column alone and is 0.
    far = ((3, 0), (0, 0))
    shifted = reference.conv2d(x[None], k, strides=(1, 1), padding=far)[0]
    step = _conv_step(x, k, far, (1, 1), shifted.shape)
    got, wanted = _run(contract, step, [x, k], 0)
    assert got == 0 == shifted[0, 0, 0] and [tuple(r) for r in wanted] == [(1, True, 0)]


@settings(max_examples=25, deadline=None)
@given(case=conv_cases(), seed=seeds, data=st.data())
def test_conv2d_wraps_sums_past_int32(linear, case, seed, data):
    """Values beyond int8: the executor's sum wraps exactly where the reference's does (the
    descriptor declares int32 operands, as in `test_matmul_wraps_sums_past_int32`)."""
    _, contract = linear
    x_shape, k_shape, padding, strides = case
    rng = np.random.default_rng(seed)
    x = _values(rng, x_shape, "int32", low=-(2**24), high=2**24)
    k = _values(rng, k_shape, "int32", low=-(2**24), high=2**24)
    expected = reference.conv2d(x[None], k, strides=strides, padding=padding)[0]
    step = _conv_step(x, k, padding, strides, expected.shape, dtype="int32")
    _check(contract, step, [x, k], expected, _conv_positions(expected.shape, data))


# ------------------------------------------------------------------ bias_add


@settings(max_examples=25, deadline=None)
@given(lead=st.lists(dims, min_size=0, max_size=2), n=dims, seed=seeds, data=st.data())
def test_bias_add_equals_the_reference(linear, lead, n, seed, data):
    _, contract = linear
    rng = np.random.default_rng(seed)
    x = _values(rng, (*lead, n), "int32", edges=0.5)
    b = _values(rng, (n,), "int32", edges=0.5)
    expected = reference.bias_add(x[None], b)[0]
    step = _step("bias_add", [(VALUE, 0, "int32", x.shape), (PARAM, 0, "int32", b.shape)], "int32", x.shape)
    _check(contract, step, [x, b], expected, _positions(expected.size, data))


def test_bias_add_wraps_at_both_ends(linear):
    _, contract = linear
    x = np.array([[INT32_MAX, INT32_MIN, INT32_MAX, 0]], np.int32)
    b = np.array([1, -1, INT32_MAX, INT32_MIN], np.int32)
    expected = reference.bias_add(x[None], b)[0]
    assert expected.tolist() == [[INT32_MIN, INT32_MAX, -2, INT32_MIN]]
    step = _step("bias_add", [(VALUE, 0, "int32", [1, 4]), (PARAM, 0, "int32", [4])], "int32", [1, 4])
    _check(contract, step, [x, b], expected, range(4))


# ------------------------------------------------------------------ requantize and add


def _shift_values(rng, shape):
    return rng.choice(np.array([0, 1, 2, 7, 16, 31, 32, 40, 61, 62]), size=shape).astype(np.int32)


@settings(max_examples=30, deadline=None)
@given(
    lead=st.lists(dims, min_size=0, max_size=2),
    n=dims,
    per_channel=st.booleans(),
    out_dtype=st.sampled_from(["int8", "int32"]),
    ties=st.booleans(),
    seed=seeds,
    data=st.data(),
)
def test_requantize_equals_the_reference(linear, lead, n, per_channel, out_dtype, ties, seed, data):
    _, contract = linear
    rng = np.random.default_rng(seed)
    x_shape = (*lead, n)
    p_shape = (n,) if per_channel else ()
    if ties:  # x * M = +-(q * 2**s + 2**(s-1)): exactly half way, both signs
        s = rng.integers(1, 9, size=p_shape).astype(np.int32)
        m = rng.choice(np.array([1, -1], np.int32), size=p_shape).astype(np.int32)
        q = rng.integers(-1000, 1000, size=x_shape)
        x = ((q * 2**s + 2 ** (s - 1)) * m).astype(np.int32)
    else:
        s = _shift_values(rng, p_shape)
        m = _values(rng, p_shape, "int32", edges=0.3)
        x = _values(rng, x_shape, "int32", edges=0.3)
    expected = reference.requantize(x[None], m, s, out_dtype=out_dtype)[0]
    step = _step(
        "requantize",
        [(VALUE, 2, "int32", x.shape), (PARAM, 0, "int32", p_shape), (PARAM, 1, "int32", p_shape)],
        out_dtype,
        x.shape,
        {"out_dtype": out_dtype},
    )
    _check(contract, step, [x, m, s], expected, _positions(expected.size, data))


REQUANTIZE_EDGES = [
    # (x, multiplier, shift, out_dtype, result)
    (-5, 1, 1, "int8", -2),  # -2.5 -> -2: half up
    (5, 1, 1, "int8", 3),  # 2.5 -> 3
    (3, 1, 1, "int8", 2),  # 1.5 -> 2
    (-3, 1, 1, "int8", -1),  # -1.5 -> -1
    (-7, 1, 2, "int32", -2),  # -1.75 -> -2
    (INT32_MAX, 1, 1, "int8", 127),  # saturates high
    (INT32_MIN, 1, 0, "int8", -128),  # saturates low, s = 0: no rounding term
    (INT32_MIN, INT32_MIN, 62, "int32", 1),  # 2**62 / 2**62, the largest product
    (INT32_MIN, INT32_MIN, 0, "int32", INT32_MAX),  # 2**62 saturates to int32
    (INT32_MIN, INT32_MAX, 0, "int32", INT32_MIN),
    (INT32_MIN, INT32_MAX, 62, "int32", -1),  # -(2**62 - 2**31) / 2**62 = -0.99999... -> -1
    (INT32_MAX, INT32_MAX, 61, "int32", 2),  # (2**31 - 1)**2 / 2**61 = 1.99... -> 2
    (-(2**30), 1, 31, "int8", 0),  # -0.5 -> 0
    (-(2**30) - 1, 1, 31, "int8", -1),
    (0, INT32_MIN, 62, "int8", 0),
]


@pytest.mark.parametrize("x, m, s, out_dtype, result", REQUANTIZE_EDGES)
def test_requantize_edges(linear, x, m, s, out_dtype, result):
    _, contract = linear
    xs, ms, ss = np.array([[x]], np.int32), np.array(m, np.int32), np.array(s, np.int32)
    expected = reference.requantize(xs[None], ms, ss, out_dtype=out_dtype)[0]
    assert int(expected[0, 0]) == result  # the table above is the reference's reading
    step = _step(
        "requantize",
        [(VALUE, 0, "int32", [1, 1]), (PARAM, 0, "int32", []), (PARAM, 1, "int32", [])],
        out_dtype,
        [1, 1],
        {"out_dtype": out_dtype},
    )
    _check(contract, step, [xs, ms, ss], expected, [0])


def test_requantize_of_a_scalar_row(linear):
    """A row of shape () (per-tensor parameters only): one row of one element."""
    _, contract = linear
    x, m, s = np.array(-301, np.int32), np.array(3, np.int32), np.array(4, np.int32)
    expected = reference.requantize(x[None], m, s, out_dtype="int8")[0]
    step = _step(
        "requantize",
        [(VALUE, 0, "int32", []), (PARAM, 0, "int32", []), (PARAM, 1, "int32", [])],
        "int8",
        [],
        {"out_dtype": "int8"},
    )
    _check(contract, step, [x, m, s], expected, [0])
    assert int(expected) == -56  # -903 / 16 = -56.4375


@settings(max_examples=30, deadline=None)
@given(
    lead=st.lists(dims, min_size=0, max_size=2),
    n=dims,
    per_channel=st.tuples(st.booleans(), st.booleans(), st.booleans()),
    dtypes=st.tuples(st.sampled_from(["int8", "int32"]), st.sampled_from(["int8", "int32"])),
    out_dtype=st.sampled_from(["int8", "int32"]),
    ties=st.booleans(),
    seed=seeds,
    data=st.data(),
)
def test_add_equals_the_reference(linear, lead, n, per_channel, dtypes, out_dtype, ties, seed, data):
    _, contract = linear
    rng = np.random.default_rng(seed)
    shape = (*lead, n)
    mx_shape, my_shape, s_shape = (((n,) if flag else ()) for flag in per_channel)
    x = _values(rng, shape, dtypes[0], edges=0.3)
    y = _values(rng, shape, dtypes[1], edges=0.3)
    if ties:  # Mx = 1, My = 0 and x = q * 2**s + 2**(s-1): half way; y must not count
        mx, my = np.ones(mx_shape, np.int32), np.zeros(my_shape, np.int32)
        s = rng.integers(1, 7, size=s_shape).astype(np.int32)
        x = (rng.integers(-(2**7), 2**7, size=shape) * 2**s + 2 ** (s - 1)).astype(np.int32)
        x = x if dtypes[0] == "int32" else np.clip(x, -128, 127).astype(np.int8)
    else:
        mx = _values(rng, mx_shape, "int32", edges=0.3, low=-(2**30), high=2**30)
        my = _values(rng, my_shape, "int32", edges=0.3, low=-(2**30), high=2**30)
        s = _shift_values(rng, s_shape)
    expected = reference.add(x[None], y[None], mx, my, s, out_dtype=out_dtype)[0]
    step = _step(
        "add",
        [
            (VALUE, 1, dtypes[0], shape),
            (VALUE, 4, dtypes[1], shape),
            (PARAM, 0, "int32", mx_shape),
            (PARAM, 1, "int32", my_shape),
            (PARAM, 2, "int32", s_shape),
        ],
        out_dtype,
        shape,
        {"out_dtype": out_dtype},
    )
    _check(contract, step, [x, y, mx, my, s], expected, _positions(expected.size, data))


def test_add_extremes(linear):
    """The largest products (2**31 * 2**30 twice), ties of both signs, saturation."""
    _, contract = linear
    x = np.array([[INT32_MIN, INT32_MAX, -3, 3, INT32_MIN, 5]], np.int32)
    y = np.array([[INT32_MIN, INT32_MAX, 0, 0, INT32_MIN, -5]], np.int32)
    mx = np.array([-(2**30), 2**30, 1, 1, 2**30, 1], np.int32)
    my = np.array([-(2**30), 2**30, 7, 7, 2**30, 1], np.int32)
    s = np.array([62, 62, 1, 1, 0, 0], np.int32)
    for out_dtype in ("int8", "int32"):
        expected = reference.add(x[None], y[None], mx, my, s, out_dtype=out_dtype)[0]
        step = _step(
            "add",
            [
                (VALUE, 0, "int32", [1, 6]),
                (VALUE, 1, "int32", [1, 6]),
                (PARAM, 0, "int32", [6]),
                (PARAM, 1, "int32", [6]),
                (PARAM, 2, "int32", [6]),
            ],
            out_dtype,
            [1, 6],
            {"out_dtype": out_dtype},
        )
        _check(contract, step, [x, y, mx, my, s], expected, range(6))
    assert expected.tolist() == [[1, 1, -1, 2, INT32_MIN, 0]]


# ------------------------------------------------------------------ a program's own descriptors


@functools.cache
def _tiny_program() -> Program:
    """Every op of the family on inputs with a dynamic axis T <= 5."""
    rng = np.random.default_rng(11)
    params = {
        "w": _values(rng, (4, 3), "int8"),
        "b": _values(rng, (3,), "int32"),
        "m": _values(rng, (3,), "int32", low=2**10, high=2**20),
        "sh": np.full((3,), 12, np.int32),
        "mx": np.array(2**20, np.int32),
        "my": _values(rng, (3,), "int32", low=-(2**20), high=2**20),
        "s2": np.array(21, np.int32),
        "k": _values(rng, (3, 2, 2, 4), "int8"),
    }
    nodes = (
        Node(op="matmul", inputs=("x", "w"), output="acc"),
        Node(op="bias_add", inputs=("acc", "b"), output="sum"),
        Node(op="requantize", inputs=("sum", "m", "sh"), output="x8", attrs={"out_dtype": "int8"}),
        Node(op="add", inputs=("x8", "sum", "mx", "my", "s2"), output="res", attrs={"out_dtype": "int32"}),
        Node(op="batch_matmul", inputs=("q", "kt"), output="scores"),
        Node(
            op="conv2d",
            inputs=("img", "k"),
            output="maps",
            attrs={"strides": (2, 1), "padding": ((1, 1), (0, 1))},
        ),
    )
    return Program(
        name="linear-family",
        inputs=(
            ValueSpec(name="x", dtype="int8", shape=(5, 4), dynamic=(0,)),
            ValueSpec(name="q", dtype="int8", shape=(2, 5, 3), dynamic=(1,)),
            ValueSpec(name="kt", dtype="int8", shape=(2, 3, 5), dynamic=(2,)),
            ValueSpec(name="img", dtype="int8", shape=(5, 4, 2), dynamic=(0,)),
        ),
        outputs=(
            ValueSpec(name="res", dtype="int32", shape=(5, 3), dynamic=(0,)),
            ValueSpec(name="scores", dtype="int32", shape=(2, 5, 5), dynamic=(1, 2)),
            ValueSpec(name="maps", dtype="int32", shape=(3, 4, 4), dynamic=(0,)),
        ),
        nodes=nodes,
        params=params,
    )


def _operands(program, values, step, row):
    """A step's operand arrays for batch row ``row``, as its descriptor names them."""
    names = sorted(program.params)
    return [
        values[index][row] if kind == VALUE else program.params[names[index]] for kind, index, _, _ in step[1]
    ]


def _check_step(contract, program, values, s, row, elements):
    step = step_struct(step_descriptor(program, s))
    _check(contract, step, _operands(program, values, step, row), values[s][row], elements)


def test_the_steps_of_a_program_at_a_shorter_length(linear):
    """The real descriptors (dynamic axes at their longest) with values at T = 3."""
    _, contract = linear
    program = _tiny_program()
    rng = np.random.default_rng(12)
    feeds = {
        "x": _values(rng, (2, 3, 4), "int8"),
        "q": _values(rng, (2, 2, 3, 3), "int8"),
        "kt": _values(rng, (2, 2, 3, 3), "int8"),
        "img": _values(rng, (2, 3, 4, 2), "int8"),
    }
    values = step_values(program, feeds, engine="reference")
    first = len(program.inputs)
    for s in range(first, first + len(program.nodes)):
        size = values[s][1].size
        _check_step(contract, program, values, s, 1, [0, size // 2, size - 1])
        # The descriptor keeps the longest shape, the executor follows the actual one.
        step = step_struct(step_descriptor(program, s))
        assert tuple(step[3]) == program.value_shape(program.nodes[s - first].output)
        assert math.prod(step[3]) > size


def test_the_helper_builds_the_descriptor_of_a_step(linear):
    """`_step` (used above) encodes what `step_descriptor` does."""
    program = _tiny_program()
    names = sorted(program.params)
    first = len(program.inputs)
    steps = {spec.name: i for i, spec in enumerate(program.inputs)}
    steps.update({node.output: first + n for n, node in enumerate(program.nodes)})
    dtypes = {spec.name: spec.dtype for spec in program.inputs}
    for n, node in enumerate(program.nodes):
        operands = []
        for name in node.inputs:
            if name in program.params:
                array = program.params[name]
                operands.append((PARAM, names.index(name), array.dtype.name, array.shape))
            else:
                operands.append((VALUE, steps[name], dtypes[name], program.value_shape(name)))
        out_dtype = {"x8": "int8"}.get(node.output, "int32")
        dtypes[node.output] = out_dtype
        built = _step(node.op, operands, out_dtype, program.value_shape(node.output), node.attrs)
        assert built == step_struct(step_descriptor(program, first + n))


# ------------------------------------------------------------------ errors


def _small_cases():
    """op -> (step, arrays, element): one valid element of each op."""
    rng = np.random.default_rng(3)
    x8, w = _values(rng, (2, 3), "int8"), _values(rng, (3, 2), "int8")
    x32, b = _values(rng, (2, 3), "int32"), _values(rng, (3,), "int32")
    m, s = _values(rng, (3,), "int32"), np.full((3,), 5, np.int32)
    a, bb = _values(rng, (2, 2, 3), "int8"), _values(rng, (2, 3, 2), "int8")
    img, k = _values(rng, (3, 3, 2), "int8"), _values(rng, (2, 2, 2, 2), "int8")
    p = [(PARAM, i, "int32", [3]) for i in range(3)]
    conv_attrs = {"padding": ((1, 0), (1, 0)), "strides": (1, 1)}
    return {
        "matmul": (
            _step("matmul", [(VALUE, 0, "int8", [2, 3]), (PARAM, 0, "int8", [3, 2])], "int32", [2, 2]),
            [x8, w],
        ),
        "batch_matmul": (
            _step(
                "batch_matmul",
                [(VALUE, 0, "int8", [2, 2, 3]), (VALUE, 1, "int8", [2, 3, 2])],
                "int32",
                [2, 2, 2],
            ),
            [a, bb],
        ),
        "conv2d": (
            _step(
                "conv2d",
                [(VALUE, 0, "int8", [3, 3, 2]), (PARAM, 0, "int8", [2, 2, 2, 2])],
                "int32",
                [3, 3, 2],
                conv_attrs,
            ),
            [img, k],
        ),
        "bias_add": (
            _step("bias_add", [(VALUE, 0, "int32", [2, 3]), (PARAM, 0, "int32", [3])], "int32", [2, 3]),
            [x32, b],
        ),
        "requantize": (
            _step("requantize", [(VALUE, 0, "int32", [2, 3]), *p[:2]], "int8", [2, 3], {"out_dtype": "int8"}),
            [x32, m, s],
        ),
        "add": (
            _step(
                "add",
                [(VALUE, 0, "int32", [2, 3]), (VALUE, 1, "int32", [2, 3]), *p],
                "int8",
                [2, 3],
                {"out_dtype": "int8"},
            ),
            [x32, x32, m, m, s],
        ),
    }


@pytest.mark.parametrize("op", OPS)
def test_wrong_rows_revert_bad_rows(linear, op):
    chain, contract = linear
    step, arrays = _small_cases()[op]
    shapes = _shapes(arrays)
    size = math.prod(contract.functions.outputShape(step, shapes).call())
    element = size - 1
    wanted = contract.functions.reads(step, shapes, element).call()
    rows = read_rows(arrays, wanted)
    ok = contract.functions.execute(step, shapes, element, rows).call()
    assert isinstance(ok, int)
    size = [step[1][k][2] // 8 for k, _, _ in wanted]  # bytes per element of each row
    wrong = [
        rows[:-1],  # one row short
        [*rows, rows[-1]],  # one row too many
        [rows[0][: -size[0]], *rows[1:]],  # the first row one element short
        [rows[0], rows[1] + bytes(size[1]), *rows[2:]],  # the second row one element long
        [*rows[:-1], rows[-1][: -size[-1]]],  # the last row one element short
        [rows[0] + b"\x01", *rows[1:]],  # a byte more: not a whole int32 element (an int8 one more)
        [*rows[:-1], rows[-1][:-1]],  # a byte less
    ]
    for bad in wrong:
        _reverts(chain, contract.functions.execute(step, shapes, element, bad), "BadRows")


@pytest.mark.parametrize("op", OPS)
def test_an_element_past_the_output_reverts(linear, op):
    chain, contract = linear
    step, arrays = _small_cases()[op]
    shapes = _shapes(arrays)
    size = math.prod(contract.functions.outputShape(step, shapes).call())
    rows = read_rows(arrays, contract.functions.reads(step, shapes, size - 1).call())
    for element in (size, size + 1, 2**256 - 1):
        error = _reverts(chain, contract.functions.reads(step, shapes, element), "ElementOutOfRange")
        assert (error.error_name, error.error_args) == ("ElementOutOfRange", (element, size))
        _reverts(chain, contract.functions.execute(step, shapes, element, rows), "ElementOutOfRange")


def test_handles_exactly_the_family(linear):
    from aivm_jax.ops import OPSET

    chain, contract = linear
    assert set(OPS) <= set(OPSET)
    for op in [*OPSET, "", "matmu", "matmul2", "Matmul"]:
        assert contract.functions.handles(tag(op)).call() == (op in OPS), op


@pytest.mark.parametrize("op", ["relu", "layer_norm", "softmax", "nope"])
def test_other_ops_revert_unsupported_op(linear, op):
    chain, contract = linear
    step, arrays = _small_cases()["matmul"]
    step = (tag(op), *step[1:])
    shapes = _shapes(arrays)
    for fn in (
        contract.functions.outputShape(step, shapes),
        contract.functions.reads(step, shapes, 0),
        contract.functions.execute(step, shapes, 0, read_rows(arrays, [(0, False, 0), (1, True, 0)])),
    ):
        error = _reverts(chain, fn, "UnsupportedOp")
        assert error.error_args == (tag(op),)


def _with(step, *, operands=None, attrs=None):
    op, ops, dtype, shape, words = step
    return (op, ops if operands is None else operands, dtype, shape, words if attrs is None else attrs)


def test_shapes_that_do_not_fit_revert_bad_operands(linear):
    chain, contract = linear
    cases = _small_cases()

    def refused(op, shapes, step=None):
        _reverts(chain, contract.functions.outputShape(step or cases[op][0], shapes), "BadOperands")

    refused("matmul", [[2, 4], [3, 2]])  # K differs
    refused("matmul", [[2, 3], [3, 2, 1]])  # a kernel of rank 3
    refused("matmul", [[], [3, 2]])  # no axis to contract
    refused("matmul", [[2, 3]])  # one operand
    refused("matmul", [[0, 3], [3, 2]])  # an empty axis
    refused("matmul", [[2**32, 3], [3, 2]])  # an axis over 2**32 - 1
    refused("matmul", [[1] * 9 + [3], [3, 2]])  # rank over 8
    step = cases["matmul"][0]
    refused("matmul", [[2, 3], [3, 2]], _with(step, operands=[step[1][0], step[1][0]]))  # W a value
    refused("batch_matmul", [[2, 2, 3], [3, 3, 2]])  # leading axes differ
    refused("batch_matmul", [[2, 2, 3], [2, 2, 2]])  # K differs
    refused("batch_matmul", [[2, 2, 3], [2, 3, 2, 1]])  # ranks differ
    refused("batch_matmul", [[3], [3]])  # rank 1
    refused("conv2d", [[3, 3, 3], [2, 2, 2, 2]])  # channels differ
    refused("conv2d", [[3, 3], [2, 2, 2, 2]])
    refused("conv2d", [[1, 3, 2], [3, 2, 2, 2]])  # the window is larger than the padded input
    refused("bias_add", [[2, 3], [4]])
    refused("bias_add", [[2, 3], [1, 3]])
    refused("requantize", [[2, 3], [3], [1]])  # multiplier and shift differ
    refused("requantize", [[2, 3], [2], [2]])  # per channel over the wrong axis
    refused("requantize", [[], [1], [1]])  # per channel without an axis
    refused("add", [[2, 3], [3, 2], [3], [3], [3]])  # x and y differ
    refused("add", [[2, 3], [2, 3], [3], [2], [3]])


def test_bad_attributes_and_shifts(linear):
    chain, contract = linear
    cases = _small_cases()
    step, arrays = cases["requantize"]
    shapes = _shapes(arrays)
    for words in ([1, 16], [], [2, 8, 8], [-1]):
        _reverts(chain, contract.functions.outputShape(_with(step, attrs=words), shapes), "BadAttributes")
    step, arrays = cases["conv2d"]
    shapes = _shapes(arrays)
    for words in (
        [4, 1, 0, 1, 0, 2, 0, 1],
        [4, -1, 0, 1, 0, 2, 1, 1],
        [3, 1, 0, 1, 2, 1, 1],
        [4, 1, 0, 1, 0],
    ):
        _reverts(chain, contract.functions.outputShape(_with(step, attrs=words), shapes), "BadAttributes")
    for op, shift_at in (("requantize", 2), ("add", 4)):
        step, arrays = cases[op]
        shapes = _shapes(arrays)
        rows = read_rows(arrays, contract.functions.reads(step, shapes, 0).call())
        for shift in (-1, 63, INT32_MAX):
            bad = list(rows)
            bad[shift_at] = pack_row([shift], "int32") + rows[shift_at][4:]
            error = _reverts(chain, contract.functions.execute(step, shapes, 0, bad), "ShiftOutOfRange")
            assert error.error_args == (shift,)


# ------------------------------------------------------------------ the zoo


def _zoo_steps(contract, program, values, row):
    """Each step of the family in ``program`` with a new (op, operand shapes, attributes): its
    first, middle, last and one random element equal the traced value. Returns the ops seen."""
    first = len(program.inputs)
    steps = {spec.name: i for i, spec in enumerate(program.inputs)}
    steps.update({node.output: first + n for n, node in enumerate(program.nodes)})
    rng = np.random.default_rng(7)
    seen = set()
    for n, node in enumerate(program.nodes):
        shapes = tuple(
            program.params[name].shape if name in program.params else values[steps[name]][row].shape
            for name in node.inputs
        )
        signature = (node.op, shapes, repr(node.attrs))
        if node.op not in OPS or signature in seen:
            continue
        seen.add(signature)
        s = first + n
        step = step_struct(step_descriptor(program, s))  # builds every descriptor: ~1 s for MiniLM
        arrays = _operands(program, values, step, row)
        size = values[s][row].size
        _check(contract, step, arrays, values[s][row], [0, size // 2, size - 1, int(rng.integers(size))])
    return {op for op, _, _ in seen}


@pytest.mark.parametrize(
    "name, ops",
    [
        ("digits-mlp", {"matmul", "bias_add", "requantize"}),
        ("digits-cnn", {"matmul", "conv2d", "bias_add", "requantize"}),
    ],
)
def test_the_digits_steps(linear, zoo, name, ops):
    _, contract = linear
    program, inputs = zoo[name]
    values = step_values(program, inputs[:3])
    assert _zoo_steps(contract, program, values, 2) == ops


@pytest.fixture(scope="session")
def minilm_program(built_zoo):
    return built_zoo("minilm-l6")


@pytest.fixture(scope="session")
def char_gpt_program(built_zoo):
    return built_zoo("char-gpt")


# The transformers' steps come from the reference engine: the JAX engine's all-intermediates
# function takes minutes to compile for MiniLM, and tests/disputes/test_trace.py holds the two
# engines bit-identical.


@pytest.mark.slow  # py-evm takes seconds at this size
def test_gas_of_minilm_ffn_matmul(linear):
    """MiniLM's FFN down projection, K = 1536: two packed int8 rows of 1,536 bytes (as int256
    words the call cost 1.2M gas)."""
    _, contract = linear
    rng = np.random.default_rng(12)
    x = _values(rng, (256, 1536), "int8")
    w = _values(rng, (1536, 384), "int8")
    step = _step(
        "matmul", [(VALUE, 0, "int8", [256, 1536]), (PARAM, 0, "int8", [1536, 384])], "int32", [256, 384]
    )
    element = 256 * 384 - 1
    got, wanted = _run(contract, step, [x, w], element)
    assert got == int(reference.matmul(x[None], w)[0].reshape(-1)[element])
    rows = read_rows([x, w], wanted)
    assert contract.functions.execute(step, _shapes([x, w]), element, rows).estimate_gas() < 600_000


@pytest.mark.slow
def test_the_minilm_steps(linear, minilm_program):
    """12 tokens of 256, the second row with its last four masked."""
    _, contract = linear
    rng = np.random.default_rng(8)
    ids = rng.integers(0, 30522, (2, 12)).astype(np.int32)
    mask = np.ones((2, 12), np.int8)
    mask[1, 8:] = 0
    values = step_values(minilm_program, {"input_ids": ids, "attention_mask": mask}, engine="reference")
    assert _zoo_steps(contract, minilm_program, values, 1) == {
        "add",
        "bias_add",
        "requantize",
        "matmul",
        "batch_matmul",
    }


@pytest.mark.slow
def test_the_char_gpt_steps(linear, char_gpt_program):
    """6 new tokens (the second row's last two masked) after 4 cached ones (its first masked)."""
    _, contract = linear
    rng = np.random.default_rng(9)
    new, past = 6, 4
    feeds = {
        "tokens": rng.integers(0, 94, (2, new)).astype(np.int32),
        "positions": np.tile(np.arange(past, past + new, dtype=np.int32), (2, 1)),
        "new_mask": np.array([[1] * new, [1] * (new - 2) + [0, 0]], np.int8),
        "past_mask": np.array([[1] * past, [0] + [1] * (past - 1)], np.int8),
    }
    for layer in range(2):
        for kv in ("k", "v"):
            feeds[f"past_{kv}.{layer}"] = _values(rng, (2, 4, past, 32), "int8")
    values = step_values(char_gpt_program, feeds, engine="reference")
    assert _zoo_steps(contract, char_gpt_program, values, 1) == {
        "add",
        "bias_add",
        "requantize",
        "matmul",
        "batch_matmul",
    }
