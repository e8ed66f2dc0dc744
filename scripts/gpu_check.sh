#!/usr/bin/env bash
# GPU check for a lent H100/H200 (no network there: runs from the source tree, random weights of
# real shapes). Greedy AR/SD/SSD must agree; prints per-mode timings, SSD's T_p and hit rate.
# CPU smoke test: PYTHON=.venv/bin/python DEVICE=cpu SHAPES="tiny:tiny" bash scripts/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=src PYTHONUNBUFFERED=1
DEVICE=${DEVICE:-cuda}
PY=${PYTHON:-python3}
SHAPES=${SHAPES:-"qwen2.5-1.5b:qwen2.5-0.5b qwen2.5-7b:qwen2.5-0.5b"}
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
for pair in $SHAPES; do
  "$PY" -m ssdecode.bench.gpu_probe --device "$DEVICE" --target "${pair%%:*}" --draft "${pair##*:}" \
    --tokens "${TOKENS:-128}" --k "${K:-5}"
done
