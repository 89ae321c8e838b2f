"""From a program to an EZKL circuit: ONNX export, settings derived from integer bounds, compilation."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

from aivm_jax.program import Program
from aivm_jax.proofs._export import DIV_BITS, export_onnx
from aivm_jax.proofs._ezkl import call, ezkl

__all__ = ["CircuitFiles", "build_circuit", "circuit_run_args"]


@dataclasses.dataclass(frozen=True)
class CircuitFiles:
    """Paths of one program's circuit: ONNX model, EZKL settings and compiled circuit."""

    directory: Path

    @property
    def onnx(self) -> Path:
        return self.directory / "model.onnx"

    @property
    def settings(self) -> Path:
        return self.directory / "settings.json"

    @property
    def compiled(self) -> Path:
        return self.directory / "circuit.ezkl"

    def logrows(self) -> int:
        return int(json.loads(self.settings.read_text())["run_args"]["logrows"])


def _digits(base: int, bound: int) -> int:
    """Digits in ``base`` that represent every ``|v| <= bound`` (the smallest L with base**L > bound)."""
    digits, reach = 1, base
    while reach <= bound:
        digits, reach = digits + 1, reach * base
    return digits


def circuit_run_args(program: Program) -> tuple[bytes, dict[str, object]]:
    """ONNX bytes and EZKL run arguments, all derived from the program's integer bounds.

    * scales 0: every tensor holds integers, represented exactly;
    * visibility: input and output public (they are the proof's claim), weights
      fixed (baked into the circuit, so the verifying key binds them);
    * ``decomp_legs``: base-``2**DIV_BITS`` digits (EZKL's decomposition base)
      enough for every value compared and, for every division by ``d``, for
      its dividend and for ``2 d`` (its rescale decomposes the dividend, the
      quotient and the distance ``|y - q d| < d``);
    * ``num_inner_cols`` 1: one advice column per role, so the fewest
      commitments for the verifier to check (at twice the rows per column);
    * ``lookup_range``: the range of table indices (0..255) when the program
      uses ``table``, else the int8 range.
    """
    exported = export_onnx(program)
    legs = max(
        2,
        *(_digits(2**DIV_BITS, max(2 * divisor, bound)) for divisor, bound in exported.divisions),
        _digits(2**DIV_BITS, exported.max_value),
    )
    args = {
        "input_scale": 0,
        "param_scale": 0,
        "input_visibility": "public",
        "output_visibility": "public",
        "param_visibility": "fixed",
        "decomp_legs": legs,
        "num_inner_cols": 1,
        "lookup_range": (-256, 256) if exported.uses_tables else (-128, 128),
    }
    return exported.onnx_bytes, args


def _probe_inputs(program: Program) -> list[np.ndarray]:
    spec = program.inputs[0]
    info = np.iinfo(spec.dtype)
    size = int(np.prod(spec.shape))
    rng = np.random.default_rng(0)
    alternating = np.where(np.arange(size) % 2 == 0, info.min, info.max)
    return [
        np.full(size, info.min),
        np.full(size, info.max),
        alternating,
        alternating[::-1].copy(),
        rng.integers(info.min, info.max, size, endpoint=True),
    ]


def _mock_accepts(files: CircuitFiles, row: np.ndarray) -> bool:
    from aivm_jax._errors import ProofError

    probe = files.directory / "probe-input.json"
    witness = files.directory / "probe-witness.json"
    probe.write_text(json.dumps({"input_data": [row.astype(np.int64).tolist()]}))
    try:
        call("gen_witness", str(probe), str(files.compiled), str(witness))
        return bool(call("mock", str(witness), str(files.compiled)))
    except ProofError:
        return False
    finally:
        probe.unlink(missing_ok=True)
        witness.unlink(missing_ok=True)


MIN_LOGROWS = DIV_BITS + 1  # a division's range-check table (2**DIV_BITS rows) must fit one column
MAX_LOGROWS = 22
MAX_COLUMN_SETS_LOG2 = 0
"""A circuit of ``R`` rows gets ``2**logrows >= R``: one column set. EZKL folds rows beyond
``2**logrows`` into more columns, and every column costs verification gas. Measured on
digits-cnn (219k rows, one advice column per role): one set at 2^18 verifies for 522k gas
through its own verifier and proves in 13.5 s; two sets at 2^17, 702k gas and 11.1 s. On
chain every verification pays the gas, while the proof is made once."""


def build_circuit(program: Program, directory: Path) -> CircuitFiles:
    """Write ``model.onnx``, ``settings.json`` and ``circuit.ezkl`` for ``program`` into ``directory``.

    The circuit gets the smallest ``logrows`` (from ``MIN_LOGROWS``, and with
    one column set, see `MAX_COLUMN_SETS_LOG2`) at which EZKL's
    ``mock`` prover accepts witnesses of extreme inputs (all minimum,
    all maximum, alternating, random over the whole range): proving time and
    key size grow with ``2**logrows``, and EZKL's own default (17) is often far
    too big. (At too small a size EZKL narrows its range checks, and large
    values stop fitting; the extreme inputs make them appear.)
    """
    from aivm_jax._errors import ProofError

    files = CircuitFiles(Path(directory))
    files.directory.mkdir(parents=True, exist_ok=True)
    onnx_bytes, args = circuit_run_args(program)
    files.onnx.write_bytes(onnx_bytes)
    probes = _probe_inputs(program)

    def write_settings(logrows: int) -> int:
        run_args = ezkl().PyRunArgs()
        for key, value in {**args, "logrows": logrows}.items():
            setattr(run_args, key, value)
        call("gen_settings", str(files.onnx), str(files.settings), py_run_args=run_args)
        return int(json.loads(files.settings.read_text())["num_rows"])

    rows = write_settings(MIN_LOGROWS)
    first = max(MIN_LOGROWS, (rows - 1).bit_length() - MAX_COLUMN_SETS_LOG2)
    for logrows in range(first, MAX_LOGROWS + 1):
        write_settings(logrows)
        call("compile_circuit", str(files.onnx), str(files.compiled), str(files.settings))
        if all(_mock_accepts(files, probe) for probe in probes):
            break
    else:
        raise ProofError(f"the circuit does not fit in 2^{MAX_LOGROWS} rows")
    return files
