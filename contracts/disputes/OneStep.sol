// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

/// The one-step executors' shared types, interface and integer helpers (issue 20).
///
/// A one-step executor is a pure contract that recomputes **one element** of one step's
/// output from the rows of its operands, written from the semantics in
/// aivm_jax/ops/reference.py: the third implementation of the opset, after the NumPy
/// reference and the JAX lowering. The dispute game (DisputeGame.sol) proves every row it
/// hands over against the agreed trace and the model commitment (docs/spec/commitments.md);
/// an executor only checks that it was given the rows it asked for, then computes.
///
/// Conventions (docs/spec/commitments.md, "Tensors, slices and codes"):
/// - `shapes[k]` is operand k's actual shape: a trace value's **row shape** (no batch axis,
///   dynamic axes at this request's lengths), a parameter's full shape.
/// - A tensor of shape (..., D) is R = size / D **rows** of D elements (rank 0: one row of
///   one element). A `Read` with `column` names row `index` of a parameter's transpose
///   W.reshape(-1, D).T (rank >= 2 only), i.e. column `index` of W with all leading axes
///   flattened in C order.
/// - `element` is the C-order flat index into the output row, of shape
///   `outputShape(step, shapes)`.
/// - A row is handed over as its **packed canonical bytes** (docs/spec/commitments.md): int8
///   one byte per element, int32 four bytes little-endian two's complement, the elements in
///   order: exactly the bytes the slice that holds the row holds, cut by the game without
///   decoding. An executor decodes only the elements it uses (`Packed.at`), each to an int256
///   holding its int8 or int32 value (sign-extended), with the operand's dtype from the step.

/// An operand of a step, as its step descriptor lists it: kind 0 = a trace value (`index` =
/// its step), kind 1 = a parameter (`index` = its position among the sorted names); `dtype`
/// 8 or 32; `shape` the row shape (values, dynamic axes at their longest) or full shape.
struct Operand {
    uint256 kind;
    uint256 index;
    uint256 dtype;
    uint256[] shape;
}

/// A decoded step descriptor (aivm_jax.disputes.step_descriptor): op name as ASCII
/// left-aligned bytes32, operands in the node's order, output dtype and row shape (dynamic
/// axes at their longest), canonical attributes (`Attrs`).
struct Step {
    bytes32 op;
    Operand[] operands;
    uint256 outDtype;
    uint256[] outShape;
    int256[] attrs;
}

/// One row an executor needs: row `index` of operand `operand`, or with `column` row
/// `index` of the parameter's transpose.
struct Read {
    uint256 operand;
    bool column;
    uint256 index;
}

/// The executor interface. Every function is pure; the game calls them with STATICCALL.
interface IOneStep {
    /// Whether this executor implements `op`.
    function handles(bytes32 op) external pure returns (bool);

    /// The output row shape for these operand shapes (reverts `BadOperands` where they
    /// do not fit the op).
    function outputShape(Step calldata step, uint256[][] calldata shapes) external pure returns (uint256[] memory);

    /// The rows needed to compute output element `element`, in the order `execute` takes
    /// them (reverts `ElementOutOfRange`).
    function reads(Step calldata step, uint256[][] calldata shapes, uint256 element)
        external
        pure
        returns (Read[] memory);

    /// Output element `element`, given `rows[i]` = the packed canonical bytes of the row
    /// `reads(...)[i]` names, in its operand's dtype (reverts `BadRows` where a row has the
    /// wrong byte length or the rows the wrong count).
    function execute(Step calldata step, uint256[][] calldata shapes, uint256 element, bytes[] calldata rows)
        external
        pure
        returns (int256);
}

error UnsupportedOp(bytes32 op);
error ElementOutOfRange(uint256 element, uint256 size);
error BadOperands();
error BadRows();
error BadAttributes();

/// Shape arithmetic on uint256[] shapes (C order).
library Shapes {
    /// The number of elements (1 for rank 0).
    function size(uint256[] memory shape) internal pure returns (uint256 n) {
        n = 1;
        for (uint256 i = 0; i < shape.length; ++i) {
            n *= shape[i];
        }
    }

    /// The length of one row: the last axis (1 for rank 0).
    function rowLength(uint256[] memory shape) internal pure returns (uint256) {
        return shape.length == 0 ? 1 : shape[shape.length - 1];
    }

    /// The multi-index of flat C-order position `flat`.
    function unravel(uint256 flat, uint256[] memory shape) internal pure returns (uint256[] memory index) {
        index = new uint256[](shape.length);
        for (uint256 i = shape.length; i > 0; --i) {
            index[i - 1] = flat % shape[i - 1];
            flat /= shape[i - 1];
        }
    }

    /// The flat C-order position of multi-index `index`.
    function ravel(uint256[] memory index, uint256[] memory shape) internal pure returns (uint256 flat) {
        for (uint256 i = 0; i < shape.length; ++i) {
            flat = flat * shape[i] + index[i];
        }
    }

    /// Whether two shapes are equal.
    function equal(uint256[] memory a, uint256[] memory b) internal pure returns (bool) {
        if (a.length != b.length) return false;
        for (uint256 i = 0; i < a.length; ++i) {
            if (a[i] != b[i]) return false;
        }
        return true;
    }

    /// Reverts `ElementOutOfRange` unless `element < size(shape)`; returns the size.
    function check(uint256 element, uint256[] memory shape) internal pure returns (uint256 n) {
        n = size(shape);
        if (element >= n) revert ElementOutOfRange(element, n);
    }
}

/// The canonical attribute words of a step descriptor (aivm_jax.disputes.attrs_words): for
/// each attribute in sorted name order, its count of integers, then the integers.
library Attrs {
    /// The integers of the `which`-th attribute (0-based, in sorted name order).
    function get(int256[] memory attrs, uint256 which) internal pure returns (int256[] memory values) {
        uint256 at = 0;
        for (uint256 a = 0; a < which; ++a) {
            if (at >= attrs.length || attrs[at] < 0) revert BadAttributes();
            at += 1 + uint256(attrs[at]);
        }
        if (at >= attrs.length || attrs[at] < 0 || at + 1 + uint256(attrs[at]) > attrs.length) revert BadAttributes();
        values = new int256[](uint256(attrs[at]));
        for (uint256 i = 0; i < values.length; ++i) {
            values[i] = attrs[at + 1 + i];
        }
    }
}

/// Integer rules shared by the ops.
library Ints {
    int256 internal constant INT32_MIN = -2 ** 31;
    int256 internal constant INT32_MAX = 2 ** 31 - 1;

    /// `x` modulo 2**32 into [-2**31, 2**31) (two's-complement wrap), as reference.wrap_int32.
    function wrap32(int256 x) internal pure returns (int256) {
        int256 m = ((x % 2 ** 32) + 2 ** 32) % 2 ** 32;
        return m >= 2 ** 31 ? m - 2 ** 32 : m;
    }

    /// `x` clipped to the range of dtype code `dtype` (8 or 32).
    function saturate(int256 x, uint256 dtype) internal pure returns (int256) {
        (int256 lo, int256 hi) = dtype == 8 ? (int256(-128), int256(127)) : (INT32_MIN, INT32_MAX);
        return x < lo ? lo : (x > hi ? hi : x);
    }

    /// floor(a / b) for b > 0 (Solidity's `/` truncates toward zero).
    function floorDiv(int256 a, int256 b) internal pure returns (int256 q) {
        q = a / b;
        if (a % b != 0 && (a < 0) != (b < 0)) q -= 1;
    }
}

/// Rows as executors take them: packed canonical bytes (int8: one byte per element; int32:
/// four bytes little-endian, two's complement), read element by element from calldata.
library Packed {
    /// Bytes per element of dtype code `dtype` (8: int8, 32: int32); reverts `BadOperands`
    /// for any other code.
    function itemsize(uint256 dtype) internal pure returns (uint256) {
        if (dtype == 8) return 1;
        if (dtype == 32) return 4;
        revert BadOperands();
    }

    /// The number of elements of `row` in dtype `dtype`; reverts `BadRows` unless its byte
    /// length is a whole number of elements.
    function length(bytes calldata row, uint256 dtype) internal pure returns (uint256) {
        uint256 size = itemsize(dtype);
        if (row.length % size != 0) revert BadRows();
        return row.length / size;
    }

    /// Element `k` of `row` in dtype `dtype`, sign-extended to int256; reverts `BadRows` past
    /// the row's last whole element.
    function at(bytes calldata row, uint256 dtype, uint256 k) internal pure returns (int256 value) {
        uint256 size = itemsize(dtype);
        if (k >= row.length / size) revert BadRows();
        assembly ("memory-safe") {
            // The element's bytes lead the loaded word (k * size + size <= row.length).
            let word := calldataload(add(row.offset, mul(k, size)))
            switch size
            case 1 { value := signextend(0, byte(0, word)) }
            default {
                // little-endian: byte 0 is the least significant
                value := signextend(3, or(or(byte(0, word), shl(8, byte(1, word))), or(shl(16, byte(2, word)), shl(24, byte(3, word)))))
            }
        }
    }
}
