#!/usr/bin/env bash
# The README's test command: set up (tests/setup.sh: apt packages, the sdist and
# the wheel, the wheel installed into a venv outside the source tree), then run
# every test, host and tiered-memory VM tests alike, with that venv's python.
# Extra arguments go to pytest; the quick loop is `tests/run.sh -m "not vm"`.
set -euo pipefail
cd "$(dirname "$0")/.."
# The quick loop (-m "not vm", or any marker expression that leaves the vm tests out)
# installs no apt package: the host tests need only a C compiler and the Python headers.
host_only=
prev=
for a in "$@"; do
  if [ "$prev" = -m ] && [[ "$a" == *"not vm"* ]]; then host_only=--host-only; fi
  prev=$a
done
bash tests/setup.sh $host_only
VENV=$(bash tests/setup.sh --print-venv)
# -P and PYTHONSAFEPATH (inherited by every python the tests start, in the guest
# too): never put the working directory, the source tree, on sys.path, so that
# `import kmigratedd` finds the installed copy.
export PYTHONSAFEPATH=1
export KMIGRATEDD_TEST_DIST
KMIGRATEDD_TEST_DIST="$(dirname "$VENV")/dist"
# The guest tests run under pytest-xdist, as many guests at a time as the machine has room
# for (tests/conftest.py, pytest_xdist_auto_num_workers; `-n 1` or KMIGRATEDD_TEST_WORKERS=1
# for one): each guest takes one CPU (single-threaded TCG).  The host tests stay together on
# one worker.  The quick loop runs without workers.
workers=()
[ -n "$host_only" ] || workers=(-n auto --dist loadgroup)
exec "$VENV/bin/python" -P -m pytest "${workers[@]}" "$@"
