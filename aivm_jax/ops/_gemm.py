"""The exact int8 matrix product behind ``matmul`` and ``batch_matmul`` (int8 x int8 operands).

``int8_matmul(a, b)``: int8 ``(..., M, K)`` x int8 ``(K, N)`` or ``(..., K, N)``
-> int32 ``(..., M, N)``, equal bit for bit to the NumPy reference
``wrap_int32(a.astype(int64) @ b.astype(int64))``.

Why it is exact on every backend: the product is one ``dot_general`` with
int8 operands and ``preferred_element_type=int32``, so XLA multiplies and
accumulates in integer units only. Each product ``|a b| <= 2**14`` fits int32;
an int32 sum of up to ``2**17`` of them cannot overflow, and beyond that it
wraps modulo ``2**32``, which is what the semantics say; two's complement
addition is associative, so no tiling, threading or reduction order can
change a bit. No float unit is involved (a test asserts the compiled HLO has
no float type).

Which kernel runs, per backend (chosen when the computation is lowered;
every choice is exact, so none changes a bit, only the speed):

* CPU with AVX-512 VNNI: the project's own kernel (``_native/int8_gemm_vnni.cc``,
  an XLA FFI custom call; its exactness argument heads the source). It
  shifts ``a`` to unsigned (``a + 128``) for ``VPDPBUSD`` (u8 x s8 -> exact
  int32 groups of four) and starts each accumulator at ``-128 * colsum(b)``;
  all arithmetic is int32 addition modulo ``2**32``. ``kernel_status()``
  says whether it runs; ``AIVM_INT8_GEMM=xla`` turns it off.
* Any other CPU, or no C++ compiler to build the kernel: XLA's s8 x s8 -> s32
  dot (a YNNPACK fusion on x86).
* GPU / TPU: XLA's own int8 dot (cuBLASLt IMMA, the MXU's int8 mode).

Measured against onnxruntime's ``MatMulInteger`` in ``benchmarks/int8_gemm.py``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from aivm_jax._errors import OpError
from aivm_jax.ops._vnni import TARGET_NAME, kernel_status, on_cpu

__all__ = ["int8_matmul", "kernel_status", "pack_weights"]


def int8_matmul(a, b) -> jax.Array:
    """Exact int8 x int8 -> int32 matrix product over any leading batch axes (jit-able).

    Args:
      a: int8 array ``(..., M, K)`` (at least 2-D).
      b: int8 array ``(K, N)``, shared by every leading index of ``a``, or
        ``(..., K, N)`` with the same leading axes as ``a``.

    Returns:
      int32 ``(..., M, N)``; sums wrap modulo ``2**32`` (only possible for ``K > 2**17``).

    Raises:
      OpError: a dtype other than int8, or shapes that do not contract.
    """
    a, b = jnp.asarray(a), jnp.asarray(b)
    if a.dtype != jnp.int8 or b.dtype != jnp.int8:
        raise OpError(f"int8_matmul takes int8 operands, got {a.dtype} and {b.dtype}")
    if a.ndim < 2 or b.ndim < 2 or a.shape[-1] != b.shape[-2]:
        raise OpError(f"int8_matmul: {a.shape} and {b.shape} must be (..., M, K) and (K, N) or (..., K, N)")
    if b.ndim > 2 and a.shape[:-2] != b.shape[:-2]:
        raise OpError(f"int8_matmul: leading axes of {a.shape} and {b.shape} differ")
    # On the kernel, b's leading axes are a prefix of a's or all 1 (shared: vmap gives an unbatched
    # operand a size-1 axis); the kernel flattens the rest of a's into rows.
    out = jax.ShapeDtypeStruct((*a.shape[:-1], b.shape[-1]), jnp.int32)
    return on_cpu(TARGET_NAME, out, _xla_matmul, a, b, vmap_method="expand_dims")


def _xla_matmul(a: jax.Array, b: jax.Array) -> jax.Array:
    """XLA's int8 dot with int32 accumulation (``preferred_element_type=int32``)."""
    if b.ndim == 2:
        dims = (((a.ndim - 1,), (0,)), ((), ()))
    else:
        batch = tuple(range(a.ndim - 2))
        dims = (((a.ndim - 1,), (b.ndim - 2,)), (batch, batch))
    return lax.dot_general(a, b, dimension_numbers=dims, preferred_element_type=jnp.int32)


def pack_weights(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A constant int8 ``(K, N)`` weight matrix in the VNNI kernel's packed layout, for the dense
    kernel to read instead of packing it on every call: ``(panels, init)``.

    ``panels``: int8, column panels of ``NR = 16 * NV`` columns (``NV`` the kernel's
    ``panel_vectors(N)`` rule), each ``[Kp / 4][NR][4]`` bytes (``Kp`` = K rounded up to 4,
    zeros past K and N). ``init``: int32 ``(Np,)``, ``-128 * colsum(w)`` modulo ``2**32``
    (zeros past N): the accumulators' start that undoes the kernel's ``a + 128``. The same
    bytes ``pack_b_panel`` and ``panel_init`` write, so the product cannot change.
    """
    k, n = w.shape
    vectors = 1 if n <= 16 else 2 if (n <= 32 or -(-n // 32) * 32 < -(-n // 48) * 48) else 3
    width = 16 * vectors
    kp, np_ = -(-k // 4) * 4, -(-n // width) * width
    padded = np.zeros((kp, np_), np.int8)
    padded[:k, :n] = w
    panels = padded.reshape(kp // 4, 4, np_ // width, width).transpose(2, 0, 3, 1).reshape(-1)
    sums = w.astype(np.int64).sum(axis=0) * -128
    init = np.zeros((np_,), np.int32)
    init[:n] = ((sums + 2**31) % 2**32 - 2**31).astype(np.int32)  # modulo 2**32, as int32
    return np.ascontiguousarray(panels), init
