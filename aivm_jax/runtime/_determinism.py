"""XLA settings the runtime applies for deterministic execution on CPU, GPU and TPU.

AIVM programs compute only with integers, and integer arithmetic in two's
complement is associative, so reduction order, tiling and sharding cannot
change a bit. The flags below are a second line of defence against the few
ways a backend could still introduce non-determinism or a float:

``--xla_gpu_deterministic_ops=true``
    GPU: refuse or replace ops whose implementation uses atomics in an
    unspecified order (scatter-add, some reductions).
``--xla_gpu_exclude_nondeterministic_ops=true``
    GPU: keep the autotuner from picking non-deterministic kernels.
``--xla_cpu_enable_fast_math=false``
    CPU: no value-changing fast-math rewrites (it is the default; we pin it).
``jax_default_matmul_precision="highest"``
    Keeps TF32 and bf16 passes off for any float dot a user runs beside us.

One setting is for speed, not determinism: ``jax_cpu_enable_async_dispatch=False``
runs a CPU computation on the calling thread instead of handing it to a worker
thread and waiting for it. ``infer`` needs its outputs on the host at once (it
hashes them), so the hand-off bought nothing and cost tens of microseconds per
call (char-gpt, 16 tokens: 0.09 ms per call instead of 0.14 ms). A user's own
``JAX_CPU_ENABLE_ASYNC_DISPATCH`` setting wins. The heap setting of
`aivm_jax.runtime._heap` (freed memory kept for reuse) is applied here too.

TPU needs no flag: its integer units are exact and the MXU is never asked for
a float product. The flags take effect only if they are set before JAX creates
its backends, which is why ``import aivm_jax`` applies them at import time;
`determinism_report` says whether they are in force, and which CPU kernels
run (`aivm_jax.ops._vnni`).
"""

from __future__ import annotations

import os

from aivm_jax.runtime._heap import heap_setting, keep_freed_heap

__all__ = ["XLA_DETERMINISM_FLAGS", "apply_determinism_flags", "determinism_report"]

XLA_DETERMINISM_FLAGS = (
    "--xla_gpu_deterministic_ops=true",
    "--xla_gpu_exclude_nondeterministic_ops=true",
    "--xla_cpu_enable_fast_math=false",
)


def apply_determinism_flags() -> None:
    """Add the determinism flags to ``XLA_FLAGS`` (keeping the user's own) and set JAX's config."""
    existing = os.environ.get("XLA_FLAGS", "")
    present = {flag.split("=")[0] for flag in existing.split()}
    extra = [flag for flag in XLA_DETERMINISM_FLAGS if flag.split("=")[0] not in present]
    if extra:
        os.environ["XLA_FLAGS"] = " ".join([existing, *extra]).strip()
    import jax

    jax.config.update("jax_default_matmul_precision", "highest")
    if "JAX_CPU_ENABLE_ASYNC_DISPATCH" not in os.environ:
        jax.config.update("jax_cpu_enable_async_dispatch", False)
    keep_freed_heap()


def determinism_report() -> dict[str, object]:
    """What is in force: the XLA flags, JAX's version and backend, the devices and the CPU kernels."""
    import jax

    from aivm_jax.ops._vnni import kernel_status

    flags = os.environ.get("XLA_FLAGS", "").split()
    return {
        "xla_flags": flags,
        "determinism_flags_set": all(f in flags for f in XLA_DETERMINISM_FLAGS),
        "jax_version": jax.__version__,
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "cpu_kernels": kernel_status(),
        "cpu_async_dispatch": bool(jax.config.read("jax_cpu_enable_async_dispatch")),
        "heap": heap_setting(),
    }
