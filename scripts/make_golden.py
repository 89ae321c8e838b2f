"""Regenerate the conformance vectors and the test suite's golden hashes.

    .venv/bin/python scripts/make_golden.py

Run it only when the opset, the zoo recipes or the file format change on
purpose; commit the result and say why in the commit message.
"""

import json
import shutil
from pathlib import Path

import aivm_jax  # noqa: F401  (sets the determinism flags first)
from aivm_jax.conformance import DATA_DIR, write_vectors

write_vectors()
golden = Path(__file__).resolve().parent.parent / "tests" / "golden"
golden.mkdir(exist_ok=True)
shutil.copy(DATA_DIR / "models.json", golden / "zoo_hashes.json")
print(json.dumps(json.loads((golden / "zoo_hashes.json").read_text()), indent=1)[:400])
