#!/usr/bin/env bash
# Set up, pull the demo pair (cached in ~/.cache/ssdecode after the first run), run every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ssdecode models pull demo
.venv/bin/python -m pytest -q -ra "$@"
