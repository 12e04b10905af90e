"""Host side: memory pressure in the workload's cgroup holds promotion back until it is gone
(tests/vm/guest/test_pressure.py, Debian 6.12)."""
from __future__ import annotations

from collections.abc import Callable

import pytest

import vmrun

pytestmark = pytest.mark.vm


def test_memory_pressure_holds_promotion_debian_612(
        guest_pytest: Callable[..., vmrun.VMResult]) -> None:
    guest_pytest("test_pressure.py", passed=1, topology="2node", kernel="debian-6.12",
                 timeout=900, pytest_args=["-s"])
