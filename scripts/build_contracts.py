"""Recompile contracts/*.sol with the pinned solc-js into aivm_jax/chain/artifacts/*.json.

.venv/bin/python scripts/build_contracts.py
"""

import json
from pathlib import Path

from aivm_jax.chain._artifacts import ARTIFACT_DIR, build_artifacts

root = Path(__file__).resolve().parent.parent
ARTIFACT_DIR.mkdir(exist_ok=True)
for name, data in build_artifacts(root / "contracts").items():
    (ARTIFACT_DIR / f"{name}.json").write_text(json.dumps(data, indent=1) + "\n")
    print(f"{name}: {(len(data['bytecode']) - 2) // 2} bytes of init code")
