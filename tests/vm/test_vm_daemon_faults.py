"""Host side: kmigratedd under faults in the tiered guest."""
from __future__ import annotations

from typing import Callable

import pytest

import vmrun

pytestmark = pytest.mark.vm


def test_daemon_faults(guest_pytest: Callable[..., vmrun.VMResult]) -> None:
    guest_pytest("test_daemon_faults.py", passed=4, topology="2node", kernel="debian-6.12", timeout=1500,
                 pytest_args=["-s"])


def test_daemon_killed_mid_exchange_debian_612(
        guest_pytest: Callable[..., vmrun.VMResult]) -> None:
    """SIGKILL for each demotion method and an OOM kill, in the middle of an exchange on a
    full fast tier (node 0 of 4.5 GiB: see tests/vm/README.md)."""
    guest_pytest("test_daemon_killed.py", passed=4, topology="2node", kernel="debian-6.12",
                 mem=["4608M", "2048M"], timeout=1800, pytest_args=["-s"])
