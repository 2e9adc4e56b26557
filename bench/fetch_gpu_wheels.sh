#!/usr/bin/env bash
# Download the wheels of bench/gpu_wheels.txt into .whl/ (git-ignored) for a GPU machine with Python 3.12 on
# x86-64 Linux and no network. Then, there, from the repository root:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl &&
#     PYTHONPATH=/tmp/site:. python3 bench/gpu_proof.py --out "$OUT"
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl -r bench/gpu_wheels.txt
ls .whl
