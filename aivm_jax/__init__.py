"""aivm_jax: the AI Virtual Machine, bit-identical integer inference on JAX/XLA.

    >>> import aivm_jax
    >>> result = aivm_jax.infer("digits-mlp.aivm", images)   # doctest: +SKIP
    >>> result.outputs, result.output_hash                  # doctest: +SKIP

Importing this package sets XLA's determinism flags (see
`aivm_jax.runtime.determinism_report`); import it before JAX creates its backends.
Subpackages: `ops`, `program`, `runtime`, `quant`, `models`, `text`, `conformance`, `proofs`, `chain`.
"""

from aivm_jax.runtime._determinism import apply_determinism_flags as _apply

_apply()

from aivm_jax import _errors  # noqa: E402
from aivm_jax._errors import *  # noqa: E402,F403
from aivm_jax.ops import OPSET_VERSION  # noqa: E402
from aivm_jax.program import Node, Program, ValueSpec, load, save  # noqa: E402
from aivm_jax.runtime import InferenceResult, determinism_report, infer, quantize_input  # noqa: E402
from aivm_jax.text import EmbeddingResult, GenerationResult, embed, generate  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "OPSET_VERSION",
    "EmbeddingResult",
    "GenerationResult",
    "InferenceResult",
    "Node",
    "Program",
    "ValueSpec",
    "determinism_report",
    "embed",
    "generate",
    "infer",
    "load",
    "quantize_input",
    "save",
    *_errors.__all__,
]
