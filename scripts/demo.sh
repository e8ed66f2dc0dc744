#!/usr/bin/env bash
# Set up, pull the demo pair, and generate with speculative speculative decoding on it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ssdecode models pull demo
.venv/bin/ssdecode generate "Write a Python function that checks whether a number is prime." \
  --mode ssd --max-tokens 128 --stats "$@"
