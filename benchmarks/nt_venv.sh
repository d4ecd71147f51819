#!/usr/bin/env bash
# Create (idempotently) the neural-tangents reference venv used by
# tests/reference/generate_nt_reference.py and benchmarks/nt_worker.py.
#
#   NT_VENV   venv location (default: $HOME/.cache/ntkscale/nt-venv)
#   PYTHON    interpreter to build it from (default: python3; 3.11 tested)
#
# neural-tangents 0.6.5 needs an old jax (newer jax removed APIs it uses),
# so every relevant package is pinned. Prints the venv's python path last.
set -euo pipefail

NT_VENV="${NT_VENV:-$HOME/.cache/ntkscale/nt-venv}"
PYTHON="${PYTHON:-python3}"

PINS=(
  "neural-tangents==0.6.5"
  "jax==0.5.3"
  "jaxlib==0.5.3"
  "tf2jax==0.3.6"
  "numpy==1.26.4"
  "scipy==1.13.1"
  "ml_dtypes==0.5.1"
  "scikit-learn==1.5.2"
)

py="$NT_VENV/bin/python"
check() {
  "$py" - <<'EOF' >/dev/null 2>&1
import jax
jax.config.update("jax_enable_x64", True)
from neural_tangents import stax
import sklearn
assert jax.__version__ == "0.5.3"
import importlib.metadata as m
assert m.version("neural-tangents") == "0.6.5"
_, _, kernel_fn = stax.serial(stax.Dense(1), stax.Relu(), stax.Dense(1))
import jax.numpy as jnp
k = kernel_fn(jnp.ones((2, 3)), None, "ntk")
assert k.dtype == jnp.float64
EOF
}

if [ -x "$py" ] && check; then
  echo "nt-venv already set up at $NT_VENV" >&2
else
  mkdir -p "$(dirname "$NT_VENV")"
  [ -x "$py" ] || "$PYTHON" -m venv "$NT_VENV"
  "$py" -m pip install --quiet --upgrade pip
  "$py" -m pip install --quiet "${PINS[@]}"
  if ! check; then
    echo "nt-venv import check failed" >&2
    "$py" -c 'import jax; jax.config.update("jax_enable_x64", True); from neural_tangents import stax' >&2
    exit 1
  fi
fi
echo "$py"
