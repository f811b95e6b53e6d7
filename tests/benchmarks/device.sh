#!/usr/bin/env bash
# Issue 4's GPU figures on a lent device machine, in one prepared call.
#
#   bash tests/benchmarks/device.sh wheels           # here: what the device lacks, into .whl/
#   bash tests/benchmarks/device.sh run [ARGS...]    # there: install them, run throughput.py
#
# The device machine (see the `device` tool's README) has Python 3.12 with JAX for CUDA, NumPy,
# pandas, scikit-learn and PyYAML, but no TensorFlow and no network. So Keras runs on JAX
# there, and the pure-Python packages regsearch and the benchmark need travel as wheels, at
# the versions of this checkout's virtual environment (.venv). `.whl/` is git-ignored.
#
# Here:   bash tests/benchmarks/device.sh wheels
# There:  the device `run` tool with carry [".whl"], timeout_s 590 and the command
#         bash tests/benchmarks/device.sh run
# (on this repo's 2-core CPU the user script takes 5-6 min at 64 x 20; on the device's GPU
# it is unmeasured, so run it alone first with a smaller --trials if time is short).
# `run` writes throughput.py's table (gpu.txt) and JSON (gpu.json) to $OUT (else to /tmp);
# ARGS go to throughput.py (default: user script, packed and packed-warm, 64 trials x 20
# epochs). RESULTS.md says how the CPU figures were taken; record these beside them.
set -euo pipefail
cd "$(dirname "$0")/../.."

# What regsearch and the benchmark import that the device image lacks (its package list:
# the device tool's KINDS.md); their own dependencies it lacks are listed with them.
NEEDED=(
  keras namex optree                                   # Keras 3 (on JAX)
  optuna alembic colorlog Mako SQLAlchemy              # Optuna and its SQL storage
  mlflow mlflow-skinny mlflow-tracing                  # MLflow, its store and server
  blinker cachetools cffi cryptography databricks-sdk docker fastapi Flask flask-cors gitdb
  GitPython google-auth graphene graphql-core graphql-relay gunicorn huey importlib_metadata
  itsdangerous opentelemetry-api opentelemetry-proto opentelemetry-sdk
  opentelemetry-semantic-conventions pyasn1 pyasn1_modules pycparser pydantic pydantic_core
  annotated-types typing-inspection python-dotenv skops smmap sqlparse starlette uvicorn
  keras-tuner kt-legacy prettytable wcwidth            # KerasTuner (the benchmark's peer)
)

wheels() {
  local python=".venv/bin/python" pins=()
  [[ -x $python ]] || { echo "device.sh: no .venv here; run the README's install first" >&2; exit 2; }
  mapfile -t pins < <("$python" - "${NEEDED[@]}" <<'EOF'
import sys
from importlib.metadata import PackageNotFoundError, version
for name in sys.argv[1:]:
    try:
        print(f"{name}=={version(name)}")
    except PackageNotFoundError:
        sys.exit(f"device.sh: {name} is not installed in .venv")
EOF
  )
  # A name missing from .venv ends the script above; process substitution hides its exit code.
  [[ ${#pins[@]} -eq ${#NEEDED[@]} ]] || exit 2
  rm -rf .whl && mkdir .whl
  python3 -m pip download -q --no-deps --only-binary=:all: \
    --python-version "${DEVICE_PYTHON:-3.12}" --implementation cp \
    --platform manylinux_2_34_x86_64 --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${pins[@]}"
  echo "device.sh: $(ls .whl | wc -l) wheels, $(du -sh .whl | cut -f1), in .whl/"
}

run() {
  local out="${OUT:-/tmp}" site=/tmp/regsearch-site
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$site" .whl/*.whl
  export PYTHONPATH="$site:$PWD" KERAS_BACKEND=jax PYTHONUNBUFFERED=1
  nvidia-smi -L || true
  python3 -c "import jax; print('jax', jax.__version__, jax.devices())"
  local args=("$@")
  [[ ${#args[@]} -gt 0 ]] || args=(--only user-script,packed,packed-warm)
  python3 tests/benchmarks/throughput.py "${args[@]}" --out "$out/gpu.json" | tee "$out/gpu.txt"
}

case "${1:-}" in
  wheels) wheels ;;
  run) shift; run "$@" ;;
  *) echo "usage: bash tests/benchmarks/device.sh wheels | run [throughput.py args]" >&2; exit 2 ;;
esac
