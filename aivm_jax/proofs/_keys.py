"""Proving and verifying keys per model id: made once by `setup`, cached on disk, reused.

Cache layout (``cache_dir`` defaults to ``$AIVM_CACHE_DIR`` or ``~/.cache/aivm``)::

    proofs/<model_id>/   model.onnx settings.json circuit.ezkl pk.key vk.key vka.bin keys.json
    srs/dev-k<logrows>.srs                     (only with --dev-srs)

``keys.json`` records the model id, the SHA-256 of the verifying key (which
binds the weights: they are fixed columns of the circuit), of the settings and
of the SRS, whether the SRS is a development one, and the circuit version
(`CIRCUIT_VERSION`: keys made for another export are made again). A setup is written into a
temporary folder and renamed into place, so a crash never leaves half a key set.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from aivm_jax._errors import KeysNotFoundError, ProofError, SrsError
from aivm_jax.program import Program
from aivm_jax.proofs._circuit import CircuitFiles, build_circuit
from aivm_jax.proofs._export import CIRCUIT_VERSION
from aivm_jax.proofs._ezkl import call, ezkl_version, step

__all__ = ["DEV_SRS_WARNING", "ProvingKeys", "default_cache_dir", "load_keys", "setup"]

DISABLE_SELECTOR_COMPRESSION = True
"""EZKL's setup merges the circuit's selectors into fewer fixed columns by default, which
raises the constraints' degree. Measured with EZKL 23.0.5 on digits-cnn (2^18 rows): without
the merge it proves in 13.5 s instead of 30.3 s and verifies for 522k gas instead of 575k; on
digits-mlp (2^15) the proving time is the same and the gas 520k instead of 475k. A
verifier's soundness does not depend on it."""

DEV_SRS_WARNING = (
    "WARNING: --dev-srs generates a structured reference string on this machine. Whoever ran it "
    "could forge proofs; use it only for development and tests, and a ceremony file (--srs PATH) "
    "for anything real."
)


def default_cache_dir() -> Path:
    return Path(os.environ.get("AIVM_CACHE_DIR") or Path.home() / ".cache" / "aivm")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class ProvingKeys:
    """One model's key set on disk, with what `keys.json` records about it."""

    directory: Path
    model_id: str
    logrows: int
    srs_path: Path
    dev_srs: bool
    vk_sha256: str
    settings_sha256: str
    circuit_version: int

    @property
    def circuit(self) -> CircuitFiles:
        return CircuitFiles(self.directory)

    @property
    def pk(self) -> Path:
        return self.directory / "pk.key"

    @property
    def vk(self) -> Path:
        return self.directory / "vk.key"

    @property
    def vka(self) -> Path:
        return self.directory / "vka.bin"


def _keys_dir(model_id: str, cache_dir: Path | None) -> Path:
    return (cache_dir or default_cache_dir()) / "proofs" / model_id


def load_keys(model_id: str, cache_dir: Path | None = None) -> ProvingKeys:
    """The cached key set of ``model_id``; `KeysNotFoundError` if setup has not run."""
    directory = _keys_dir(model_id, cache_dir)
    try:
        meta = json.loads((directory / "keys.json").read_text())
    except FileNotFoundError:
        raise KeysNotFoundError(
            f"no proving keys for model {model_id} in {directory.parent}; run "
            "`aivm prove setup FILE --srs PATH` (or --dev-srs) first"
        ) from None
    return ProvingKeys(
        directory=directory,
        model_id=meta["model_id"],
        logrows=meta["logrows"],
        srs_path=Path(meta["srs_path"]),
        dev_srs=meta["dev_srs"],
        vk_sha256=meta["vk_sha256"],
        settings_sha256=meta["settings_sha256"],
        circuit_version=int(meta.get("circuit_version", 1)),  # keys from before the field are version 1
    )


def _dev_srs(logrows: int, cache_dir: Path, progress: Callable[[str], None]) -> Path:
    path = cache_dir / "srs" / f"dev-k{logrows}.srs"
    progress(DEV_SRS_WARNING)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with step(progress, f"generating a development SRS for 2^{logrows} rows"):
            call("gen_srs", str(tmp), logrows)
        os.replace(tmp, path)
    return path


def setup(
    program: Program,
    *,
    srs: str | os.PathLike | None = None,
    dev_srs: bool = False,
    cache_dir: str | os.PathLike | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> ProvingKeys:
    """Build the circuit and its keys for ``program`` once; later calls reuse them.

    Args:
      srs: a structured reference string file (from a ceremony) with at least
        as many rows as the circuit needs.
      dev_srs: generate (and cache) a local, insecure SRS instead.
      cache_dir: where keys live (see the module docstring).

    Raises:
      SrsError: neither ``srs`` nor ``dev_srs``, a missing file, or an SRS too small.
      UnsupportedForProofError: the program cannot be exported exactly.
    """
    if (srs is None) == (not dev_srs):
        raise SrsError("give exactly one of --srs PATH (a ceremony file) or --dev-srs")
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    srs_path = Path(srs).resolve() if srs is not None else None
    if srs_path is not None and not srs_path.is_file():
        raise SrsError(f"no SRS file at {srs_path}")
    try:
        existing = load_keys(program.model_id, cache)
    except KeysNotFoundError:
        existing = None
    if existing is not None and existing.circuit_version != CIRCUIT_VERSION:
        progress(
            f"the cached keys of {program.model_id} were made for circuit version "
            f"{existing.circuit_version}; this aivm_jax exports version {CIRCUIT_VERSION}: making new keys "
            "(deploy and register the new verifier, or the new VKA, wherever the old one is registered)"
        )
    elif (
        existing is not None and (srs_path is None or srs_path == existing.srs_path) and existing.pk.exists()
    ):
        progress(f"reusing proving keys in {existing.directory}")
        return existing
    final = _keys_dir(program.model_id, cache)
    final.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{program.model_id[:10]}-"))
    try:
        with step(progress, "exporting the program to a circuit"):
            files = build_circuit(program, work)
        logrows = files.logrows()
        if srs_path is None:
            srs_path = _dev_srs(logrows, cache, progress)
        with step(progress, f"setup: proving and verifying keys for 2^{logrows} rows"):
            try:
                call(
                    "setup",
                    str(files.compiled),
                    str(work / "vk.key"),
                    str(work / "pk.key"),
                    str(srs_path),
                    None,  # no witness: the keys depend on the circuit alone
                    DISABLE_SELECTOR_COMPRESSION,
                )
            except ProofError as error:
                raise SrsError(
                    f"setup failed with the SRS at {srs_path}; it must hold at least 2^{logrows} "
                    f"points ({error})"
                ) from None
        with step(progress, "verifying key artifact for the EVM verifier"):
            call(
                "create_evm_vka",
                str(work / "vk.key"),
                str(files.settings),
                str(work / "vka.bin"),
                str(srs_path),
            )
        meta = {
            "model_id": program.model_id,
            "logrows": logrows,
            "srs_path": str(srs_path),
            "srs_sha256": _sha256(srs_path),
            "dev_srs": bool(dev_srs),
            "vk_sha256": _sha256(work / "vk.key"),
            "settings_sha256": _sha256(files.settings),
            "circuit_version": CIRCUIT_VERSION,
            "ezkl_version": ezkl_version(),
        }
        (work / "keys.json").write_text(json.dumps(meta, indent=1) + "\n")
        if final.exists():
            shutil.rmtree(final)
        os.replace(work, final)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return load_keys(program.model_id, cache)
