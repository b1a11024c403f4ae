#!/usr/bin/env bash
# The test command: install what is missing, then configure, build and run every test (CMake workflow "test"), then
# the threaded kernel tests under ThreadSanitizer (workflow "tsan": attention_test only, under a minute), then both
# libFuzzer targets for 60 s each from their committed corpora (scripts/fuzz.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cmake --workflow --preset test
cmake --workflow --preset tsan
bash scripts/fuzz.sh 60
