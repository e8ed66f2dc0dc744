#!/usr/bin/env bash
# Set up, pull the demo pair, and generate on it in the mode predicted fastest on this machine
# (--mode auto: calibrated once, then K adapts per round; it prints what it picked). Pass
# --mode ssd (or sd, ar) to force one.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ssdecode models pull demo
.venv/bin/ssdecode generate "Write a Python function that checks whether a number is prime." \
  --max-tokens 128 --stats "$@"
