"""OneStepElementwise (contracts/disputes/OneStepElementwise.sol) against the NumPy reference.

For every element checked: ``reads`` names the rows, `read_rows` cuts them from the operands
as the game cuts them from proven slices, ``execute`` recomputes the element on py-evm, and
the value must equal `aivm_jax.ops.reference`'s output at that element bit for bit.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aivm_jax import TransactionRevertedError
from aivm_jax.chain._connect import chain_error
from aivm_jax.conformance import DATA_DIR
from aivm_jax.disputes import (
    DTYPE_CODES,
    OPERAND_PARAM,
    OPERAND_VALUE,
    attrs_words,
    pack_row,
    read_rows,
    step_descriptor,
    step_struct,
    step_values,
    tag,
)
from aivm_jax.ops import reference
from aivm_jax.program import Node, Program, ValueSpec, load

FAMILY = (
    "relu",
    "table",
    "gather",
    "iota",
    "argmax",
    "max_pool",
    "avg_pool",
    "reshape",
    "flatten",
    "transpose",
    "concat",
)
VALUE, PARAM = OPERAND_VALUE, OPERAND_PARAM
I8, I32 = np.iinfo(np.int8), np.iinfo(np.int32)


class Executor:
    """The deployed contract: each function an ``eth_call`` from the chain's account; a revert
    raises `TransactionRevertedError` naming the contract's error."""

    def __init__(self, chain, contract):
        self.chain, self.contract = chain, contract

    def __getattr__(self, name):
        fn = getattr(self.contract.functions, name)

        def call(*args):
            try:
                return fn(*args).call({"from": self.chain.address})
            except Exception as error:  # noqa: BLE001 - sorted as Chain.call sorts them
                raise chain_error(error, name) from None

        return call


@pytest.fixture(scope="module")
def ex():
    from aivm_jax.chain import Chain, artifact

    chain = Chain.embedded()
    compiled = artifact("OneStepElementwise")
    address = chain.deploy(compiled["abi"], compiled["bytecode"])
    return Executor(chain, chain.w3.eth.contract(address=address, abi=compiled["abi"]))


# ------------------------------------------------------------------ helpers


def _step(op, operands, kinds, attrs, longest=None):
    """The ``Step`` tuple of ``op`` on these operands (a value's batch row, or a parameter), as
    `step_descriptor` writes it: value operands at their ``longest`` row shapes (default: as
    given), the output's longest row shape from the reference on zeros of those shapes."""
    longest = [tuple(s) for s in (longest or [np.shape(a) for a in operands])]
    zeros = [np.zeros((1, *s), a.dtype) if k == VALUE else a for a, k, s in zip(operands, kinds, longest)]
    out = getattr(reference, op)(*zeros, **attrs)
    descs = [
        (k, (5 + i) if k == VALUE else i, DTYPE_CODES[a.dtype.name], list(s))
        for i, (a, k, s) in enumerate(zip(operands, kinds, longest))
    ]
    return (tag(op), descs, DTYPE_CODES[out.dtype.name], list(out.shape[1:]), attrs_words(attrs))


def _expected(op, operands, kinds, attrs):
    """The reference's output row (batch of one)."""
    batched = [a[None] if k == VALUE else a for a, k in zip(operands, kinds)]
    return getattr(reference, op)(*batched, **attrs)[0]


def _one(ex, step, operands, shapes, element):
    """(reads, execute's value) of one element."""
    plan = ex.reads(step, shapes, element)
    rows = read_rows(operands, plan)
    return plan, ex.execute(step, shapes, element, rows)


def _check(ex, step, operands, expected, elements):
    """outputShape is the reference's row shape; each element equals the reference's. Returns
    the reads of each element."""
    shapes = [list(np.shape(a)) for a in operands]
    assert ex.outputShape(step, shapes) == list(expected.shape)
    flat = expected.reshape(-1)
    plans = {}
    for e in elements:
        plan, got = _one(ex, step, operands, shapes, e)
        assert got == int(flat[e]), f"element {e}: contract {got}, reference {int(flat[e])}, reads {plan}"
        plans[e] = plan
    return plans


def _elements(size, seed, extra=(), count=2):
    """Every element of a small output; else the first, last, middle, ``extra`` and ``count``
    random ones."""
    if size <= 6:
        return list(range(size))
    rng = np.random.default_rng(seed)
    return sorted({0, size - 1, size // 2, *extra, *rng.integers(0, size, count).tolist()})


def _values(draw, shape, dtype, narrow=False):
    """Values of ``shape`` biased to the dtype's limits and small neighbours; ``narrow`` draws
    from a handful of values (ties)."""
    info = np.iinfo(dtype)
    edges = [int(info.min), int(info.max), 0, 1, -1, int(info.min) + 1, int(info.max) - 1]
    if narrow:
        element = st.sampled_from([int(info.min), -1, 0, 2, int(info.max)])
    else:
        element = st.one_of(st.sampled_from(edges), st.integers(int(info.min), int(info.max)))
    n = math.prod(shape)
    return np.array(draw(st.lists(element, min_size=n, max_size=n)), dtype).reshape(shape)


def _run(ex, op, operands, kinds, attrs, longest=None, seed=0, extra=()):
    step = _step(op, operands, kinds, attrs, longest)
    expected = _expected(op, operands, kinds, attrs)
    return _check(ex, step, operands, expected, _elements(expected.size, seed, extra)), expected


shapes_st = st.lists(st.integers(1, 4), min_size=0, max_size=3).map(tuple)
dtypes_st = st.sampled_from([np.int8, np.int32])


def _longer(draw, shape, dynamic=True):
    """A descriptor shape: each axis as long or (if ``dynamic``) up to 2 longer."""
    if not dynamic:
        return shape
    return tuple(d + draw(st.integers(0, 2)) for d in shape)


def _seed(data):
    return data.draw(st.integers(0, 2**32 - 1), label="seed of the elements checked")


def reverts(name):
    return pytest.raises(TransactionRevertedError, match=rf"\b{name}\b")


# ------------------------------------------------------------------ ops against the reference


@settings(max_examples=30, deadline=None)
@given(st.data(), shapes_st, dtypes_st)
def test_relu(ex, data, shape, dtype):
    x = _values(data.draw, shape, dtype)
    longest = _longer(data.draw, shape)
    plans, _ = _run(ex, "relu", [x], [VALUE], {}, [longest], seed=_seed(data))
    d = shape[-1] if shape else 1
    for e, plan in plans.items():
        assert plan == [(0, False, e // d)]  # the one row holding the element


@settings(max_examples=25, deadline=None)
@given(st.data(), shapes_st, dtypes_st)
def test_table(ex, data, shape, out_dtype):
    x = _values(data.draw, shape, np.int8)
    x.reshape(-1)[:2] = [-128, 127][: x.size]  # the first and last entries
    info = np.iinfo(out_dtype)
    values = np.random.default_rng(data.draw(st.integers(0, 2**16))).integers(
        info.min, info.max, 256, endpoint=True
    )
    values = values.astype(out_dtype)
    values[[0, 1, 127, 128, 255]] = [info.min, info.max, -1, 0, info.max]
    plans, _ = _run(
        ex, "table", [x, values], [VALUE, PARAM], {}, [_longer(data.draw, shape), (256,)], seed=_seed(data)
    )
    for plan in plans.values():
        assert len(plan) == 2 and plan[1] == (1, False, 0)


@settings(max_examples=30, deadline=None)
@given(st.data(), shapes_st, dtypes_st, st.integers(1, 9), st.integers(1, 4))
def test_gather_clamps_ids(ex, data, shape, dtype, v, d):
    ids = np.array(
        data.draw(
            st.lists(
                st.one_of(
                    st.integers(0, v - 1),
                    st.sampled_from([int(I32.min), -1, v, v + 1, int(I32.max)]),
                ),
                min_size=math.prod(shape),
                max_size=math.prod(shape),
            )
        ),
        np.int32,
    ).reshape(shape)
    table = _values(data.draw, (v, d), dtype)
    plans, _ = _run(
        ex, "gather", [ids, table], [VALUE, PARAM], {}, [_longer(data.draw, shape), (v, d)], seed=_seed(data)
    )
    for e, plan in plans.items():
        assert len(plan) == 2 and plan[1] == (1, True, e % d)  # column d of the table


@settings(max_examples=25, deadline=None)
@given(st.data(), shapes_st.filter(lambda s: len(s) >= 1), dtypes_st)
def test_iota_reads_nothing(ex, data, shape, dtype):
    x = _values(data.draw, shape, dtype)
    plans, _ = _run(ex, "iota", [x], [VALUE], {}, [_longer(data.draw, shape)], seed=_seed(data))
    assert all(plan == [] for plan in plans.values())


@settings(max_examples=40, deadline=None)
@given(st.data(), st.lists(st.integers(1, 4), min_size=1, max_size=4).map(tuple), dtypes_st, st.booleans())
def test_argmax_first_maximum_on_any_axis(ex, data, shape, dtype, narrow):
    rank = len(shape) + 1  # the batch axis counts
    axis = data.draw(st.sampled_from([a for a in range(1, rank)] + [a - rank for a in range(1, rank)]))
    x = _values(data.draw, shape, dtype, narrow=narrow)
    plans, _ = _run(ex, "argmax", [x], [VALUE], {"axis": axis}, [_longer(data.draw, shape)], seed=_seed(data))
    row_axis = axis % rank - 1
    for plan in plans.values():
        if row_axis == len(shape) - 1:
            assert len(plan) == 1  # the whole row
        else:
            assert len(plan) == shape[row_axis] and len({p[2] for p in plan}) == shape[row_axis]


def test_argmax_ties_go_to_the_lowest_index(ex):
    x = np.array([[5, 9, 9, 1], [-1, -1, -1, -1], [int(I32.max)] * 4], np.int32)
    for axis, expected in ((-1, [1, 0, 0]), (1, [2, 2, 2, 2])):
        plans, got = _run(ex, "argmax", [x], [VALUE], {"axis": axis})
        np.testing.assert_array_equal(got, expected)


@st.composite
def pools(draw):
    """(x, attrs) of a pool: windows, strides and pads in every combination the opset allows."""
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    pads = [draw(st.integers(0, k - 1)) for k in (kh, kh, kw, kw)]
    h = draw(st.integers(max(1, kh - pads[0] - pads[1]), 6))
    w = draw(st.integers(max(1, kw - pads[2] - pads[3]), 6))
    c = draw(st.integers(1, 3))
    attrs = {
        "window": (kh, kw),
        "strides": (draw(st.integers(1, 3)), draw(st.integers(1, 3))),
        "padding": ((pads[0], pads[1]), (pads[2], pads[3])),
    }
    narrow = draw(st.booleans())
    if narrow:  # small values: ties of the max and .5 means of avg_pool
        element = st.integers(-3, 3)
        x = np.array(draw(st.lists(element, min_size=h * w * c, max_size=h * w * c)), np.int8)
        x = x.reshape(h, w, c)
    else:
        x = _values(draw, (h, w, c), np.int8)
    return x, attrs


def _corners(shape):
    """The flat indices of the output's four corner positions (the padded borders), channel 0
    and the last channel."""
    ho, wo, c = shape
    return [((i * wo) + j) * c + ch for i in (0, ho - 1) for j in (0, wo - 1) for ch in (0, c - 1)]


@pytest.mark.parametrize("op", ["max_pool", "avg_pool"])
@settings(max_examples=30, deadline=None)
@given(case=pools(), seed=st.integers(0, 2**16))
def test_pools(ex, op, case, seed):
    x, attrs = case
    step = _step(op, [x], [VALUE], attrs)
    expected = _expected(op, [x], [VALUE], attrs)
    plans = _check(ex, step, [x], expected, _elements(expected.size, seed, _corners(expected.shape), 3))
    (top, _), (left, _) = attrs["padding"]
    (kh, kw), (sh, sw) = attrs["window"], attrs["strides"]
    ho, wo, c = expected.shape
    for e, plan in plans.items():
        i, j = e // c // wo, e // c % wo
        rows = range(max(i * sh - top, 0), min(i * sh - top + kh, x.shape[0]))
        cols = range(max(j * sw - left, 0), min(j * sw - left + kw, x.shape[1]))
        assert [p[2] for p in plan] == [r * x.shape[1] + q for r in rows for q in cols]  # in-bounds only


def test_avg_pool_rounds_half_up(ex):
    # Windows of two: -2.5 -> -2, 2.5 -> 3, -0.5 -> 0, 0.5 -> 1, the int8 limits, -127.5 -> -127.
    pairs = [(-2, -3), (2, 3), (-1, 0), (0, 1), (-128, -128), (127, 127), (-128, 127), (-128, -127)]
    x = np.array(pairs, np.int8).reshape(1, 16, 1)
    attrs = {"window": (1, 2), "strides": (1, 2), "padding": ((0, 0), (0, 0))}
    _, got = _run(ex, "avg_pool", [x], [VALUE], attrs)
    np.testing.assert_array_equal(got.reshape(-1), [-2, 3, 0, 1, -128, 127, 0, -127])
    # Windows of three cut by the padding to two: (-1 + 0) / 2 -> 0, (0 - 2) / 2 -> -1 (over
    # three, -1 / 3 and -2 / 3 would round to 0 and -1, -1 and -2 summed to -1 too: not the case).
    x = np.array([-1, 0, -2], np.int8).reshape(1, 3, 1)
    attrs = {"window": (1, 3), "strides": (1, 2), "padding": ((0, 0), (1, 1))}
    _, got = _run(ex, "avg_pool", [x], [VALUE], attrs)
    np.testing.assert_array_equal(got.reshape(-1), [0, -1])


@settings(max_examples=40, deadline=None)
@given(st.data(), st.lists(st.integers(1, 4), min_size=0, max_size=3).map(tuple), dtypes_st)
def test_reshape_resolves_minus_one_from_the_actual_size(ex, data, shape, dtype):
    x = _values(data.draw, shape, dtype)
    size = x.size
    divisors = [d for d in range(1, size + 1) if size % d == 0]
    target = data.draw(st.lists(st.sampled_from(divisors), max_size=3))
    known = math.prod(target)
    if size % known:
        target = []
        known = 1
    if data.draw(st.booleans()):
        new = [*target, -1]
        position = data.draw(st.integers(0, len(target)))
        new.insert(position, new.pop())
        # a dynamic axis: the descriptor's longest shape holds whole multiples more
        longest = list(shape)
        if shape:
            longest[0] = shape[0] * data.draw(st.integers(1, 2))
    else:
        if size != known:
            target = [*target, size // known]
        new, longest = target, list(shape)
    plans, got = _run(ex, "reshape", [x], [VALUE], {"shape": tuple(new)}, [tuple(longest)], seed=_seed(data))
    assert math.prod(got.shape) == size


@settings(max_examples=25, deadline=None)
@given(st.data(), shapes_st, dtypes_st)
def test_flatten(ex, data, shape, dtype):
    x = _values(data.draw, shape, dtype)
    _run(ex, "flatten", [x], [VALUE], {}, [_longer(data.draw, shape)], seed=_seed(data))


@settings(max_examples=30, deadline=None)
@given(st.data(), st.lists(st.integers(1, 4), min_size=0, max_size=4).map(tuple), dtypes_st)
def test_transpose(ex, data, shape, dtype):
    x = _values(data.draw, shape, dtype)
    perm = tuple(data.draw(st.permutations(range(len(shape)))))
    _run(ex, "transpose", [x], [VALUE], {"perm": perm}, [_longer(data.draw, shape)], seed=_seed(data))


@settings(max_examples=30, deadline=None)
@given(
    st.data(), st.lists(st.integers(1, 3), min_size=1, max_size=3).map(tuple), dtypes_st, st.integers(1, 3)
)
def test_concat_of_dynamic_operands(ex, data, shape, dtype, n):
    rank = len(shape) + 1
    axis = data.draw(st.sampled_from([a for a in range(1, rank)] + [a - rank for a in range(1, rank)]))
    row_axis = axis % rank - 1
    xs, longest = [], []
    for _ in range(n):
        s = list(shape)
        s[row_axis] = data.draw(st.integers(1, 3))  # each operand its own length along the axis
        xs.append(_values(data.draw, tuple(s), dtype))
        top = list(s)
        top[row_axis] += data.draw(st.integers(0, 2))  # ... and a longer one in the descriptor
        longest.append(tuple(top))
    lengths = [x.shape[row_axis] for x in xs]
    # the first and last element of each operand's part along the axis
    out_shape = list(shape)
    out_shape[row_axis] = sum(lengths)
    starts = np.cumsum([0, *lengths])
    extra = []
    for a, b in zip(starts[:-1], starts[1:]):
        for at in (a, b - 1):
            index = [0] * len(shape)
            index[row_axis] = at
            extra.append(int(np.ravel_multi_index(index, out_shape)))
    plans, _ = _run(ex, "concat", xs, [VALUE] * n, {"axis": axis}, longest, extra=extra, seed=_seed(data))
    for e, plan in plans.items():
        part = int(np.searchsorted(starts, np.unravel_index(e, out_shape)[row_axis], side="right")) - 1
        assert len(plan) == 1 and plan[0][0] == part


# ------------------------------------------------------------------ a real program, real descriptors


def _tiny_program():
    hw = dict(window=(2, 2), strides=(2, 1), padding=((1, 0), (0, 1)))
    nodes = [
        Node(op="relu", inputs=("x",), output="r"),
        Node(op="table", inputs=("x", "tbl"), output="t"),
        Node(op="max_pool", inputs=("x",), output="mp", attrs=hw),
        Node(op="avg_pool", inputs=("x",), output="ap", attrs=hw),
        Node(op="reshape", inputs=("x",), output="rs", attrs={"shape": (-1, 2)}),
        Node(op="flatten", inputs=("x",), output="fl"),
        Node(op="transpose", inputs=("x",), output="tp", attrs={"perm": (2, 0, 1)}),
        Node(op="concat", inputs=("x", "r"), output="cc", attrs={"axis": -1}),
        Node(op="argmax", inputs=("x",), output="am", attrs={"axis": 2}),
        Node(op="gather", inputs=("ids", "emb"), output="g"),
        Node(op="iota", inputs=("ids",), output="io"),
        Node(op="concat", inputs=("g", "g"), output="gg", attrs={"axis": 1}),
        Node(op="argmax", inputs=("gg",), output="ga", attrs={"axis": 1}),
        Node(op="reshape", inputs=("gg",), output="gr", attrs={"shape": (2, -1)}),
        Node(op="transpose", inputs=("gg",), output="gt", attrs={"perm": (1, 0)}),
    ]
    rng = np.random.default_rng(3)
    params = {
        "tbl": rng.integers(I32.min, I32.max, 256, dtype=np.int64).astype(np.int32),
        "emb": rng.integers(-128, 128, (10, 3), dtype=np.int8),
    }
    inputs = (
        ValueSpec(name="x", dtype="int8", shape=(5, 4, 2)),
        ValueSpec(name="ids", dtype="int32", shape=(6,), dynamic=(0,), bounds=(0, 9)),
    )
    return nodes, params, inputs


def test_real_descriptors_of_a_program_with_every_op(ex):
    nodes, params, inputs = _tiny_program()
    # Output specs: what the reference computes, dynamic along the ids' sequence axis.
    rng = np.random.default_rng(4)
    x = rng.integers(-128, 128, (2, 5, 4, 2), dtype=np.int8)
    x[0, 0, 0] = [-128, 127]
    ids = np.array([[0, 9, 3, 3], [1, 2, 8, 7]], np.int32)  # 4 of at most 6 positions
    specs = []
    values = {"x": x, "ids": np.zeros((1, 6), np.int32), **params}
    for node in nodes:
        out = getattr(reference, node.op)(*(values[i] for i in node.inputs), **node.attrs)
        values[node.output] = out
        dynamic = {"g": (0,), "io": (0,), "gg": (0,), "gr": (1,), "gt": (1,)}.get(node.output, ())
        specs.append(ValueSpec(name=node.output, dtype=out.dtype.name, shape=out.shape[1:], dynamic=dynamic))
    program = Program(
        name="elementwise", inputs=inputs, outputs=tuple(specs), nodes=tuple(nodes), params=params
    )
    traced = step_values(program, {"x": x, "ids": ids}, engine="reference")
    first = len(program.inputs)
    steps = {spec.name: i for i, spec in enumerate(program.inputs)}
    steps.update({node.output: first + n for n, node in enumerate(program.nodes)})
    for n, node in enumerate(program.nodes):
        step = step_struct(step_descriptor(program, first + n))
        assert step[0] == tag(node.op)
        for row in range(2):
            operands = [
                program.params[i] if i in program.params else traced[steps[i]][row] for i in node.inputs
            ]
            expected = traced[first + n][row]
            _check(ex, step, operands, expected, _elements(expected.size, n, count=3))
    # The dynamic steps really ran shorter than their descriptors.
    g = step_struct(step_descriptor(program, steps["gg"]))
    assert g[1][0][3] == [6, 3] and traced[steps["g"]].shape[1:] == (4, 3)


# ------------------------------------------------------------------ reverts


def test_handles_exactly_the_family(ex):
    for op in FAMILY:
        assert ex.handles(tag(op))
    for op in ("matmul", "softmax", "layer_norm", "add", "relu6", "", "Relu", "concat "):
        assert not ex.handles(tag(op) if op else b"\0" * 32)


def test_other_ops_revert_unsupported(ex):
    x = np.zeros((2, 3), np.int8)
    step = _step("relu", [x], [VALUE], {})
    other = (tag("matmul"), *step[1:])
    shapes = [[2, 3]]
    for call in (
        lambda: ex.outputShape(other, shapes),
        lambda: ex.reads(other, shapes, 0),
        lambda: ex.execute(other, shapes, 0, [bytes(3)]),
    ):
        with reverts("UnsupportedOp"):
            call()


def test_bad_rows_and_elements_out_of_range(ex):
    x = np.arange(-6, 6, dtype=np.int8).reshape(2, 3, 2)
    cases = [
        ("relu", [x], [VALUE], {}),
        ("max_pool", [x], [VALUE], {"window": (2, 2), "strides": (1, 1), "padding": ((1, 0), (0, 1))}),
        ("argmax", [x], [VALUE], {"axis": 1}),
        ("gather", [np.array([1, 0], np.int32), np.ones((3, 4), np.int8)], [VALUE, PARAM], {}),
        ("table", [x, np.arange(256, dtype=np.int32)], [VALUE, PARAM], {}),
        ("concat", [x, x], [VALUE, VALUE], {"axis": 2}),
    ]
    for op, operands, kinds, attrs in cases:
        step = _step(op, operands, kinds, attrs)
        shapes = [list(a.shape) for a in operands]
        size = _expected(op, operands, kinds, attrs).size
        element = size - 1
        plan = ex.reads(step, shapes, element)
        rows = read_rows(operands, plan)
        assert ex.execute(step, shapes, element, rows) == int(
            _expected(op, operands, kinds, attrs).reshape(-1)[element]
        )
        size_of = [step[1][k][2] // 8 for k, _, _ in plan]  # bytes per element of each row
        wrong = [
            rows[:-1],
            [*rows, rows[0]],
            [rows[0][: -size_of[0]], *rows[1:]],  # one element short
            [rows[0] + bytes(size_of[0]), *rows[1:]],  # one element long
        ]
        if len(rows) > 1:
            wrong.append([*rows[:-1], rows[-1][: -size_of[-1]]])
            wrong.append([*rows[:-1], rows[-1] + b"\x01"])  # a byte more: an int32 row not whole
        for bad in wrong:
            with reverts("BadRows"):
                ex.execute(step, shapes, element, bad)
        with reverts("ElementOutOfRange"):
            ex.reads(step, shapes, size)
        with reverts("ElementOutOfRange"):
            ex.execute(step, shapes, size, rows)
        with reverts("ElementOutOfRange"):
            ex.reads(step, shapes, 2**256 - 1)


def test_table_refuses_a_non_int8_input(ex):
    x = np.array([[3]], np.int8)
    values = np.arange(256, dtype=np.int32)
    step = _step("table", [x, values], [VALUE, PARAM], {})
    shapes = [[1, 1], [256]]
    entries = pack_row(values, "int32")
    assert ex.execute(step, shapes, 0, [pack_row([-128], "int8"), entries]) == 0
    assert ex.execute(step, shapes, 0, [pack_row([127], "int8"), entries]) == 255
    # A packed int8 cannot be 128; a descriptor that declares the input int32 (the opset
    # refuses one) must still never index past the 256 entries.
    op, operands, *rest = step
    wide = (op, [(*operands[0][:2], 32, operands[0][3]), operands[1]], *rest)
    with reverts("NotInt8"):
        ex.execute(wide, shapes, 0, [pack_row([128], "int32"), entries])
    with reverts("NotInt8"):
        ex.execute(wide, shapes, 0, [pack_row([-129], "int32"), entries])
    assert ex.execute(wide, shapes, 0, [pack_row([-128], "int32"), entries]) == 0


def test_shapes_that_do_not_fit_revert_bad_operands(ex):
    x = np.zeros((3, 4, 2), np.int8)
    relu = _step("relu", [x], [VALUE], {})
    pool = _step("max_pool", [x], [VALUE], {"window": (3, 2), "strides": (1, 1), "padding": ((0, 1), (0, 0))})
    table = _step("table", [x, np.zeros(256, np.int8)], [VALUE, PARAM], {})
    gather = _step("gather", [np.zeros(3, np.int32), np.zeros((5, 2), np.int8)], [VALUE, PARAM], {})
    concat = _step("concat", [x, x], [VALUE, VALUE], {"axis": 1})
    reshape = _step("reshape", [x], [VALUE], {"shape": (5, -1)}, [(5, 4, 2)])
    fixed = _step("reshape", [x], [VALUE], {"shape": (24,)})
    cases = [
        (relu, [[3, 5, 2]]),  # longer than the descriptor's longest
        (relu, [[3, 4]]),  # another rank
        (relu, [[3, 0, 2]]),  # an empty axis
        (relu, [[3, 4, 2], [1]]),  # an operand too many
        (relu, []),
        (pool, [[1, 4, 2]]),  # H + pads = 2 < window 3
        (pool, [[3, 4]]),  # not (H, W, C)
        (table, [[3, 4, 2], [255]]),  # a parameter other than its shape
        (gather, [[3], [5, 1]]),
        (concat, [[3, 4, 2], [3, 3, 2]]),  # differ off the axis
        (reshape, [[3, 4, 2]]),  # 24 (of at most 40) is no multiple of 5
        (fixed, [[2, 4, 2]]),  # a dynamic axis shorter than a static target allows
    ]
    for step, shapes in cases:
        with reverts("BadOperands"):
            ex.outputShape(step, shapes)
            pytest.fail(f"{step[0]!r} on {shapes} did not revert")
    # Operand kinds: a table of values, a relu of a parameter.
    as_value = (table[0], [table[1][0], (VALUE, 7, 8, [256])], *table[2:])
    as_param = (relu[0], [(PARAM, 0, 8, [3, 4, 2])], *relu[2:])
    for step, shapes in ((as_value, [[3, 4, 2], [256]]), (as_param, [[3, 4, 2]])):
        with reverts("BadOperands"):
            ex.outputShape(step, shapes)


def test_bad_attributes(ex):
    x = np.zeros((3, 4, 2), np.int8)
    shapes = [[3, 4, 2]]
    argmax = _step("argmax", [x], [VALUE], {"axis": 1})
    transpose = _step("transpose", [x], [VALUE], {"perm": (2, 0, 1)})
    pool = _step("avg_pool", [x], [VALUE], {"window": (2, 2), "strides": (1, 1), "padding": ((1, 0), (0, 1))})
    relu = _step("relu", [x], [VALUE], {})
    cases = [
        (argmax, [1, 0]),  # the batch axis
        (argmax, [1, -4]),  # the batch axis, from the end
        (argmax, [1, 4]),  # past the last axis
        (argmax, [2, 1, 2]),  # two integers
        (argmax, [1, 1, 1, 2]),  # a second attribute
        (transpose, [3, 0, 0, 1]),  # not a permutation
        (transpose, [3, 0, 1, 3]),
        (transpose, [2, 0, 1]),  # another rank
        (pool, [4, 2, 0, 0, 1, 2, 1, 1, 2, 2, 2]),  # pad >= window
        (pool, [4, 1, 0, 0, 1, 2, 0, 1, 2, 2, 2]),  # stride 0
        (pool, [4, 1, 0, 0, 1, 2, 1, 1, 2, 2]),  # a window of one integer
        (relu, [1, 0]),  # an attribute relu has none of
        (_step("reshape", [x], [VALUE], {"shape": (-1, 6)}), [2, -1, -1]),
        (_step("reshape", [x], [VALUE], {"shape": (-1, 6)}), [2, 0, 24]),
    ]
    for step, attrs in cases:
        with reverts("BadAttributes"):
            ex.outputShape((*step[:4], attrs), shapes)


def test_runtime_code_fits_eip170(ex):
    assert len(ex.chain.w3.eth.get_code(ex.contract.address)) < 24576


# ------------------------------------------------------------------ the zoo


def _zoo_steps(program, values, rows=(0,)):
    """(step, descriptor tuple, operands per batch row, expected per batch row) of every node
    of this family."""
    first = len(program.inputs)
    steps = {spec.name: i for i, spec in enumerate(program.inputs)}
    steps.update({node.output: first + n for n, node in enumerate(program.nodes)})
    for n, node in enumerate(program.nodes):
        if node.op not in FAMILY:
            continue
        s = first + n
        step = step_struct(step_descriptor(program, s))
        for row in rows:
            operands = [
                program.params[i] if i in program.params else values[steps[i]][row] for i in node.inputs
            ]
            yield node.op, s, step, operands, values[s][row]


def _check_zoo(ex, program, values, rows=(0,)):
    """The first, middle and last element of each distinct step of this family (a repeated
    layer's step descriptor differs only in its operand steps: checked once); returns the ops."""
    seen, kinds = set(), set()
    for op, _, step, operands, expected in _zoo_steps(program, values, rows):
        kind = (step[0], tuple((k, d, tuple(s)) for k, _, d, s in step[1]), tuple(step[4]))
        if kind in kinds and len(rows) == 1:
            continue
        kinds.add(kind)
        size = expected.size
        _check(ex, step, operands, expected, sorted({0, size // 2, size - 1}))
        seen.add(op)
    return seen


@pytest.mark.parametrize("name", ["digits-mlp", "digits-cnn"])
def test_zoo_digits(ex, name):
    program = load(DATA_DIR / f"{name}.aivm")
    x = np.load(DATA_DIR / f"{name}.inputs.npy")[:2]
    values = step_values(program, x)
    seen = _check_zoo(ex, program, values, rows=(0, 1))
    expected = {"digits-mlp": {"relu"}, "digits-cnn": {"relu", "max_pool", "avg_pool", "flatten"}}[name]
    assert expected <= seen, seen


@pytest.fixture(scope="session")
def minilm(built_zoo):
    return built_zoo("minilm-l6")


@pytest.fixture(scope="session")
def char_gpt(built_zoo):
    return built_zoo("char-gpt")


def _dynamic_feeds(program, length, seed=0):
    """Inputs at ``length`` along their dynamic axes: ids in bounds, masks all ones, past
    caches of length 1 with their mask 0."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in program.inputs:
        shape = [length if a in spec.dynamic else d for a, d in enumerate(spec.shape)]
        if spec.name.startswith("past_"):
            shape = [1 if a in spec.dynamic else d for a, d in enumerate(spec.shape)]
        low, high = spec.bounds if spec.bounds is not None else (-128, 127)
        if spec.name.endswith("mask"):
            low = high = 0 if spec.name.startswith("past_") else 1
        feeds[spec.name] = rng.integers(low, high + 1, (1, *shape)).astype(spec.dtype)
    return feeds


@pytest.mark.slow  # py-evm takes seconds for a 30,522-byte row
def test_gas_of_a_gather_on_minilm_vocabulary(ex):
    """A gather reads one column of the (30522, 384) int8 word table: 30,522 packed bytes, one
    entry decoded (as int256 words the call cost over 10M gas)."""
    rng = np.random.default_rng(11)
    ids = rng.integers(0, 30522, (256,)).astype(np.int32)
    table = rng.integers(-128, 128, (30522, 384)).astype(np.int8)
    step = _step("gather", [ids, table], [VALUE, PARAM], {})
    shapes = [[256], [30522, 384]]
    element = 256 * 384 - 1
    plan, got = _one(ex, step, [ids, table], shapes, element)
    assert got == int(table[ids[-1], 383])
    rows = read_rows([ids, table], plan)
    assert len(rows[1]) == 30522
    assert ex.contract.functions.execute(step, shapes, element, rows).estimate_gas() < 1_000_000


@pytest.mark.slow
def test_zoo_minilm(ex, minilm):
    # The reference engine: JAX's compile of the whole encoder takes minutes on a busy machine,
    # and the trace's JAX values equal the reference's bit for bit (tests/disputes/test_trace.py).
    values = step_values(minilm, _dynamic_feeds(minilm, 9), engine="reference")
    seen = _check_zoo(ex, minilm, values)
    assert {"gather", "iota"} <= seen, seen


@pytest.mark.slow
def test_zoo_char_gpt(ex, char_gpt):
    values = step_values(char_gpt, _dynamic_feeds(char_gpt, 7))
    seen = _check_zoo(ex, char_gpt, values)
    assert {"gather", "concat", "argmax", "reshape", "transpose"} <= seen, seen
