"""From a program to an EZKL circuit: ONNX export, settings derived from integer bounds, compilation."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np

from aivm_jax.program import Program
from aivm_jax.proofs._export import DIV_BITS, export_onnx
from aivm_jax.proofs._ezkl import call, ezkl

__all__ = ["CircuitFiles", "build_circuit", "circuit_run_args"]

DECOMP_BASE_BITS = 14  # EZKL's default decomp_base is 2**14


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


def circuit_run_args(program: Program) -> tuple[bytes, dict[str, object]]:
    """ONNX bytes and EZKL run arguments, all derived from the program's integer bounds.

    * scales 0: every tensor holds integers, represented exactly;
    * visibility: input and output public (they are the proof's claim), weights
      fixed (baked into the circuit, so the verifying key binds them);
    * ``decomp_legs``: digits enough for the largest dividend of a ``Div`` (in
      base ``2**DIV_BITS``) and the largest value compared (base ``2**14``);
    * ``lookup_range``: the range of table indices (0..255) when the program
      uses ``table``, else the int8 range.
    """
    exported = export_onnx(program)
    legs = max(
        2,
        math.ceil((exported.max_dividend.bit_length() + 1) / DIV_BITS),
        math.ceil((exported.max_value.bit_length() + 1) / DECOMP_BASE_BITS),
    )
    args = {
        "input_scale": 0,
        "param_scale": 0,
        "input_visibility": "public",
        "output_visibility": "public",
        "param_visibility": "fixed",
        "decomp_legs": legs,
        "lookup_range": (-256, 256) if exported.uses_tables else (-128, 128),
    }
    return exported.onnx_bytes, args


MIN_LOGROWS = DIV_BITS + 2  # a division's range-check table (2**DIV_BITS rows) must fit one column
MAX_LOGROWS = 22


def build_circuit(program: Program, directory: Path) -> CircuitFiles:
    """Write ``model.onnx``, ``settings.json`` and ``circuit.ezkl`` for ``program`` into ``directory``.

    The circuit gets the smallest ``logrows`` (from ``MIN_LOGROWS``) at which
    EZKL's ``mock`` prover accepts a witness: proving time and key size grow
    with ``2**logrows``, and EZKL's own default (17) is often far too big.
    """
    from aivm_jax._errors import ProofError

    files = CircuitFiles(Path(directory))
    files.directory.mkdir(parents=True, exist_ok=True)
    onnx_bytes, args = circuit_run_args(program)
    files.onnx.write_bytes(onnx_bytes)
    probe = files.directory / "probe-input.json"
    zeros = [0] * int(np.prod(program.inputs[0].shape))
    probe.write_text(json.dumps({"input_data": [zeros]}))
    for logrows in range(MIN_LOGROWS, MAX_LOGROWS + 1):
        run_args = ezkl().PyRunArgs()
        for key, value in {**args, "logrows": logrows}.items():
            setattr(run_args, key, value)
        call("gen_settings", str(files.onnx), str(files.settings), py_run_args=run_args)
        call("compile_circuit", str(files.onnx), str(files.compiled), str(files.settings))
        try:
            call("gen_witness", str(probe), str(files.compiled), str(files.directory / "probe-witness.json"))
            if call("mock", str(files.directory / "probe-witness.json"), str(files.compiled)):
                break
        except ProofError:
            continue
    else:
        raise ProofError(f"the circuit does not fit in 2^{MAX_LOGROWS} rows")
    probe.unlink()
    (files.directory / "probe-witness.json").unlink()
    return files
