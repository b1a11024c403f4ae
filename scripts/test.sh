#!/usr/bin/env bash
# The test command: install what is missing, then configure, build and run every test (CMake workflow "test"), then
# the threaded kernel tests under ThreadSanitizer (workflow "tsan": attention_test only, under a minute), then the
# safetensors libFuzzer target for 60 s from its committed corpus (scripts/fuzz.sh). The API-sequence target's corpus
# runs in ctest (fuzz.replay.api_sequence); its libFuzzer build is too long for CI on 2 cores: scripts/fuzz.sh runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cmake --workflow --preset test
cmake --workflow --preset tsan
bash scripts/fuzz.sh 60 safetensors
