#!/usr/bin/env bash
# The GPU check (see benchmarks/gpu_check.py): about 3 minutes on one H100; --tiny runs it on CPU.
#   benchmarks/gpu_check.sh [--tiny] [--budget-s S] [--out FILE]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" exec "${PYTHON:-python3}" "$ROOT/benchmarks/gpu_check.py" "$@"
