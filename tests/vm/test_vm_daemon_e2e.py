"""Host side: kmigratedd end to end in the tiered guest, for each sampler the guest
kernel offers."""
from __future__ import annotations

from collections.abc import Callable

import pytest

import vmrun

pytestmark = pytest.mark.vm


def test_e2e_debian_612(guest_pytest: Callable[..., vmrun.VMResult]) -> None:
    guest_pytest("test_daemon_e2e.py", passed=2, skipped=1, topology="2node",
                 kernel="debian-6.12", timeout=1500,
                 pytest_args=["-s"])


def test_e2e_idle_kernel(guest_pytest: Callable[..., vmrun.VMResult]) -> None:
    guest_pytest("test_daemon_e2e.py", passed=1, skipped=2, topology="2node", kernel="idle", timeout=1500,
                 pytest_args=["-s"])
