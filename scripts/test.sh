#!/usr/bin/env bash
# The test command: install what is missing, then configure, build and run every test (CMake workflow "test").
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cmake --workflow --preset test
