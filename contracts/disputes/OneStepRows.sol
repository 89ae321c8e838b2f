// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import "./OneStep.sol";

/// @title OneStepRows: the one-step executors of the row-wise ops (issue 20).
/// @notice Recomputes one output element of `layer_norm`, `softmax` or `mean_pool` from the
/// rows of its operands, written from the semantics of aivm_jax/ops/reference.py (the third
/// implementation of these ops, after the NumPy reference and the JAX lowering).
///
/// Every op here reduces over whole rows, so `reads` asks for whole rows:
/// - `layer_norm(x, gamma, beta; eps)`: element e of the output row needs row e / D of `x`
///   (D = its last axis) and the single rows of `gamma` and `beta` (rank 1).
/// - `softmax(x, mask, table; causal, out_bits)`: element e needs scores row e / Tk of `x`,
///   the mask operand's row (a (batch, Tk) activation: one row of Tk) and the table (rank 1:
///   one row of 2^k entries).
/// - `mean_pool(x, mask)`: element d of the (D,) output needs column d of the (T, D) row, so
///   the T rows of `x`, then the mask row (T,).
///
/// `outputShape` (and so `reads` and `execute`) refuses with `BadOperands` operand shapes
/// that do not fit the op as aivm_jax/ops/_opset.py checks it: the operand count, kinds and
/// dtypes of the descriptor, an actual shape of the descriptor's rank with each axis in
/// 1..the descriptor's (dynamic axes shrink, nothing grows), a parameter's shape exactly the
/// descriptor's, and the op's own rank and size rules. Attributes out of their canonical
/// range revert `BadAttributes`.
///
/// Rows are packed canonical bytes (OneStep.sol, `Packed`): each element used is decoded from
/// its operand's dtype, so every value is an int8 or int32 (the game proves the bytes against
/// the trace and the model commitment). Arithmetic: int256 with Solidity's checked
/// operations; every intermediate below is bounded for such values far under 2^255 (bounds
/// at each op).
contract OneStepRows is IOneStep {
    bytes32 private constant LAYER_NORM = "layer_norm";
    bytes32 private constant SOFTMAX = "softmax";
    bytes32 private constant MEAN_POOL = "mean_pool";

    uint256 private constant VALUE = 0; // operand kind: a trace value
    uint256 private constant PARAM = 1; // operand kind: a parameter

    /// reference.LAYER_NORM_INPUT_LIMIT: layer_norm clips its input to [-2^24, 2^24].
    int256 private constant LAYER_NORM_INPUT_LIMIT = 2 ** 24;
    /// _limits.LAYER_NORM_MAX_AXIS: the normalized axis has 1..8192 elements.
    uint256 private constant LAYER_NORM_MAX_AXIS = 8192;
    /// layer_norm's `eps` lies in [0, 2^31).
    int256 private constant MAX_EPS = 2 ** 31 - 1;
    /// softmax's table has 2^k entries, 1 <= k <= 16.
    uint256 private constant MAX_TABLE = 2 ** 16;
    /// softmax's `out_bits` lies in 1..30.
    int256 private constant MAX_OUT_BITS = 30;

    /// Whether `op` is `layer_norm`, `softmax` or `mean_pool`.
    function handles(bytes32 op) external pure returns (bool) {
        return op == LAYER_NORM || op == SOFTMAX || op == MEAN_POOL;
    }

    /// The output row shape: `x`'s row shape for `layer_norm` and `softmax`, (D,) for
    /// `mean_pool` of a (T, D) row. Reverts `BadOperands`, `BadAttributes` or
    /// `UnsupportedOp` (see the contract's notice).
    function outputShape(Step calldata step, uint256[][] calldata shapes) external pure returns (uint256[] memory) {
        return _outputShape(step, shapes);
    }

    /// The rows that output element `element` needs, in `execute`'s order (contract notice).
    function reads(Step calldata step, uint256[][] calldata shapes, uint256 element)
        external
        pure
        returns (Read[] memory list)
    {
        // slither-disable-next-line unused-return -- Shapes.check is called for its revert past the output
        Shapes.check(element, _outputShape(step, shapes));
        bytes32 op = step.op;
        if (op == MEAN_POOL) {
            uint256 t = shapes[0][0];
            list = new Read[](t + 1);
            for (uint256 i = 0; i < t; ++i) {
                list[i] = Read(0, false, i);
            }
            list[t] = Read(1, false, 0);
        } else {
            // layer_norm and softmax: the row of x holding the element, then the single rows
            // of the two other operands.
            list = new Read[](3);
            list[0] = Read(0, false, element / Shapes.rowLength(shapes[0]));
            list[1] = Read(1, false, 0);
            list[2] = Read(2, false, 0);
        }
    }

    /// Output element `element` from `rows` (the packed bytes of `reads(step, shapes,
    /// element)`). Reverts `ElementOutOfRange` past the output, `BadRows` on a wrong row count
    /// or byte length.
    function execute(Step calldata step, uint256[][] calldata shapes, uint256 element, bytes[] calldata rows)
        external
        pure
        returns (int256)
    {
        // slither-disable-next-line unused-return -- Shapes.check is called for its revert past the output
        Shapes.check(element, _outputShape(step, shapes));
        bytes32 op = step.op;
        if (op == LAYER_NORM) return _layerNorm(step.attrs, shapes, element, rows);
        if (op == SOFTMAX) return _softmax(step.attrs, shapes, element, rows);
        return _meanPool(step.operands[0].dtype, shapes, element, rows);
    }

    /// The floor of the exact square root of `a`, for every uint256 (layer_norm's `isqrt`,
    /// Python's math.isqrt).
    /// @dev Newton's method from above: x0 = 2^ceil(bits(a) / 2) >= sqrt(a), then
    /// x <- floor((x + floor(a / x)) / 2) while that decreases. For x > s = isqrt(a),
    /// x >= s + 1 > sqrt(a), so a / x < x and the step strictly decreases, yet stays >= s
    /// (floor((x + a/x) / 2) >= floor(sqrt(a)) by AM-GM, and flooring a/x first changes
    /// nothing: floor((x + floor(a/x)) / 2) = floor(floor(x + a/x) / 2)); at x = s,
    /// floor(a / s) >= s so it stops. The result is exactly s: no final correction is needed.
    /// x <= 2^128 and a / x < 2^256 / x, so x + a / x < 2^129 never overflows.
    function isqrt(uint256 a) public pure returns (uint256 x) {
        if (a == 0) return 0;
        x = uint256(1) << ((_log2(a) + 2) / 2);
        while (true) {
            uint256 y = (x + a / x) >> 1;
            if (y >= x) return x;
            x = y;
        }
    }

    // ------------------------------------------------------------------------------ layer_norm

    /// `layer_norm` over the last axis, element (row r, column d) with D = the row length:
    /// v = clip(x, -2^24, 2^24); mean = floor(sum(v) / D); c = v - mean;
    /// var = floor(sum(c^2) / D); r = max(isqrt(var + eps), 1);
    /// y = floor((2 c_d gamma_d + r) / (2 r)) + beta_d (c gamma / r rounded half up, plus beta),
    /// saturated to int32. Bounds: |sum(v)| <= 2^37, |c| <= 2^25, sum(c^2) <= 2^63,
    /// |2 c gamma| <= 2^57: far from int256's limits.
    function _layerNorm(int256[] calldata attrs, uint256[][] calldata shapes, uint256 element, bytes[] calldata rows)
        private
        pure
        returns (int256)
    {
        // x, gamma and beta are int32 (outputShape).
        uint256 d = Shapes.rowLength(shapes[0]);
        if (rows.length != 3) revert BadRows();
        bytes calldata x = rows[0];
        if (Packed.length(x, 32) != d || Packed.length(rows[1], 32) != d || Packed.length(rows[2], 32) != d) {
            revert BadRows();
        }
        int256 size = int256(d); // d <= 8192 (outputShape)
        int256 sum = 0;
        for (uint256 i = 0; i < d; ++i) {
            sum += _clip(Packed.at(x, 32, i));
        }
        int256 mean = Ints.floorDiv(sum, size);
        int256 squares = 0;
        for (uint256 i = 0; i < d; ++i) {
            int256 c = _clip(Packed.at(x, 32, i)) - mean;
            squares += c * c;
        }
        // squares >= 0, so Solidity's truncating division is the floor.
        uint256 root = isqrt(uint256(squares / size) + uint256(attrs[1]));
        if (root == 0) root = 1;
        uint256 column = element % d;
        int256 centred = _clip(Packed.at(x, 32, column)) - mean;
        int256 r = int256(root); // root <= 2^32
        int256 y = Ints.floorDiv(2 * centred * Packed.at(rows[1], 32, column) + r, 2 * r) + Packed.at(rows[2], 32, column);
        return Ints.saturate(y, 32);
    }

    function _clip(int256 v) private pure returns (int256) {
        if (v > LAYER_NORM_INPUT_LIMIT) return LAYER_NORM_INPUT_LIMIT;
        if (v < -LAYER_NORM_INPUT_LIMIT) return -LAYER_NORM_INPUT_LIMIT;
        return v;
    }

    // --------------------------------------------------------------------------------- softmax

    /// `softmax` over the last axis in base 2, element (query i, key j) of a row of shape
    /// (..., Tq, Tk), with 2^k = the table's length:
    /// 1. key t is kept where mask_t != 0 and, if `causal`, t <= i + (Tk - Tq);
    /// 2. m = the max of the kept scores (no kept key: the element is 0);
    /// 3. e_t = table[(m - x_t) mod 2^k] >> min((m - x_t) div 2^k, 31) for kept t, else 0;
    /// 4. S = sum(e); S = 0 gives 0; else inv = floor(2^62 / S) and
    ///    p = floor((e_j inv + 2^(61 - out_bits)) / 2^(62 - out_bits)).
    /// Shifts of signed values are floors, as the reference's `//`. Bounds (int32 scores,
    /// table values in [0, 2^30] as the opset checks): m - x_t < 2^32, S <= Tk 2^30 < 2^57,
    /// e_j inv <= 2^62; even any int32 table keeps |e_j inv| < 2^94. p <= 2^out_bits fits int32.
    function _softmax(int256[] calldata attrs, uint256[][] calldata shapes, uint256 element, bytes[] calldata rows)
        private
        pure
        returns (int256)
    {
        // x and the table are int32, the mask int8 (outputShape).
        uint256[] calldata shape = shapes[0];
        uint256 tk = shape[shape.length - 1];
        uint256 entries = shapes[2][0];
        if (rows.length != 3) revert BadRows();
        if (Packed.length(rows[0], 32) != tk || Packed.length(rows[1], 8) != tk || Packed.length(rows[2], 32) != entries) {
            revert BadRows();
        }
        uint256 key = element % tk;
        // Keys t < limit may be kept: every key, or with `causal` the t with t + Tq <= i + Tk.
        uint256 limit = tk;
        if (attrs[1] != 0) {
            uint256 tq = shape[shape.length - 2];
            uint256 reach = (element / tk) % tq + tk + 1; // i + Tk + 1
            limit = reach > tq ? reach - tq : 0;
        }
        bytes calldata x = rows[0];
        bytes calldata mask = rows[1];
        bool any = false;
        int256 top = 0;
        for (uint256 t = 0; t < limit; ++t) {
            if (Packed.at(mask, 8, t) != 0) {
                int256 v = Packed.at(x, 32, t);
                if (!any || v > top) {
                    top = v;
                    any = true;
                }
            }
        }
        if (!any) return 0; // every key masked: S = 0
        bytes calldata table = rows[2];
        uint256 bits = _log2(entries);
        int256 total = 0;
        for (uint256 t = 0; t < limit; ++t) {
            if (Packed.at(mask, 8, t) != 0) total += _exp2(top - Packed.at(x, 32, t), table, bits);
        }
        if (total <= 0) return 0;
        if (key >= limit || Packed.at(mask, 8, key) == 0) return 0; // e_j = 0: p = floor(2^(61-b) / 2^(62-b)) = 0
        uint256 outBits = uint256(attrs[3]);
        int256 inverse = 2 ** 62 / total; // total > 0: truncation is the floor
        // slither-disable-next-line divide-before-multiply -- the reference's one reciprocal per row, on purpose
        return (_exp2(top - Packed.at(x, 32, key), table, bits) * inverse + int256(1 << (61 - outBits))) >> (62 - outBits);
    }

    /// table[d mod 2^bits] >> min(d div 2^bits, 31) for a distance d >= 0 (the table: 2^bits
    /// packed int32 entries).
    function _exp2(int256 distance, bytes calldata table, uint256 bits) private pure returns (int256) {
        uint256 d = uint256(distance);
        uint256 whole = d >> bits;
        return Packed.at(table, 32, d & ((uint256(1) << bits) - 1)) >> (whole > 31 ? 31 : whole);
    }

    // ------------------------------------------------------------------------------- mean_pool

    /// `mean_pool` of a (T, D) row, element d: with S = sum of x[t, d] over the t where
    /// mask_t != 0 and n their count, y = floor((2 S + n) / (2 n)) (the mean rounded half up),
    /// y = 0 when n = 0. |S| <= T 2^31 <= 2^57; y lies in int32's range (a mean of int32s).
    /// Only element `element` of each of the T rows is decoded (`dtype`: x's, 8 or 32).
    function _meanPool(uint256 dtype, uint256[][] calldata shapes, uint256 element, bytes[] calldata rows)
        private
        pure
        returns (int256)
    {
        uint256 t = shapes[0][0];
        uint256 d = shapes[0][1];
        if (rows.length != t + 1 || Packed.length(rows[t], 8) != t) revert BadRows();
        bytes calldata mask = rows[t];
        int256 sum = 0;
        int256 count = 0;
        for (uint256 i = 0; i < t; ++i) {
            bytes calldata row = rows[i];
            if (Packed.length(row, dtype) != d) revert BadRows();
            if (Packed.at(mask, 8, i) != 0) {
                sum += Packed.at(row, dtype, element);
                ++count;
            }
        }
        if (count == 0) return 0;
        return Ints.floorDiv(2 * sum + count, 2 * count);
    }

    // ---------------------------------------------------------------------------------- shapes

    /// The output row shape after every check of the contract's notice.
    function _outputShape(Step calldata step, uint256[][] calldata shapes) private pure returns (uint256[] memory) {
        bytes32 op = step.op;
        int256[] calldata attrs = step.attrs;
        if (op == LAYER_NORM) {
            _operands(step, shapes, 3);
            _operand(step, shapes, 0, VALUE, 32);
            _operand(step, shapes, 1, PARAM, 32);
            _operand(step, shapes, 2, PARAM, 32);
            if (attrs.length != 2 || attrs[0] != 1 || attrs[1] < 0 || attrs[1] > MAX_EPS) revert BadAttributes();
            uint256[] calldata x = shapes[0];
            if (x.length < 1) revert BadOperands();
            uint256 d = x[x.length - 1];
            if (d > LAYER_NORM_MAX_AXIS || !_isVector(shapes[1], d) || !_isVector(shapes[2], d)) revert BadOperands();
            return x;
        }
        if (op == SOFTMAX) {
            _operands(step, shapes, 3);
            _operand(step, shapes, 0, VALUE, 32);
            _operand(step, shapes, 1, VALUE, 8);
            _operand(step, shapes, 2, PARAM, 32);
            if (
                attrs.length != 4 || attrs[0] != 1 || attrs[1] < 0 || attrs[1] > 1 || attrs[2] != 1 || attrs[3] < 1
                    || attrs[3] > MAX_OUT_BITS
            ) revert BadAttributes();
            uint256[] calldata x = shapes[0];
            if (x.length < 2 || !_isVector(shapes[1], x[x.length - 1]) || shapes[2].length != 1) revert BadOperands();
            uint256 n = shapes[2][0];
            if (n < 2 || n > MAX_TABLE || n & (n - 1) != 0) revert BadOperands();
            return x;
        }
        if (op == MEAN_POOL) {
            _operands(step, shapes, 2);
            _operand(step, shapes, 0, VALUE, 0);
            _operand(step, shapes, 1, VALUE, 8);
            if (attrs.length != 0) revert BadAttributes();
            uint256[] calldata x = shapes[0];
            if (x.length != 2 || !_isVector(shapes[1], x[0])) revert BadOperands();
            uint256[] memory out = new uint256[](1);
            out[0] = x[1];
            return out;
        }
        revert UnsupportedOp(op);
    }

    /// The step has `count` operands and `shapes` one shape per operand.
    function _operands(Step calldata step, uint256[][] calldata shapes, uint256 count) private pure {
        if (step.operands.length != count || shapes.length != count) revert BadOperands();
    }

    /// Operand `k` is of `kind` and dtype `dtype` (0: int8 or int32), and its actual shape fits
    /// the descriptor's: a parameter's equal, a value's of the same rank with each axis in
    /// 1..the descriptor's.
    function _operand(Step calldata step, uint256[][] calldata shapes, uint256 k, uint256 kind, uint256 dtype)
        private
        pure
    {
        Operand calldata operand = step.operands[k];
        uint256 code = operand.dtype;
        if (operand.kind != kind || (dtype == 0 ? (code != 8 && code != 32) : code != dtype)) revert BadOperands();
        uint256[] calldata declared = operand.shape;
        uint256[] calldata actual = shapes[k];
        if (actual.length != declared.length) revert BadOperands();
        for (uint256 i = 0; i < actual.length; ++i) {
            uint256 n = actual[i];
            if (n == 0 || n > declared[i] || (kind == PARAM && n != declared[i])) revert BadOperands();
        }
    }

    /// Whether `shape` is (n,).
    function _isVector(uint256[] calldata shape, uint256 n) private pure returns (bool) {
        return shape.length == 1 && shape[0] == n;
    }

    /// floor(log2(a)) for a > 0.
    function _log2(uint256 a) private pure returns (uint256 n) {
        for (uint256 step = 128; step > 0; step >>= 1) {
            if (a >> step != 0) {
                a >>= step;
                n += step;
            }
        }
    }
}
