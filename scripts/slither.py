"""Run Slither over the contracts with the pinned solc-js (offline), and fail on untriaged medium/high findings.

.venv/bin/python scripts/slither.py [--json] [FILE.sol ...]

With no FILE, it analyses every .sol under contracts/ outside contracts/test/. No solc binary is
needed: crytic-compile gets a standard-JSON input (the settings of scripts/build_contracts.py:
via-IR, optimizer, cancun) and runs it through scripts/solc-shim, which answers like `solc` by
calling the solc-js that `npm ci --prefix aivm_jax/proofs/solcjs` installs (scripts/_venv.sh does).
`@openzeppelin/` is remapped to that folder's node_modules. Findings whose locations all lie in
OpenZeppelin or contracts/test/ are left out of the report.

Triage a finding in the contract, on the line just above the function, statement or variable that
slither names, with the detector's name and then the reason (slither reads the name up to the first
character other than a letter, digit, '-', '_' or ','):

    // slither-disable-next-line reentrancy-eth -- the callee is our own registry

Prints every finding (all impacts); exits 1 when a High or Medium one is left untriaged, 2 when
slither or the compile failed. --json prints the findings as a JSON list instead.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CONTRACTS = ROOT / "contracts"
SHIM = ROOT / "scripts" / "solc-shim"
NODE_MODULES = ROOT / "aivm_jax" / "proofs" / "solcjs" / "node_modules"
EXCLUDED = (NODE_MODULES, CONTRACTS / "test")
FAILING_IMPACTS = ("High", "Medium")
IMPACT_ORDER = ("High", "Medium", "Low", "Informational", "Optimization")


class SlitherError(RuntimeError):
    """Slither or the compile failed: no findings to judge."""


def default_sources() -> list[Path]:
    """The project's contracts: contracts/**/*.sol outside contracts/test/."""
    return sorted(p for p in CONTRACTS.rglob("*.sol") if not p.is_relative_to(CONTRACTS / "test"))


def _unit_name(path: Path) -> str:
    path = path.resolve()
    return path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else path.as_posix()


def standard_json(sources: list[Path]) -> dict[str, Any]:
    """The solc standard-JSON input that crytic-compile hands to the shim."""
    return {
        "language": "Solidity",
        "sources": {_unit_name(p): {"urls": [_unit_name(p)]} for p in sources},
        "settings": {
            "remappings": [f"@openzeppelin/={(NODE_MODULES / '@openzeppelin').as_posix()}/"],
            # As scripts/build_contracts.py compiles them (InferenceMarket needs via-IR).
            "optimizer": {"enabled": True, "runs": 200},
            "viaIR": True,
            "evmVersion": "cancun",
        },
    }


def _excluded(filename: str) -> bool:
    path = Path(filename).resolve()
    return any(path.is_relative_to(d.resolve()) for d in EXCLUDED)


def _location(result: dict[str, Any]) -> str:
    for element in result.get("elements", []):
        mapping = element.get("source_mapping") or {}
        if mapping.get("filename_absolute") and not _excluded(mapping["filename_absolute"]):
            lines = mapping.get("lines") or [0]
            where = _unit_name(Path(mapping["filename_absolute"]))
            return f"{where}#{lines[0]}" + (f"-{lines[-1]}" if lines[-1] != lines[0] else "")
    return "?"


def run_slither(sources: list[Path], timeout: float = 1200) -> list[dict[str, Any]]:
    """Slither's detector results on ``sources`` (triaged ones already left out by slither)."""
    if shutil.which("node") is None:
        raise SlitherError("slither's compile needs Node.js on PATH (it runs the pinned solc-js)")
    if not (NODE_MODULES / "solc").is_dir():
        raise SlitherError(
            f"the pinned solc-js is not installed; run `npm ci --prefix {NODE_MODULES.parent}`"
        )
    with tempfile.TemporaryDirectory(prefix="aivm-slither-") as tmp:
        target = Path(tmp) / "input.json"
        report = Path(tmp) / "slither.json"
        target.write_text(json.dumps(standard_json(sources)))
        command = [
            sys.executable,
            "-m",
            "slither",
            str(target),
            "--compile-force-framework",
            "solc-json",
            "--solc",
            str(SHIM),
            "--json",
            str(report),
            "--fail-none",
            "--disable-color",
        ]
        done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        data = json.loads(report.read_text()) if report.exists() else None
    if data is None or not data.get("success"):
        error = (data or {}).get("error") or done.stderr.strip()[-3000:]
        raise SlitherError(f"slither failed (exit {done.returncode}): {error.strip()}")
    return (data.get("results") or {}).get("detectors", [])


def findings(sources: list[Path]) -> list[dict[str, Any]]:
    """The findings in our code, worst first: check, impact, confidence, location, description, failing."""
    out = []
    for r in run_slither(sources):
        files = [
            e["source_mapping"]["filename_absolute"]
            for e in r.get("elements", [])
            if (e.get("source_mapping") or {}).get("filename_absolute")
        ]
        if files and all(_excluded(f) for f in files):
            continue  # only OpenZeppelin's code or the test contracts
        out.append(
            {
                "check": r["check"],
                "impact": r["impact"],
                "confidence": r["confidence"],
                "location": _location(r),
                "description": r["description"].strip(),
                "failing": r["impact"] in FAILING_IMPACTS,
            }
        )
    rank = {impact: i for i, impact in enumerate(IMPACT_ORDER)}
    return sorted(out, key=lambda f: (rank.get(f["impact"], len(rank)), f["check"], f["location"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print the findings as a JSON list")
    parser.add_argument(
        "files", nargs="*", type=Path, help="Solidity files (default: contracts/, less test/)"
    )
    args = parser.parse_args(argv)
    sources = [p.resolve() for p in args.files] or default_sources()
    try:
        found = findings(sources)
    except (SlitherError, subprocess.TimeoutExpired) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    failing = [f for f in found if f["failing"]]
    if args.json:
        print(json.dumps(found, indent=1))
    else:
        for f in found:
            mark = "FAIL" if f["failing"] else "    "
            print(f"{mark} [{f['impact']}/{f['confidence']}] {f['check']} at {f['location']}")
            print("       " + f["description"].replace("\n", "\n       "))
    counts = ", ".join(f"{sum(f['impact'] == i for f in found)} {i.lower()}" for i in IMPACT_ORDER)
    print(
        f"slither {version('slither-analyzer')} on {len(sources)} file(s): {len(found)} finding(s) ({counts}); "
        f"{len(failing)} untriaged high/medium",
        file=sys.stderr,
    )
    return 1 if failing else 0


if __name__ == "__main__":
    sys.exit(main())
