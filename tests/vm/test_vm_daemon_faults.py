"""Host side: kmigratedd under faults in the tiered guest."""
from __future__ import annotations

from typing import Callable

import pytest

import vmrun

pytestmark = pytest.mark.vm


def test_daemon_faults(guest_pytest: Callable[..., vmrun.VMResult]) -> None:
    guest_pytest("test_daemon_faults.py", passed=4, topology="2node", kernel="debian-6.12", timeout=1500,
                 pytest_args=["-s"])
