#!/usr/bin/env bash
# Set up, pull the demo pair (cached in ~/.cache/ssdecode after the first run), check the layers
# (import-linter: the contract in pyproject.toml) and the lint (ruff), run every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ssdecode models pull demo
.venv/bin/lint-imports
.venv/bin/ruff check src tests tools scripts
.venv/bin/python -m pytest -q -ra "$@"
