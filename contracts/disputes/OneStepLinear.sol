// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import "./OneStep.sol";

/// @title OneStepLinear: the one-step executor of the opset's products and rescales.
/// @notice Recomputes one output element of `matmul`, `batch_matmul`, `conv2d`, `bias_add`,
/// `requantize` or `add` from the rows of its operands, written from the semantics of
/// aivm_jax/ops/reference.py (the conventions are in OneStep.sol). Per op, with the output
/// element at multi-index (..., m, n) or (i, j, o):
///
/// * `matmul(x, W)`, x (..., K) int8, W (K, N) int8: `y = wrap32(sum_k x[.., m, k] * W[k, n])`.
///   Reads x's row (.., m, :) and W's column n.
/// * `batch_matmul(a, b)`, a (..., M, K), b (..., K, N), int8 or int32 activations:
///   `z = wrap32(sum_k a[.., m, k] * b[.., k, n])`. Reads a's row (.., m, :) then b's K rows
///   (.., k, :) for k = 0..K-1 (b's column is no row of its trace rows).
/// * `conv2d(x, W)`, x (H, W, C) int8, kernel (KH, KW, C, O) int8, attributes
///   `padding = ((top, bottom), (left, right))`, `strides = (sh, sw)`:
///   `y[i, j, o] = wrap32(sum_{p, q, c} xp[i*sh + p, j*sw + q, c] * W[p, q, c, o])` with `xp`
///   the zero-padded input; output (Ho, Wo, O), `Ho = (H + top + bottom - KH) / sh + 1`.
///   Reads the kernel's column o (W[..., o] flattened over (KH, KW, C)), then the pixel rows
///   (C channels) of the receptive field that lie inside the input, p-major then q.
/// * `bias_add(x, b)`, x (..., N) int32, b (N,) int32: `y = wrap32(x[.., n] + b[n])`.
/// * `requantize(x, M, s)`, x int32, M and s int32 of shape () or (N,) (per channel along the
///   last axis), attribute `out_dtype`: `y = saturate(floor((x * M + 2**(s-1)) / 2**s))`, the
///   rounding term 0 for s = 0: `x * M / 2**s` rounded half up, the product exact (|x * M|
///   <= 2**62), saturated to int8 or int32; s outside [0, 62] reverts `ShiftOutOfRange`.
/// * `add(x, y, Mx, My, s)`, x and y int8 or int32 of one shape, Mx, My, s each () or (N,),
///   attribute `out_dtype`: `z = saturate(floor((x * Mx + y * My + 2**(s-1)) / 2**s))`, exact,
///   rounded half up as `requantize`.
///
/// Rows are packed canonical bytes (OneStep.sol, `Packed`), decoded element by element in
/// their operand's dtype (the step's), so every value is an int8 or int32.
///
/// Arithmetic: every sum is taken in int256. The wrapped ops (products, `bias_add`) use only
/// the sum modulo 2**32, which is the same whether or not an int256 sum wraps (2**32 divides
/// 2**256), so their loops run unchecked (the dot products in assembly, `_dot`); with int32
/// inputs they never wrap anyway (a product is at most 2**62, and a row has fewer than 2**32
/// elements). The rescales are checked and cannot overflow for int32 values. Floor division by
/// 2**s is the arithmetic shift `>>`.
///
/// Shapes: every operand has rank <= 8 and axes in [1, 2**32) (else `BadOperands`), so no
/// size or index computation overflows; `ElementOutOfRange` is checked before any division by
/// an output axis.
contract OneStepLinear is IOneStep {
    bytes32 private constant MATMUL = "matmul";
    bytes32 private constant BATCH_MATMUL = "batch_matmul";
    bytes32 private constant CONV2D = "conv2d";
    bytes32 private constant BIAS_ADD = "bias_add";
    bytes32 private constant REQUANTIZE = "requantize";
    bytes32 private constant ADD = "add";

    uint256 private constant MAX_RANK = 8;
    uint256 private constant AXIS_LIMIT = 2 ** 32;

    /// A shift parameter outside [0, 62] (the program check refuses it; the shift is not defined
    /// there).
    error ShiftOutOfRange(int256 shift);

    /// @inheritdoc IOneStep
    function handles(bytes32 op) external pure returns (bool) {
        return op == MATMUL || op == BATCH_MATMUL || op == CONV2D || op == BIAS_ADD || op == REQUANTIZE || op == ADD;
    }

    /// @inheritdoc IOneStep
    function outputShape(Step calldata step, uint256[][] calldata shapes) external pure returns (uint256[] memory) {
        return _outputShape(step, shapes);
    }

    /// @inheritdoc IOneStep
    function reads(Step calldata step, uint256[][] calldata shapes, uint256 element)
        external
        pure
        returns (Read[] memory r)
    {
        uint256[] memory out = _outputShape(step, shapes);
        // slither-disable-next-line unused-return -- Shapes.check is called for its revert past the output
        Shapes.check(element, out);
        bytes32 op = step.op;
        if (op == MATMUL) {
            uint256 n = out[out.length - 1];
            r = new Read[](2);
            r[0] = Read(0, false, element / n);
            r[1] = Read(1, true, element % n);
        } else if (op == BATCH_MATMUL) {
            uint256[] calldata a = shapes[0];
            uint256 k = a[a.length - 1];
            uint256 n = out[out.length - 1];
            uint256 aRow = element / n; // (lead, m) flattened: a's row
            uint256 lead = aRow / a[a.length - 2];
            r = new Read[](k + 1);
            r[0] = Read(0, false, aRow);
            for (uint256 i = 0; i < k; ++i) {
                // slither-disable-next-line divide-before-multiply -- index arithmetic: b's first row for this lead index
                r[i + 1] = Read(1, false, lead * k + i);
            }
        } else if (op == CONV2D) {
            r = _conv2dReads(step, shapes, out, element);
        } else {
            // bias_add, requantize, add: the operand rows holding the element, the parameters'
            // single row (rank 0: one element; rank 1: the N channels).
            uint256 d = Shapes.rowLength(shapes[0]);
            uint256 acts = op == ADD ? 2 : 1;
            r = new Read[](shapes.length);
            for (uint256 k = 0; k < shapes.length; ++k) {
                r[k] = Read(k, false, k < acts ? element / d : 0);
            }
        }
    }

    /// @inheritdoc IOneStep
    function execute(Step calldata step, uint256[][] calldata shapes, uint256 element, bytes[] calldata rows)
        external
        pure
        returns (int256)
    {
        uint256[] memory out = _outputShape(step, shapes);
        // slither-disable-next-line unused-return -- Shapes.check is called for its revert past the output
        Shapes.check(element, out);
        bytes32 op = step.op;
        if (op == MATMUL) return _matmul(step, shapes, rows);
        if (op == BATCH_MATMUL) return _batchMatmul(step, shapes, out, element, rows);
        if (op == CONV2D) return _conv2d(step, shapes, out, element, rows);
        if (op == BIAS_ADD) return _biasAdd(step, shapes, element, rows);
        if (op == REQUANTIZE) return _requantize(step, shapes, element, rows);
        return _add(step, shapes, element, rows);
    }

    // ------------------------------------------------------------------ output shapes

    function _outputShape(Step calldata step, uint256[][] calldata shapes)
        private
        pure
        returns (uint256[] memory out)
    {
        bytes32 op = step.op;
        if (op == MATMUL) {
            // x (..., K) value, W (K, N) parameter -> (..., N).
            _operands(step, shapes, 2, 0x2);
            uint256[] calldata x = shapes[0];
            uint256[] calldata w = shapes[1];
            if (x.length < 1 || w.length != 2 || x[x.length - 1] != w[0]) revert BadOperands();
            out = x;
            out[out.length - 1] = w[1];
        } else if (op == BATCH_MATMUL) {
            // a (..., M, K), b (..., K, N), both values, the same leading axes -> (..., M, N).
            _operands(step, shapes, 2, 0x0);
            uint256[] calldata a = shapes[0];
            uint256[] calldata b = shapes[1];
            uint256 rank = a.length;
            if (rank < 2 || b.length != rank || a[rank - 1] != b[rank - 2]) revert BadOperands();
            for (uint256 i = 0; i + 2 < rank; ++i) {
                if (a[i] != b[i]) revert BadOperands();
            }
            out = a;
            out[rank - 1] = b[rank - 1];
        } else if (op == CONV2D) {
            // x (H, W, C) value, kernel (KH, KW, C, O) parameter -> (Ho, Wo, O).
            _operands(step, shapes, 2, 0x2);
            uint256[] calldata x = shapes[0];
            uint256[] calldata w = shapes[1];
            if (x.length != 3 || w.length != 4 || x[2] != w[2]) revert BadOperands();
            (uint256 top, uint256 bottom, uint256 left, uint256 right, uint256 sh, uint256 sw) = _window(step);
            if (x[0] + top + bottom < w[0] || x[1] + left + right < w[1]) revert BadOperands();
            out = new uint256[](3);
            out[0] = (x[0] + top + bottom - w[0]) / sh + 1;
            out[1] = (x[1] + left + right - w[1]) / sw + 1;
            out[2] = w[3];
        } else if (op == BIAS_ADD) {
            // x (..., N) value, b (N,) parameter -> (..., N).
            _operands(step, shapes, 2, 0x2);
            uint256[] calldata x = shapes[0];
            if (x.length < 1 || shapes[1].length != 1 || shapes[1][0] != x[x.length - 1]) revert BadOperands();
            out = x;
        } else if (op == REQUANTIZE) {
            // x value, multiplier and shift parameters of one shape, () or (N,) -> x's shape.
            _operands(step, shapes, 3, 0x6);
            _outDtype(step);
            if (!Shapes.equal(shapes[1], shapes[2])) revert BadOperands();
            _channelParam(shapes[0], shapes[1]);
            out = shapes[0];
        } else if (op == ADD) {
            // x, y values of one shape; Mx, My, s parameters, each () or (N,) -> x's shape.
            _operands(step, shapes, 5, 0x1c);
            _outDtype(step);
            if (!Shapes.equal(shapes[0], shapes[1])) revert BadOperands();
            for (uint256 k = 2; k < 5; ++k) {
                _channelParam(shapes[0], shapes[k]);
            }
            out = shapes[0];
        } else {
            revert UnsupportedOp(op);
        }
    }

    /// Checks the operand count, each operand's kind (bit k of `paramMask` set: operand k is a
    /// parameter) and that every shape has rank <= 8 and axes in [1, 2**32).
    function _operands(Step calldata step, uint256[][] calldata shapes, uint256 count, uint256 paramMask)
        private
        pure
    {
        if (step.operands.length != count || shapes.length != count) revert BadOperands();
        for (uint256 k = 0; k < count; ++k) {
            if (step.operands[k].kind != (paramMask >> k) & 1) revert BadOperands();
            uint256[] calldata s = shapes[k];
            if (s.length > MAX_RANK) revert BadOperands();
            for (uint256 i = 0; i < s.length; ++i) {
                if (s[i] == 0 || s[i] >= AXIS_LIMIT) revert BadOperands();
            }
        }
    }

    /// A per-tensor () or per-channel (N,) parameter of an input (..., N); per channel needs an
    /// axis to index (rank >= 1).
    function _channelParam(uint256[] calldata x, uint256[] calldata p) private pure {
        if (p.length == 0) return;
        if (p.length != 1 || x.length == 0 || p[0] != x[x.length - 1]) revert BadOperands();
    }

    /// conv2d's attributes, in sorted name order: padding (top, bottom, left, right), strides.
    function _window(Step calldata step)
        private
        pure
        returns (uint256 top, uint256 bottom, uint256 left, uint256 right, uint256 sh, uint256 sw)
    {
        int256[] memory attrs = step.attrs;
        int256[] memory padding = Attrs.get(attrs, 0);
        int256[] memory strides = Attrs.get(attrs, 1);
        if (padding.length != 4 || strides.length != 2) revert BadAttributes();
        top = _attrInt(padding[0], 0);
        bottom = _attrInt(padding[1], 0);
        left = _attrInt(padding[2], 0);
        right = _attrInt(padding[3], 0);
        sh = _attrInt(strides[0], 1);
        sw = _attrInt(strides[1], 1);
    }

    /// An attribute integer in [minimum, 2**32), as uint256.
    function _attrInt(int256 value, uint256 minimum) private pure returns (uint256) {
        if (value < int256(minimum) || value >= int256(AXIS_LIMIT)) revert BadAttributes();
        return uint256(value);
    }

    /// The `out_dtype` attribute (the only one of requantize and add): 8 or 32.
    function _outDtype(Step calldata step) private pure returns (uint256) {
        int256[] memory values = Attrs.get(step.attrs, 0);
        if (values.length != 1 || (values[0] != 8 && values[0] != 32)) revert BadAttributes();
        return uint256(values[0]);
    }

    // ------------------------------------------------------------------ products

    /// `wrap32(sum_k x[k] * w[k])` over x's row and W's column.
    function _matmul(Step calldata step, uint256[][] calldata shapes, bytes[] calldata rows)
        private
        pure
        returns (int256)
    {
        uint256 k = shapes[1][0];
        uint256 dx = step.operands[0].dtype;
        uint256 dw = step.operands[1].dtype;
        if (rows.length != 2 || Packed.length(rows[0], dx) != k || Packed.length(rows[1], dw) != k) revert BadRows();
        return Ints.wrap32(_dot(rows[0], dx, 0, rows[1], dw, 0, k));
    }

    /// `sum_i a[ia + i] * b[ib + i]` for i < n over packed rows of dtypes `da` and `db`, with the
    /// EVM's wrapping MUL and ADD. Only the sum modulo 2**32 is used, and 2**32 divides 2**256,
    /// so a wrap in int256 would not change it (with int8/int32 values none happens: |sum| <=
    /// n * 2**62). Decoding calldata in place avoids the per-element checks of `Packed.at`;
    /// callers check that both rows hold whole elements of their dtype, `ia + n` elements
    /// of `a` and `ib + n` of `b`.
    function _dot(bytes calldata a, uint256 da, uint256 ia, bytes calldata b, uint256 db, uint256 ib, uint256 n)
        private
        pure
        returns (int256 acc)
    {
        uint256 sa = Packed.itemsize(da);
        uint256 sb = Packed.itemsize(db);
        assembly ("memory-safe") {
            // The element at calldata `p`, `size` (1 or 4) bytes little-endian, sign-extended.
            function load(p, size) -> v {
                let w := calldataload(p)
                switch size
                case 1 { v := signextend(0, byte(0, w)) }
                default { v := signextend(3, or(or(byte(0, w), shl(8, byte(1, w))), or(shl(16, byte(2, w)), shl(24, byte(3, w))))) }
            }
            let pa := add(a.offset, mul(ia, sa))
            let pb := add(b.offset, mul(ib, sb))
            for { let end := add(pa, mul(n, sa)) } lt(pa, end) {} {
                acc := add(acc, mul(load(pa, sa), load(pb, sb)))
                pa := add(pa, sa)
                pb := add(pb, sb)
            }
        }
    }

    /// `wrap32(sum_k a[.., m, k] * b[.., k, n])` over a's row and b's K rows (element n of each).
    function _batchMatmul(
        Step calldata step,
        uint256[][] calldata shapes,
        uint256[] memory out,
        uint256 element,
        bytes[] calldata rows
    ) private pure returns (int256) {
        uint256 k = shapes[0][shapes[0].length - 1];
        uint256 nn = out[out.length - 1];
        uint256 n = element % nn;
        uint256 da = step.operands[0].dtype;
        uint256 db = step.operands[1].dtype;
        if (rows.length != k + 1 || Packed.length(rows[0], da) != k) revert BadRows();
        bytes calldata a = rows[0];
        int256 acc = 0;
        for (uint256 i = 0; i < k; ++i) {
            bytes calldata b = rows[i + 1];
            if (Packed.length(b, db) != nn) revert BadRows();
            unchecked {
                // Unchecked: see `_dot` (int32 products never wrap int256 in 2**32 terms).
                acc += Packed.at(a, da, i) * Packed.at(b, db, n);
            }
        }
        return Ints.wrap32(acc);
    }

    /// The in-bounds receptive field of output pixel (i, j): kernel rows p in [p0, p1) and
    /// columns q in [q0, q1), and the input pixel of (p, q) is (i*sh + p - top, j*sw + q - left).
    struct Field {
        uint256 p0;
        uint256 p1;
        uint256 q0;
        uint256 q1;
        uint256 h0; // input row of p = 0 plus top (i * sh)
        uint256 w0; // input column of q = 0 plus left (j * sw)
        uint256 top;
        uint256 left;
        uint256 width; // the input's W
        uint256 o; // output channel
    }

    function _field(Step calldata step, uint256[][] calldata shapes, uint256[] memory out, uint256 element)
        private
        pure
        returns (Field memory f)
    {
        (uint256 top,, uint256 left,, uint256 sh, uint256 sw) = _window(step);
        uint256[] calldata x = shapes[0];
        uint256[] calldata w = shapes[1];
        f.o = element % out[2];
        uint256 pixel = element / out[2];
        // slither-disable-next-line divide-before-multiply -- index arithmetic: output row, then its first input row
        f.h0 = (pixel / out[1]) * sh;
        f.w0 = (pixel % out[1]) * sw;
        f.top = top;
        f.left = left;
        f.width = x[1];
        // Kernel row p is inside when top <= h0 + p < top + H.
        f.p0 = top > f.h0 ? top - f.h0 : 0;
        f.p1 = top + x[0] > f.h0 ? _min(w[0], top + x[0] - f.h0) : 0;
        f.q0 = left > f.w0 ? left - f.w0 : 0;
        f.q1 = left + x[1] > f.w0 ? _min(w[1], left + x[1] - f.w0) : 0;
        if (f.p1 < f.p0) f.p1 = f.p0; // a window wholly in the padding: no rows
        if (f.q1 < f.q0) f.q1 = f.q0;
    }

    function _conv2dReads(Step calldata step, uint256[][] calldata shapes, uint256[] memory out, uint256 element)
        private
        pure
        returns (Read[] memory r)
    {
        Field memory f = _field(step, shapes, out, element);
        r = new Read[](1 + (f.p1 - f.p0) * (f.q1 - f.q0));
        r[0] = Read(1, true, f.o);
        uint256 at = 1;
        for (uint256 p = f.p0; p < f.p1; ++p) {
            for (uint256 q = f.q0; q < f.q1; ++q) {
                r[at++] = Read(0, false, (f.h0 + p - f.top) * f.width + (f.w0 + q - f.left));
            }
        }
    }

    /// `wrap32(sum_{p, q, c} x[h, w, c] * W[p, q, c, o])` over the in-bounds pixels (padding
    /// contributes zero).
    function _conv2d(
        Step calldata step,
        uint256[][] calldata shapes,
        uint256[] memory out,
        uint256 element,
        bytes[] calldata rows
    ) private pure returns (int256) {
        Field memory f = _field(step, shapes, out, element);
        uint256[] calldata w = shapes[1];
        uint256 c = w[2];
        uint256 kw = w[1];
        uint256 dx = step.operands[0].dtype;
        uint256 dw = step.operands[1].dtype;
        if (rows.length != 1 + (f.p1 - f.p0) * (f.q1 - f.q0) || Packed.length(rows[0], dw) != w[0] * kw * c) {
            revert BadRows();
        }
        bytes calldata column = rows[0];
        int256 acc = 0;
        uint256 at = 1;
        unchecked {
            // Unchecked: see `_dot`; (p * kw + q + 1) * c <= KH * KW * C, the column's checked length.
            for (uint256 p = f.p0; p < f.p1; ++p) {
                for (uint256 q = f.q0; q < f.q1; ++q) {
                    bytes calldata pixel = rows[at++];
                    if (Packed.length(pixel, dx) != c) revert BadRows();
                    acc += _dot(pixel, dx, 0, column, dw, (p * kw + q) * c, c);
                }
            }
        }
        return Ints.wrap32(acc);
    }

    // ------------------------------------------------------------------ elementwise rescales

    /// `wrap32(x[n] + b[n])`.
    function _biasAdd(Step calldata step, uint256[][] calldata shapes, uint256 element, bytes[] calldata rows)
        private
        pure
        returns (int256)
    {
        uint256 d = shapes[1][0];
        uint256 dx = step.operands[0].dtype;
        uint256 db = step.operands[1].dtype;
        if (rows.length != 2 || Packed.length(rows[0], dx) != d || Packed.length(rows[1], db) != d) revert BadRows();
        uint256 n = element % d;
        return Ints.wrap32(Packed.at(rows[0], dx, n) + Packed.at(rows[1], db, n));
    }

    /// `saturate(floor((x * M + 2**(s-1)) / 2**s))` (no rounding term for s = 0).
    function _requantize(Step calldata step, uint256[][] calldata shapes, uint256 element, bytes[] calldata rows)
        private
        pure
        returns (int256)
    {
        uint256 d = Shapes.rowLength(shapes[0]);
        uint256 p = Shapes.size(shapes[1]);
        if (rows.length != 3 || Packed.length(rows[0], _dtype(step, 0)) != d) revert BadRows();
        if (Packed.length(rows[1], _dtype(step, 1)) != p || Packed.length(rows[2], _dtype(step, 2)) != p) revert BadRows();
        uint256 n = element % d;
        uint256 c = shapes[1].length == 0 ? 0 : n;
        int256 x = Packed.at(rows[0], _dtype(step, 0), n);
        return _rescale(x * Packed.at(rows[1], _dtype(step, 1), c), Packed.at(rows[2], _dtype(step, 2), c), _outDtype(step));
    }

    /// `saturate(floor((x * Mx + y * My + 2**(s-1)) / 2**s))` (no rounding term for s = 0).
    function _add(Step calldata step, uint256[][] calldata shapes, uint256 element, bytes[] calldata rows)
        private
        pure
        returns (int256)
    {
        uint256 d = Shapes.rowLength(shapes[0]);
        uint256 dx = _dtype(step, 0);
        uint256 dy = _dtype(step, 1);
        if (rows.length != 5 || Packed.length(rows[0], dx) != d || Packed.length(rows[1], dy) != d) revert BadRows();
        uint256 n = element % d;
        int256 total = Packed.at(rows[0], dx, n) * _param(step, shapes, rows, 2, n)
            + Packed.at(rows[1], dy, n) * _param(step, shapes, rows, 3, n);
        return _rescale(total, _param(step, shapes, rows, 4, n), _outDtype(step));
    }

    /// Parameter k's value for channel n: its one element (shape ()) or element n (shape (N,)).
    function _param(Step calldata step, uint256[][] calldata shapes, bytes[] calldata rows, uint256 k, uint256 n)
        private
        pure
        returns (int256)
    {
        bool perChannel = shapes[k].length != 0;
        bytes calldata row = rows[k];
        uint256 dtype = _dtype(step, k);
        if (Packed.length(row, dtype) != (perChannel ? shapes[k][0] : 1)) revert BadRows();
        return Packed.at(row, dtype, perChannel ? n : 0);
    }

    /// Operand k's dtype code, as the step's descriptor gives it (8 or 32; `Packed` refuses
    /// any other).
    function _dtype(Step calldata step, uint256 k) private pure returns (uint256) {
        return step.operands[k].dtype;
    }

    /// `saturate(floor((total + 2**(s-1)) / 2**s), dtype)`; `>>` on int256 is floor division.
    function _rescale(int256 total, int256 shift, uint256 dtype) private pure returns (int256) {
        if (shift < 0 || shift > 62) revert ShiftOutOfRange(shift);
        uint256 s = uint256(shift);
        if (s > 0) total += int256(1 << (s - 1));
        return Ints.saturate(total >> s, dtype);
    }

    function _min(uint256 a, uint256 b) private pure returns (uint256) {
        return a < b ? a : b;
    }
}
