#!/usr/bin/env bash
# The test command: set everything up, lint, type-check, then run the test suite.
# Needs root (the tests mount images with the kernel as the oracle).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
.venv/bin/ruff check drivers fusefs tests
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
