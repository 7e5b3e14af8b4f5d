#!/usr/bin/env bash
# Sets up everything the tests need and runs the whole suite (lint included).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
.venv/bin/ruff check .
.venv/bin/ruff format --check .
(cd shared && ../.venv/bin/mypy)  # strict; configured in shared/pyproject.toml
.venv/bin/mypy  # strict, on bench/ and scripts/; configured in mypy.ini
exec .venv/bin/python -m pytest "$@"
