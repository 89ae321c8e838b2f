#!/usr/bin/env bash
# The main job, end to end: build a zoo model, inspect it, run inference, print the result.
source "$(dirname "${BASH_SOURCE[0]}")/_venv.sh"
mkdir -p out
aivm zoo build digits-cnn -o out/digits-cnn.aivm
aivm info out/digits-cnn.aivm
python - <<'PY'
import numpy as np
from aivm_jax.models import load_digits_data
data = load_digits_data()
np.save("out/digits-test.npy", data.x_test[:8].reshape(-1, 8, 8, 1))
print("true labels of out/digits-test.npy:", data.y_test[:8].tolist())
PY
aivm infer out/digits-cnn.aivm --input out/digits-test.npy
