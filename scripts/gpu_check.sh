#!/usr/bin/env bash
# GPU check for a lent H100/H200 (no network, no weights: runs from the source tree on random
# weights of real shapes; must finish in 8 minutes on an H200). First the GPU-marked tests, then
# per shape pair (tools/gpu_probe.py): decode step against the weights-read floor, verify time by
# K, AR/SD/SSD tokens/s with acceptance replayed (AGREE) and Transformers generate on the same
# weights. Greedy AR/SD/SSD must agree. Each pair prints a final JSON line.
#
#   SHAPES   "target:draft[:tokens] ..."  (tokens overrides TOKENS for that pair)
#   TOKENS   new tokens per mode (128)   K  draft tokens per round (5)   AGREE  "0.84 0.96"
#   PROMPT   prompt tokens = the cached context of the timings (128)     REPS  forwards per timing (10)
#   HF_ATTN  Transformers attention: eager, sdpa, or none to skip it (eager)
# CPU smoke test: PYTHON=.venv/bin/python DEVICE=cpu SHAPES="tiny:tiny" bash scripts/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=src PYTHONUNBUFFERED=1
DEVICE=${DEVICE:-cuda}
PY=${PYTHON:-python3}
SHAPES=${SHAPES:-"qwen2.5-1.5b:qwen2.5-0.5b qwen2.5-7b:qwen2.5-0.5b qwen2.5-32b:qwen2.5-0.5b:64"}
start=$SECONDS
section() { echo "=== [$((SECONDS - start))s] $*"; }

"$PY" -c "import torch, transformers; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'transformers', transformers.__version__)"
section "GPU-marked tests"
status=0
"$PY" -m pytest -q -p no:cacheprovider -m gpu tests || status=$?
if [ "$status" -eq 5 ]; then status=0; fi  # 5: no test selected
# a failing test fails the check but the probes still run: the device time is scarce
if [ "$status" -ne 0 ]; then echo "GPU tests FAILED (pytest exit $status)"; fi
for spec in $SHAPES; do
  IFS=: read -r target draft tokens <<< "$spec"
  section "probe $target with draft $draft"
  # shellcheck disable=SC2086  # AGREE is a list
  "$PY" -m tools.gpu_probe --device "$DEVICE" --target "$target" --draft "$draft" \
    --tokens "${tokens:-${TOKENS:-128}}" --k "${K:-5}" --prompt "${PROMPT:-128}" --reps "${REPS:-10}" \
    --agree ${AGREE:-0.84 0.96} --hf-attn "${HF_ATTN:-eager}" || status=$?
done
section "done (exit $status)"
exit "$status"
