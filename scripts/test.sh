#!/usr/bin/env bash
# The test command (README, .ci/run): set-up as needed, then the whole suite.
# Tests mount real FUSE file systems and loop devices: run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec npx vitest run "$@"
