"""Tiered-memory VM tests.

Layout:
  tests/vm/test_vm_*.py   host side: each test boots one guest (vmrun.py) and runs one guest module
                          in it with the host's python (the venv) through `run_pytest_in_vm`.
  tests/vm/guest/test_*.py  guest side: run only inside the VM (KMIGRATEDD_IN_VM=1).  The plain
                          host pytest run never collects them; inside the guest the host-side
                          wrappers are not collected, so nothing recurses.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import vmpytest  # noqa: E402  (needs HERE on sys.path)
import vmrun  # noqa: E402

IN_VM = os.environ.get("KMIGRATEDD_IN_VM") == "1"

if IN_VM:
    # inside the guest: never boot a VM from a VM
    collect_ignore_glob = ["test_vm*.py"]
else:
    # on the host: guest tests run only through the wrappers
    collect_ignore = ["guest"]


@pytest.fixture(scope="session")
def vm_available() -> None:
    """Skip (only) when there is no qemu at all; a missing kernel is a failure, not a skip."""
    try:
        vmrun.find_qemu()
    except vmrun.QemuMissing as e:
        pytest.skip(str(e))


@pytest.fixture
def guest_pytest(
    vm_available: None, request: pytest.FixtureRequest
) -> Callable[..., vmrun.VMResult]:
    """guest_pytest("test_topology_raw.py", passed=10, topology="2node", kernel="debian-6.12",
    timeout=...) runs the guest module under pytest inside a fresh guest and fails with the
    guest output unless it passed with exactly ``passed`` tests passed and ``skipped``
    (default 0) skipped: a guest module that skips itself entirely fails its wrapper.
    ``xfail_ok``: a guest test that calls pytest.xfail() (its known failure, after every
    other check held) counts as passed, and the wrapper is reported as xfailed with the
    guest's reasons."""
    live = request.config.getoption("capture") == "no"

    def run(target: str | list[str], *, passed: int, skipped: int = 0, xfail_ok: bool = False,
            **kw: object) -> vmrun.VMResult:
        res = vmpytest.run_pytest_in_vm(target, stream=sys.stdout if live else None, **kw)  # type: ignore[arg-type]
        vmpytest.assert_vm_ok(res)
        xfailed = vmpytest.counts(res.output).get("xfailed", 0) if xfail_ok else 0
        vmpytest.assert_counts(res, passed=passed - xfailed, skipped=skipped)
        if xfailed:
            pytest.xfail("; ".join(ln.strip() for ln in res.output.splitlines()
                                   if ln.startswith("XFAIL")))
        return res

    return run
