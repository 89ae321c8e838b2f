"""Every op: the JAX lowering (jit and eager) equals the NumPy reference bit for bit."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from aivm_jax.ops import OPSET, lowering, reference

I8 = st.integers(-128, 127)
I32 = st.integers(-(2**31), 2**31 - 1)
# Edge values are drawn often on purpose: saturation, ties and wrap live there.
I8_EDGES = st.one_of(st.sampled_from([-128, -127, -1, 0, 1, 126, 127]), I8)
I32_EDGES = st.one_of(st.sampled_from([-(2**31), -(2**31) + 1, -1, 0, 1, 2**31 - 2, 2**31 - 1]), I32)


def int8s(shape):
    return hnp.arrays(np.int8, shape, elements=I8_EDGES)


def int32s(shape):
    return hnp.arrays(np.int32, shape, elements=I32_EDGES)


def assert_lowering_matches(op: str, *operands, **attrs) -> np.ndarray:
    expected = getattr(reference, op)(*operands, **attrs)
    jitted = jax.jit(lambda *xs: getattr(lowering, op)(*xs, **attrs))(*operands)
    with jax.disable_jit():
        eager = getattr(lowering, op)(*operands, **attrs)
    for got in (jitted, eager):
        got = np.asarray(got)
        assert got.dtype == expected.dtype, (op, got.dtype, expected.dtype)
        np.testing.assert_array_equal(got, expected)
    return expected


def test_every_op_has_a_property_test():
    tested = {name[len("test_") :].split("_property")[0] for name in globals() if name.endswith("_property")}
    assert set(OPSET) <= tested, f"ops without a property test: {set(OPSET) - tested}"


@given(st.data(), st.integers(1, 4), st.integers(1, 40), st.integers(1, 9))
def test_matmul_property(data, batch, k, n):
    x = data.draw(int8s((batch, k)))
    w = data.draw(int8s((k, n)))
    assert_lowering_matches("matmul", x, w)


def test_matmul_extreme_accumulation_is_exact():
    # 8192 products of (-128)(-128) = 2**27: far from float32's 2**24 exactness limit.
    x = np.full((1, 8192), -128, np.int8)
    w = np.full((8192, 2), -128, np.int8)
    out = assert_lowering_matches("matmul", x, w)
    assert out[0, 0] == 8192 * 16384


@given(
    st.data(),
    st.integers(1, 3),
    st.integers(1, 7),
    st.integers(1, 7),
    st.integers(1, 4),
    st.integers(1, 4),
    st.integers(1, 3),
    st.integers(1, 3),
    st.integers(1, 2),
    st.integers(1, 2),
    st.lists(st.integers(0, 2), min_size=4, max_size=4),
)
def test_conv2d_property(data, b, h, w, c, o, kh, kw, sh, sw, pads):
    padding = ((pads[0], pads[1]), (pads[2], pads[3]))
    if h + pads[0] + pads[1] < kh or w + pads[2] + pads[3] < kw:
        return
    x = data.draw(int8s((b, h, w, c)))
    k = data.draw(int8s((kh, kw, c, o)))
    assert_lowering_matches("conv2d", x, k, strides=(sh, sw), padding=padding)


@pytest.mark.parametrize("c, o", [(2, 3), (8, 8), (16, 16), (16, 17), (1, 8)])
def test_conv2d_on_both_cpu_paths_at_the_int8_extremes(c, o):
    """im2col (2 <= C, C * O <= 256) and XLA's convolution (the others), at the extremes: every
    product 2**14 (and -2**14 + 128), strides 2 and uneven padding."""
    rng = np.random.default_rng(c * 100 + o)
    x = rng.choice(np.array([-128, 127], np.int8), (3, 9, 7, c))
    x[0] = -128
    w = rng.choice(np.array([-128, 127], np.int8), (3, 2, c, o))
    w[..., 0] = -128
    for strides, padding in (((1, 1), ((1, 1), (0, 1))), ((2, 2), ((2, 0), (1, 2)))):
        out = assert_lowering_matches("conv2d", x, w, strides=strides, padding=padding)
        if strides == (1, 1):
            assert out[0, 1, 1, 0] == 3 * 2 * c * 2**14  # an interior window of -128 * -128


@given(st.data(), st.integers(1, 4), st.integers(1, 8))
def test_bias_add_property(data, batch, n):
    assert_lowering_matches("bias_add", data.draw(int32s((batch, n))), data.draw(int32s((n,))))


def test_bias_add_wraps():
    out = assert_lowering_matches(
        "bias_add", np.array([[2**31 - 1, -(2**31)]], np.int32), np.array([1, -1], np.int32)
    )
    np.testing.assert_array_equal(out, [[-(2**31), 2**31 - 1]])


@given(st.data(), st.integers(1, 4), st.integers(1, 6), st.booleans(), st.sampled_from(["int8", "int32"]))
def test_requantize_property(data, batch, n, per_channel, out_dtype):
    x = data.draw(int32s((batch, n)))
    shape = (n,) if per_channel else ()
    m = data.draw(int32s(shape))
    s = data.draw(hnp.arrays(np.int32, shape, elements=st.integers(0, 62)))
    assert_lowering_matches("requantize", x, m, s, out_dtype=out_dtype)


def test_requantize_rounds_half_up_and_saturates():
    x = np.array([[-5, 5, -3, 3, -1, 1, 2**31 - 1, -(2**31)]], np.int32)
    out = assert_lowering_matches("requantize", x, np.int32(1), np.int32(1), out_dtype="int8")
    np.testing.assert_array_equal(out, [[-2, 3, -1, 2, 0, 1, 127, -128]])


def test_requantize_needs_64_bits():
    # (2**31 - 1) * (2**31 - 1) overflows int32 and int64's sign bit is never reached.
    x = np.array([[2**31 - 1, -(2**31)]], np.int32)
    m = np.int32(2**31 - 1)
    out = assert_lowering_matches("requantize", x, m, np.int32(62), out_dtype="int32")
    exact = [((v * (2**31 - 1)) + 2**61) >> 62 for v in (2**31 - 1, -(2**31))]
    np.testing.assert_array_equal(out, [exact])


@given(st.data(), st.sampled_from(["int8", "int32"]))
def test_relu_property(data, dtype):
    elements = I8_EDGES if dtype == "int8" else I32_EDGES
    assert_lowering_matches("relu", data.draw(hnp.arrays(dtype, (3, 5), elements=elements)))


@given(st.data(), st.sampled_from(["int8", "int32"]))
def test_table_property(data, dtype):
    x = data.draw(int8s((2, 3, 5)))
    values = data.draw(int8s((256,)) if dtype == "int8" else int32s((256,)))
    assert_lowering_matches("table", x, values)


def test_table_reaches_both_ends():
    values = np.arange(256, dtype=np.int32) * 3 - 7
    out = assert_lowering_matches("table", np.array([[-128, 127, 0]], np.int8), values)
    np.testing.assert_array_equal(out, [[values[0], values[255], values[128]]])


def _pool_args(data):
    kh, kw = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))
    pads = (
        (data.draw(st.integers(0, kh - 1)), data.draw(st.integers(0, kh - 1))),
        (data.draw(st.integers(0, kw - 1)), data.draw(st.integers(0, kw - 1))),
    )
    h = data.draw(st.integers(max(1, kh - pads[0][0] - pads[0][1]), 7))
    w = data.draw(st.integers(max(1, kw - pads[1][0] - pads[1][1]), 7))
    x = data.draw(int8s((data.draw(st.integers(1, 3)), h, w, data.draw(st.integers(1, 3)))))
    attrs = {
        "window": (kh, kw),
        "strides": (data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))),
        "padding": pads,
    }
    return x, attrs


@given(st.data())
def test_max_pool_property(data):
    x, attrs = _pool_args(data)
    assert_lowering_matches("max_pool", x, **attrs)


@given(st.data())
def test_avg_pool_property(data):
    x, attrs = _pool_args(data)
    assert_lowering_matches("avg_pool", x, **attrs)


def test_avg_pool_rounds_half_up():
    # windows of two: (-3 + -2) / 2 = -2.5 -> -2; (1 + 2) / 2 = 1.5 -> 2; (-128 + -127) -> -127
    x = np.array([-3, -2, 1, 2, -128, -127], np.int8).reshape(1, 1, 6, 1)
    out = assert_lowering_matches("avg_pool", x, window=(1, 2), strides=(1, 2), padding=((0, 0), (0, 0)))
    np.testing.assert_array_equal(out.reshape(-1), [-2, 2, -127])


@given(st.data())
def test_reshape_property(data):
    x = data.draw(int8s((2, 3, 4)))
    shape = data.draw(st.sampled_from([(12,), (4, 3), (2, 2, 3), (1, 12), (-1, 3), (2, -1, 2)]))
    assert_lowering_matches("reshape", x, shape=shape)


@given(st.data())
def test_flatten_property(data):
    assert_lowering_matches("flatten", data.draw(int8s((2, 3, 2, 2))))


@given(st.data(), st.permutations([0, 1, 2]))
def test_transpose_property(data, perm):
    assert_lowering_matches("transpose", data.draw(int32s((2, 2, 3, 4))), perm=tuple(perm))


@given(st.data(), st.sampled_from([1, 2, -1]))
def test_concat_property(data, axis):
    a = data.draw(int8s((2, 3, 3)))
    b = data.draw(int8s((2, 3, 3)))
    assert_lowering_matches("concat", a, b, a, axis=axis)


@given(st.data(), st.sampled_from([1, 2, -1]))
def test_argmax_property(data, axis):
    # few distinct values so that ties are common
    x = data.draw(hnp.arrays(np.int8, (3, 4, 5), elements=st.sampled_from([-128, 0, 5, 127])))
    assert_lowering_matches("argmax", x, axis=axis)


def test_argmax_ties_go_to_lowest_index():
    out = assert_lowering_matches("argmax", np.array([[1, 7, 7, 7], [-128, -128, -128, -128]], np.int8))
    np.testing.assert_array_equal(out, [1, 0])


# ----------------------------------------------------------------- transformer ops


@given(st.data(), st.sampled_from(["int8", "int32"]))
def test_gather_property(data, dtype):
    vocab = data.draw(st.integers(1, 9))
    ids = data.draw(hnp.arrays(np.int32, (2, 5), elements=st.integers(-3, vocab + 2)))
    table = data.draw(int8s((vocab, 3)) if dtype == "int8" else int32s((vocab, 3)))
    out = assert_lowering_matches("gather", ids, table)
    np.testing.assert_array_equal(out, table[np.clip(ids, 0, vocab - 1)])


@given(st.data())
def test_iota_property(data):
    x = data.draw(int32s((2, 3, data.draw(st.integers(1, 6)))))
    out = assert_lowering_matches("iota", x)
    assert (out[1, 2] == np.arange(x.shape[-1])).all()


@given(st.data(), st.booleans(), st.booleans(), st.sampled_from(["int8", "int32"]))
def test_add_property(data, per_channel_x, per_channel_s, out_dtype):
    n = data.draw(st.integers(1, 5))
    x = data.draw(int32s((3, n)))
    y = data.draw(int8s((3, n)))
    multipliers = st.integers(-(2**30), 2**30)
    mx = data.draw(hnp.arrays(np.int32, (n,) if per_channel_x else (), elements=multipliers))
    my = data.draw(hnp.arrays(np.int32, (), elements=multipliers))
    s = data.draw(hnp.arrays(np.int32, (n,) if per_channel_s else (), elements=st.integers(0, 62)))
    assert_lowering_matches("add", x, y, mx, my, s, out_dtype=out_dtype)


def test_add_rounds_half_up_at_the_extremes():
    x = np.array([[2**31 - 1, -(2**31), 3, -3]], np.int32)
    y = np.array([[2**31 - 1, -(2**31), 0, 0]], np.int32)
    m = np.int32(2**30)
    out = assert_lowering_matches("add", x, y, m, m, np.int32(62), out_dtype="int32")
    exact = [(a * 2**30 + b * 2**30 + 2**61) >> 62 for a, b in zip(x[0].tolist(), y[0].tolist())]
    np.testing.assert_array_equal(out[0], exact)
    halves = assert_lowering_matches(
        "add", x[:, 2:], y[:, 2:], np.int32(1), np.int32(0), np.int32(1), out_dtype="int8"
    )
    np.testing.assert_array_equal(halves, [[2, -1]])  # 1.5 -> 2, -1.5 -> -1


@given(st.data())
def test_layer_norm_property(data):
    d = data.draw(st.integers(1, 12))
    x = data.draw(int32s((2, 3, d)))
    gamma = data.draw(int32s((d,)))
    beta = data.draw(int32s((d,)))
    eps = data.draw(st.sampled_from([0, 1, 2**31 - 1]))
    assert_lowering_matches("layer_norm", x, gamma, beta, eps=eps)


def test_layer_norm_normalizes():
    rng = np.random.default_rng(0)
    x = rng.integers(-(2**20), 2**20, size=(4, 64)).astype(np.int32)
    gamma = np.full(64, 2**12, np.int32)  # output scale 2**-12
    out = assert_lowering_matches("layer_norm", x, gamma, np.zeros(64, np.int32), eps=0)
    centered = (x - x.mean(axis=1, keepdims=True)) / x.std(axis=1, keepdims=True)
    assert np.abs(out / 2**12 - centered).max() < 2e-3
    constant = assert_lowering_matches(
        "layer_norm", np.full((1, 8), 7, np.int32), gamma[:8], gamma[:8], eps=0
    )
    np.testing.assert_array_equal(constant, np.full((1, 8), 2**12))  # zero variance: only beta


@given(st.data(), st.sampled_from([("int8", "int8"), ("int32", "int8"), ("int32", "int32")]))
def test_batch_matmul_property(data, dtypes):
    m, k, n = (data.draw(st.integers(1, 5)) for _ in range(3))
    draw = {"int8": int8s, "int32": int32s}
    a = data.draw(draw[dtypes[0]]((2, 3, m, k)))
    b = data.draw(draw[dtypes[1]]((2, 3, k, n)))
    assert_lowering_matches("batch_matmul", a, b)


def _exp2_table(k):
    return np.round(2.0**30 * 2.0 ** (-np.arange(2**k) / 2**k)).astype(np.int32)


@given(st.data(), st.booleans(), st.integers(1, 8), st.integers(1, 30))
def test_softmax_property(data, causal, k, out_bits):
    tq, tk = data.draw(st.integers(1, 5)), data.draw(st.integers(1, 6))
    x = data.draw(int32s((2, 3, tq, tk)))
    mask = data.draw(hnp.arrays(np.int8, (2, tk), elements=st.sampled_from([0, 1, -1, 127])))
    table = data.draw(st.sampled_from([_exp2_table(k), np.full(2**k, 2**30, np.int32)]))
    assert_lowering_matches("softmax", x, mask, table, causal=causal, out_bits=out_bits)


def test_softmax_approximates_exp_and_ignores_padding():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 3, size=(1, 1, 4, 6))
    x = np.round(logits / np.log(2) * 256).astype(np.int32)  # natural log units -> 2**-8 bits
    mask = np.array([[1, 1, 1, 1, 1, 0]], np.int8)
    out = assert_lowering_matches("softmax", x, mask, _exp2_table(8), causal=False, out_bits=15)
    expected = np.exp(logits[..., :5]) / np.exp(logits[..., :5]).sum(-1, keepdims=True)
    assert np.abs(out[..., :5] / 2**15 - expected).max() < 2e-3
    assert (out[..., 5] == 0).all()
    # padding the key axis with masked keys changes no kept probability
    padded_x = np.concatenate([x, np.full((1, 1, 4, 3), 2**31 - 1, np.int32)], axis=-1)
    padded_mask = np.concatenate([mask, np.zeros((1, 3), np.int8)], axis=1)
    padded = assert_lowering_matches(
        "softmax", padded_x, padded_mask, _exp2_table(8), causal=False, out_bits=15
    )
    np.testing.assert_array_equal(padded[..., :6], out)


def test_softmax_causal_rule_and_empty_rows():
    x = np.zeros((1, 1, 2, 4), np.int32)
    out = assert_lowering_matches(
        "softmax", x, np.ones((1, 4), np.int8), _exp2_table(4), causal=True, out_bits=12
    )
    # Tk - Tq = 2: query 0 sees keys 0..2, query 1 sees all four
    np.testing.assert_array_equal(out[0, 0], [[1365, 1365, 1365, 0], [1024, 1024, 1024, 1024]])
    empty = assert_lowering_matches(
        "softmax", x, np.zeros((1, 4), np.int8), _exp2_table(4), causal=False, out_bits=12
    )
    assert (empty == 0).all()


@given(st.data(), st.sampled_from(["int8", "int32"]))
def test_mean_pool_property(data, dtype):
    t, d = data.draw(st.integers(1, 6)), data.draw(st.integers(1, 4))
    x = data.draw(int8s((3, t, d)) if dtype == "int8" else int32s((3, t, d)))
    mask = data.draw(hnp.arrays(np.int8, (3, t), elements=st.sampled_from([0, 1, -5])))
    assert_lowering_matches("mean_pool", x, mask)


def test_mean_pool_rounds_half_up_and_skips_padding():
    x = np.array([[[-3], [-2], [100]], [[1], [2], [100]]], np.int32)
    mask = np.array([[1, 1, 0], [1, 1, 0]], np.int8)
    out = assert_lowering_matches("mean_pool", x, mask)
    np.testing.assert_array_equal(out, [[-2], [2]])  # -2.5 -> -2, 1.5 -> 2


@given(st.data(), st.booleans())
def test_int8_matmul_equals_the_int64_product(data, shared_weight):
    from aivm_jax.quant import int8_matmul

    m, k, n = (data.draw(st.integers(1, 6)) for _ in range(3))
    a = data.draw(int8s((2, 3, m, k)))
    b = data.draw(int8s((k, n) if shared_weight else (2, 3, k, n)))
    expected = reference.wrap_int32(np.matmul(a.astype(np.int64), b.astype(np.int64)))
    got = jax.jit(int8_matmul)(a, b)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(np.asarray(got), expected)


def test_int8_matmul_refuses_other_dtypes_and_shapes():
    import pytest

    from aivm_jax import OpError
    from aivm_jax.quant import int8_matmul

    with pytest.raises(OpError, match="int8 operands"):
        int8_matmul(np.zeros((2, 2), np.int32), np.zeros((2, 2), np.int8))
    with pytest.raises(OpError, match="leading axes"):
        int8_matmul(np.zeros((2, 2, 2), np.int8), np.zeros((3, 2, 2), np.int8))
