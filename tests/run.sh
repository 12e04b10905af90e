#!/usr/bin/env bash
# The README's test command: set up (tests/setup.sh), then run every test,
# host and tiered-memory VM tests alike.  Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/setup.sh
exec .venv/bin/python -m pytest "$@"
