// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import "./OneStep.sol";

/// @title OneStepElementwise: the one-step executor of the elementwise, lookup, pooling and
/// layout ops.
/// @notice Recomputes one output element of `relu`, `table`, `gather`, `iota`, `argmax`,
/// `max_pool`, `avg_pool`, `reshape`, `flatten`, `transpose` or `concat` from the rows of its
/// operands, written from the semantics of aivm_jax/ops/reference.py (conventions: OneStep.sol).
/// Shapes below are row shapes (no batch axis); an `axis` attribute counts the batch axis as 0.
///
/// * `relu`: `y = max(x, 0)`, dtype kept; nothing wraps. Reads x's row holding the element.
/// * `table`: `y = values[x + 128]` for int8 `x` and the 256-entry parameter `values`.
///   Reads x's row and the one row of `values`.
/// * `gather`: `y[..., d] = table[clip(ids[...], 0, V - 1), d]` for the `(V, D)` parameter
///   `table` (an id outside `[0, V)` is clamped, never an error). Output shape `ids ++ (D,)`.
///   The table row depends on the id, which `reads` cannot see, so it reads the ids row and
///   **column `d`** of the table (its `V` elements) and picks entry `clip(id)`.
/// * `iota`: `y[..., t] = t` (int32), shaped like the operand (rank >= 1); reads nothing.
/// * `argmax`: the index of the largest value along `axis`, ties to the **lowest** index
///   (a later value must be strictly greater); int32, the operand's shape without `axis`.
///   Along the last axis it reads the one row; along another axis it reads the `S[axis]` rows
///   that hold one element each of the reduced line.
/// * `max_pool`, `avg_pool` on `(H, W, C)` with `window (kh, kw)`, `strides (sh, sw)`,
///   `padding ((top, bottom), (left, right))`: output `(Ho, Wo, C)`,
///   `Ho = (H + top + bottom - kh) / sh + 1` (likewise `Wo`). Padded positions are neither
///   maxed, summed nor counted; every window holds an in-bounds position because each pad is
///   smaller than the window. `max_pool` is the maximum of the window's in-bounds elements;
///   `avg_pool` is `floor((2 * S + n) / (2 * n))` with `S` their exact sum and `n` their count,
///   i.e. `S / n` rounded half up (`-2.5 -> -2`), always within int8. Reads the window's
///   in-bounds rows (position `(h, w)` is row `h * W + w`, of `C` elements), row-major.
/// * `reshape` (its `shape` may hold one -1, resolved from the operand's actual size),
///   `flatten` (to `(size,)`), `transpose` (output axis `i` is operand axis `perm[i]`),
///   `concat` (value operands, equal shapes off `axis`, joined along it): a copy of one operand
///   element, found by C-order index arithmetic; reads the one row that holds it.
///
/// Rows are packed canonical bytes (OneStep.sol, `Packed`); an executor decodes only the
/// elements it uses, in their operand's dtype (the step's): one per read row, the table
/// column's one entry for `gather`, the whole row for an `argmax` along the last axis.
///
/// No op of this family wraps or saturates: every output is one of the operand values, an
/// index, or a window mean of int8 values (|2 * S + n| < 2**26 for the opset's at most 2**16
/// window elements, far inside int256 and int8's range after the division). Sums use checked
/// arithmetic, which cannot trip on int32 inputs.
contract OneStepElementwise is IOneStep {
    bytes32 private constant RELU = "relu";
    bytes32 private constant TABLE = "table";
    bytes32 private constant GATHER = "gather";
    bytes32 private constant IOTA = "iota";
    bytes32 private constant ARGMAX = "argmax";
    bytes32 private constant MAX_POOL = "max_pool";
    bytes32 private constant AVG_POOL = "avg_pool";
    bytes32 private constant RESHAPE = "reshape";
    bytes32 private constant FLATTEN = "flatten";
    bytes32 private constant TRANSPOSE = "transpose";
    bytes32 private constant CONCAT = "concat";

    /// The largest attribute integer the opset allows (aivm_jax.ops._limits.MAX_ATTR_INT).
    uint256 private constant MAX_ATTR = 2 ** 24;
    /// `_plan`'s column for an argmax along the last axis: the whole one row is reduced.
    uint256 private constant WHOLE_ROW = type(uint256).max;

    /// A `table` input that is not an int8 value (its entry would not exist).
    error NotInt8(int256 value);

    /// A pool's canonical attributes (window, strides, padding).
    struct Window {
        uint256 kh;
        uint256 kw;
        uint256 sh;
        uint256 sw;
        uint256 top;
        uint256 bottom;
        uint256 left;
        uint256 right;
    }

    /// @inheritdoc IOneStep
    function handles(bytes32 op) public pure returns (bool) {
        return op == RELU || op == TABLE || op == GATHER || op == IOTA || op == ARGMAX || op == MAX_POOL
            || op == AVG_POOL || op == RESHAPE || op == FLATTEN || op == TRANSPOSE || op == CONCAT;
    }

    /// @inheritdoc IOneStep
    function outputShape(Step calldata step, uint256[][] calldata shapes) external pure returns (uint256[] memory) {
        return _outputShape(step, shapes);
    }

    /// @inheritdoc IOneStep
    function reads(Step calldata step, uint256[][] calldata shapes, uint256 element)
        external
        pure
        returns (Read[] memory plan)
    {
        (plan,) = _plan(step, shapes, element);
    }

    /// @inheritdoc IOneStep
    function execute(Step calldata step, uint256[][] calldata shapes, uint256 element, bytes[] calldata rows)
        external
        pure
        returns (int256)
    {
        (Read[] memory plan, uint256 col) = _plan(step, shapes, element);
        _checkRows(plan, step, shapes, rows);
        bytes32 op = step.op;
        if (op == IOTA) return int256(col);
        // Every other op reads one or more rows, all of one operand but for table and gather's
        // second read (their parameter).
        uint256 dtype = step.operands[plan[0].operand].dtype;
        if (op == RELU) {
            int256 x = Packed.at(rows[0], dtype, col);
            return x > 0 ? x : int256(0);
        }
        if (op == TABLE) {
            int256 x = Packed.at(rows[0], dtype, col);
            if (x < -128 || x > 127) revert NotInt8(x);
            return Packed.at(rows[1], step.operands[1].dtype, uint256(x + 128));
        }
        if (op == GATHER) {
            int256 id = Packed.at(rows[0], dtype, col);
            uint256 tableDtype = step.operands[1].dtype;
            uint256 v = Packed.length(rows[1], tableDtype); // the table column: V >= 1 entries (checked above)
            uint256 at = id < 0 ? 0 : (uint256(id) >= v ? v - 1 : uint256(id));
            return Packed.at(rows[1], tableDtype, at);
        }
        if (op == ARGMAX) return _argmax(rows, dtype, col);
        if (op == MAX_POOL) {
            int256 best = Packed.at(rows[0], dtype, col);
            for (uint256 k = 1; k < rows.length; ++k) {
                int256 v = Packed.at(rows[k], dtype, col);
                if (v > best) best = v;
            }
            return best;
        }
        if (op == AVG_POOL) {
            int256 total = 0;
            for (uint256 k = 0; k < rows.length; ++k) {
                total += Packed.at(rows[k], dtype, col);
            }
            int256 n = int256(rows.length); // >= 1: every window holds an in-bounds position
            return Ints.floorDiv(2 * total + n, 2 * n);
        }
        return Packed.at(rows[0], dtype, col); // reshape, flatten, transpose, concat: a copy
    }

    // ------------------------------------------------------------------ shapes

    /// The output row shape; reverts `BadOperands` / `BadAttributes` where the operands or the
    /// attributes do not fit the op, `UnsupportedOp` for an op of another family.
    function _outputShape(Step calldata step, uint256[][] calldata shapes) private pure returns (uint256[] memory out) {
        bytes32 op = step.op;
        if (op == RELU || op == IOTA || op == FLATTEN) {
            _operands(step, shapes, 1, false);
            _noAttrs(step);
            out = shapes[0];
            if (op == IOTA && out.length == 0) revert BadOperands(); // iota needs a row axis
            if (op == FLATTEN) {
                out = new uint256[](1);
                out[0] = _size(shapes[0]);
            }
        } else if (op == TABLE) {
            _operands(step, shapes, 2, true);
            _noAttrs(step);
            if (shapes[1].length != 1 || shapes[1][0] != 256) revert BadOperands();
            out = shapes[0];
        } else if (op == GATHER) {
            _operands(step, shapes, 2, true);
            _noAttrs(step);
            if (shapes[1].length != 2) revert BadOperands();
            uint256 r = shapes[0].length;
            out = new uint256[](r + 1);
            for (uint256 i = 0; i < r; ++i) {
                out[i] = shapes[0][i];
            }
            out[r] = shapes[1][1];
        } else if (op == ARGMAX) {
            _operands(step, shapes, 1, false);
            uint256 r = shapes[0].length;
            uint256 axis = _axis(step, r);
            out = new uint256[](r - 1);
            for (uint256 i = 0; i < r - 1; ++i) {
                out[i] = shapes[0][i < axis ? i : i + 1];
            }
        } else if (op == MAX_POOL || op == AVG_POOL) {
            _operands(step, shapes, 1, false);
            if (shapes[0].length != 3) revert BadOperands();
            Window memory w = _window(step);
            out = new uint256[](3);
            out[0] = _poolLength(shapes[0][0], w.kh, w.sh, w.top, w.bottom);
            out[1] = _poolLength(shapes[0][1], w.kw, w.sw, w.left, w.right);
            out[2] = shapes[0][2];
        } else if (op == RESHAPE) {
            _operands(step, shapes, 1, false);
            out = _reshaped(step, _size(shapes[0]));
        } else if (op == TRANSPOSE) {
            _operands(step, shapes, 1, false);
            uint256[] memory perm = _perm(step, shapes[0].length);
            out = new uint256[](perm.length);
            for (uint256 i = 0; i < perm.length; ++i) {
                out[i] = shapes[0][perm[i]];
            }
        } else if (op == CONCAT) {
            _operands(step, shapes, 0, false);
            uint256 r = shapes[0].length;
            uint256 axis = _axis(step, r);
            out = shapes[0];
            for (uint256 k = 1; k < shapes.length; ++k) {
                if (shapes[k].length != r) revert BadOperands();
                for (uint256 i = 0; i < r; ++i) {
                    if (i == axis) out[i] += shapes[k][i];
                    else if (shapes[k][i] != out[i]) revert BadOperands();
                }
            }
        } else {
            revert UnsupportedOp(op);
        }
    }

    /// Checks the operand list against the descriptor: `count` operands (0: one or more), all
    /// trace values except a parameter second operand where `paramSecond`; each actual shape
    /// of the descriptor's rank, a parameter's equal to it, a value's axes in 1..its longest.
    function _operands(Step calldata step, uint256[][] calldata shapes, uint256 count, bool paramSecond)
        private
        pure
    {
        uint256 n = shapes.length;
        if (n == 0 || n != step.operands.length || (count != 0 && n != count)) revert BadOperands();
        for (uint256 k = 0; k < n; ++k) {
            Operand calldata o = step.operands[k];
            bool param = paramSecond && k == 1;
            if (o.kind != (param ? 1 : 0) || shapes[k].length != o.shape.length) revert BadOperands();
            for (uint256 i = 0; i < o.shape.length; ++i) {
                uint256 d = shapes[k][i];
                if (d == 0 || d > o.shape[i] || (param && d != o.shape[i])) revert BadOperands();
            }
        }
    }

    /// Reverts `BadAttributes` unless the op has no attributes.
    function _noAttrs(Step calldata step) private pure {
        if (step.attrs.length != 0) revert BadAttributes();
    }

    /// The integers of the op's one attribute (`argmax`, `concat`: axis; `reshape`: shape;
    /// `transpose`: perm), `BadAttributes` unless it is the only one.
    function _only(Step calldata step) private pure returns (int256[] calldata values) {
        int256[] calldata a = step.attrs;
        if (a.length == 0 || a[0] < 0 || uint256(a[0]) != a.length - 1) revert BadAttributes();
        return a[1:];
    }

    /// The `axis` attribute of an operand of row rank `r` as a row axis in [0, r): the
    /// attribute counts the batch axis as 0 and may be negative (from the end of the full
    /// rank r + 1); naming the batch axis or past the last axis reverts `BadAttributes`.
    function _axis(Step calldata step, uint256 r) private pure returns (uint256) {
        int256[] calldata values = _only(step);
        if (values.length != 1) revert BadAttributes();
        int256 axis = values[0];
        int256 full = int256(r + 1);
        if (axis < 0) axis += full;
        if (axis < 1 || axis >= full) revert BadAttributes();
        return uint256(axis - 1);
    }

    /// `transpose`'s perm: a permutation of 0..r-1 for row rank `r`.
    function _perm(Step calldata step, uint256 r) private pure returns (uint256[] memory perm) {
        int256[] calldata values = _only(step);
        if (values.length != r) revert BadAttributes();
        perm = new uint256[](r);
        bool[] memory seen = new bool[](r);
        for (uint256 i = 0; i < r; ++i) {
            int256 p = values[i];
            if (p < 0 || p >= int256(r) || seen[uint256(p)]) revert BadAttributes();
            seen[uint256(p)] = true;
            perm[i] = uint256(p);
        }
    }

    /// `reshape`'s target shape with its -1 (at most one) resolved so that it holds `size`
    /// elements; `BadOperands` where no such shape exists.
    function _reshaped(Step calldata step, uint256 size) private pure returns (uint256[] memory out) {
        int256[] calldata values = _only(step);
        if (values.length > 7) revert BadAttributes(); // a row has at most MAX_RANK - 1 = 7 axes
        out = new uint256[](values.length);
        uint256 known = 1;
        uint256 free = type(uint256).max;
        for (uint256 i = 0; i < values.length; ++i) {
            int256 d = values[i];
            if (d == -1 && free == type(uint256).max) {
                free = i;
            } else {
                if (d < 1 || uint256(d) > MAX_ATTR) revert BadAttributes();
                out[i] = uint256(d);
                known *= uint256(d); // at most 7 factors of at most 2**24: no overflow
            }
        }
        if (free == type(uint256).max) {
            if (known != size) revert BadOperands();
        } else {
            if (size % known != 0) revert BadOperands();
            out[free] = size / known;
        }
    }

    /// A pool's canonical attributes, in sorted name order padding (4), strides (2),
    /// window (2), and nothing else; each pad smaller than the window along its axis.
    function _window(Step calldata step) private pure returns (Window memory w) {
        int256[] memory a = step.attrs;
        if (a.length != 11) revert BadAttributes();
        int256[] memory pad = Attrs.get(a, 0);
        int256[] memory strides = Attrs.get(a, 1);
        int256[] memory window = Attrs.get(a, 2);
        if (pad.length != 4 || strides.length != 2 || window.length != 2) revert BadAttributes();
        w.top = _attr(pad[0], 0);
        w.bottom = _attr(pad[1], 0);
        w.left = _attr(pad[2], 0);
        w.right = _attr(pad[3], 0);
        w.sh = _attr(strides[0], 1);
        w.sw = _attr(strides[1], 1);
        w.kh = _attr(window[0], 1);
        w.kw = _attr(window[1], 1);
        if (w.top >= w.kh || w.bottom >= w.kh || w.left >= w.kw || w.right >= w.kw) revert BadAttributes();
    }

    /// An attribute integer in [minimum, MAX_ATTR].
    function _attr(int256 v, int256 minimum) private pure returns (uint256) {
        if (v < minimum || v > int256(MAX_ATTR)) revert BadAttributes();
        return uint256(v);
    }

    /// `(size + lo + hi - k) / stride + 1`: output positions of a pool along one axis.
    function _poolLength(uint256 size, uint256 k, uint256 stride, uint256 lo, uint256 hi)
        private
        pure
        returns (uint256)
    {
        if (size + lo + hi < k) revert BadOperands();
        return (size + lo + hi - k) / stride + 1;
    }

    // ------------------------------------------------------------------ reads

    /// The reads of output element `element` and the column of the element within each read
    /// row (`WHOLE_ROW` for an argmax along the last axis; the output position for iota).
    function _plan(Step calldata step, uint256[][] calldata shapes, uint256 element)
        private
        pure
        returns (Read[] memory plan, uint256 col)
    {
        uint256[] memory out = _outputShape(step, shapes);
        // slither-disable-next-line unused-return -- Shapes.check is called for its revert past the output
        Shapes.check(element, out);
        bytes32 op = step.op;
        uint256 row;
        if (op == IOTA) {
            return (new Read[](0), element % out[out.length - 1]);
        } else if (op == RELU || op == RESHAPE || op == FLATTEN) {
            (row, col) = _at(element, shapes[0]); // the flat index is the operand's
            plan = _one(0, row);
        } else if (op == TABLE) {
            (row, col) = _at(element, shapes[0]);
            plan = new Read[](2);
            plan[0] = Read(0, false, row);
            plan[1] = Read(1, false, 0);
        } else if (op == GATHER) {
            uint256 d = out[out.length - 1];
            (row, col) = _at(element / d, shapes[0]);
            plan = new Read[](2);
            plan[0] = Read(0, false, row);
            plan[1] = Read(1, true, element % d);
        } else if (op == ARGMAX) {
            (plan, col) = _argmaxPlan(step, shapes[0], out, element);
        } else if (op == MAX_POOL || op == AVG_POOL) {
            (plan, col) = _poolPlan(step, shapes[0], out, element);
        } else if (op == TRANSPOSE) {
            uint256[] memory perm = _perm(step, shapes[0].length);
            uint256[] memory o = Shapes.unravel(element, out);
            uint256[] memory index = new uint256[](perm.length);
            for (uint256 i = 0; i < perm.length; ++i) {
                index[perm[i]] = o[i];
            }
            (row, col) = _at(Shapes.ravel(index, shapes[0]), shapes[0]);
            plan = _one(0, row);
        } else {
            // CONCAT (any other op reverted in _outputShape)
            uint256 axis = _axis(step, out.length);
            uint256[] memory index = Shapes.unravel(element, out);
            uint256 k = 0;
            while (index[axis] >= shapes[k][axis]) {
                index[axis] -= shapes[k][axis];
                ++k;
            }
            (row, col) = _at(Shapes.ravel(index, shapes[k]), shapes[k]);
            plan = _one(k, row);
        }
    }

    /// argmax: the row itself along the last axis, else the `S[axis]` rows that hold the
    /// reduced line (in order of the reduced index), all at one column.
    function _argmaxPlan(Step calldata step, uint256[] calldata shape, uint256[] memory out, uint256 element)
        private
        pure
        returns (Read[] memory plan, uint256 col)
    {
        uint256 r = shape.length;
        uint256 axis = _axis(step, r);
        if (axis == r - 1) return (_one(0, element), WHOLE_ROW); // the output index is the row's
        uint256[] memory o = Shapes.unravel(element, out);
        col = o[r - 2]; // the last axis is kept
        uint256 base = 0; // row index (over shape[:-1]) of the line's first element
        uint256 stride = 1; // row-index step between consecutive elements of the line
        for (uint256 i = 0; i < r - 1; ++i) {
            base = base * shape[i] + (i < axis ? o[i] : (i == axis ? 0 : o[i - 1]));
            if (i > axis) stride *= shape[i];
        }
        plan = new Read[](shape[axis]);
        for (uint256 k = 0; k < plan.length; ++k) {
            plan[k] = Read(0, false, base + k * stride);
        }
    }

    /// Pools: the in-bounds positions of the element's window, row-major, at its channel.
    function _poolPlan(Step calldata step, uint256[] calldata shape, uint256[] memory out, uint256 element)
        private
        pure
        returns (Read[] memory plan, uint256 col)
    {
        Window memory w = _window(step);
        uint256[] memory o = Shapes.unravel(element, out);
        col = o[2];
        // Window rows [i*sh - top, i*sh - top + kh) clipped to [0, H); top < kh keeps the end > 0.
        uint256 h0 = o[0] * w.sh;
        uint256 h1 = h0 + w.kh - w.top;
        h0 = h0 > w.top ? h0 - w.top : 0;
        if (h1 > shape[0]) h1 = shape[0];
        uint256 w0 = o[1] * w.sw;
        uint256 w1 = w0 + w.kw - w.left;
        w0 = w0 > w.left ? w0 - w.left : 0;
        if (w1 > shape[1]) w1 = shape[1];
        plan = new Read[]((h1 - h0) * (w1 - w0));
        uint256 k = 0;
        for (uint256 h = h0; h < h1; ++h) {
            for (uint256 x = w0; x < w1; ++x) {
                plan[k++] = Read(0, false, h * shape[1] + x);
            }
        }
    }

    /// argmax over the reduced line: `rows[0]` (WHOLE_ROW) or element `col` of each row, in
    /// dtype `dtype`; the first maximum wins (a later value must be strictly greater).
    function _argmax(bytes[] calldata rows, uint256 dtype, uint256 col) private pure returns (int256) {
        uint256 best = 0;
        if (col == WHOLE_ROW) {
            bytes calldata line = rows[0];
            uint256 n = Packed.length(line, dtype);
            int256 top = Packed.at(line, dtype, 0);
            for (uint256 k = 1; k < n; ++k) {
                int256 v = Packed.at(line, dtype, k);
                if (v > top) (top, best) = (v, k);
            }
        } else {
            int256 top = Packed.at(rows[0], dtype, col);
            for (uint256 k = 1; k < rows.length; ++k) {
                int256 v = Packed.at(rows[k], dtype, col);
                if (v > top) (top, best) = (v, k);
            }
        }
        return int256(best);
    }

    /// Reverts `BadRows` unless `rows` holds one row per read, each of the expected length in
    /// its operand's dtype: the operand's last axis (1 for rank 0), or a column's `size / D`.
    function _checkRows(Read[] memory plan, Step calldata step, uint256[][] calldata shapes, bytes[] calldata rows)
        private
        pure
    {
        if (rows.length != plan.length) revert BadRows();
        for (uint256 i = 0; i < plan.length; ++i) {
            uint256 k = plan[i].operand;
            uint256[] calldata shape = shapes[k];
            uint256 d = shape.length == 0 ? 1 : shape[shape.length - 1];
            if (Packed.length(rows[i], step.operands[k].dtype) != (plan[i].column ? _size(shape) / d : d)) {
                revert BadRows();
            }
        }
    }

    /// Row and column of C-order flat position `flat` in a tensor of shape `shape`.
    function _at(uint256 flat, uint256[] calldata shape) private pure returns (uint256, uint256) {
        uint256 d = shape.length == 0 ? 1 : shape[shape.length - 1];
        return (flat / d, flat % d);
    }

    /// The number of elements of a calldata shape (1 for rank 0).
    function _size(uint256[] calldata shape) private pure returns (uint256 n) {
        n = 1;
        for (uint256 i = 0; i < shape.length; ++i) {
            n *= shape[i];
        }
    }

    /// A plan of one row read.
    function _one(uint256 operand, uint256 row) private pure returns (Read[] memory plan) {
        plan = new Read[](1);
        plan[0] = Read(operand, false, row);
    }
}
