"""Host side: the custom `idle` kernel (CONFIG_IDLE_PAGE_TRACKING, DAMON), built once per machine
by tests/vm/build_kernel.sh (~8 min on 2 cores if the cache is empty)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import vmrun

pytestmark = pytest.mark.vm


def test_page_idle_on_idle_kernel(guest_pytest: Callable[..., vmrun.VMResult]) -> None:
    guest_pytest("test_page_idle_raw.py", passed=5, topology="2node", kernel="idle", timeout=1800)


def test_topology_on_idle_kernel(guest_pytest: Callable[..., vmrun.VMResult]) -> None:
    guest_pytest("test_topology_raw.py", passed=10, topology="3node", kernel="idle", timeout=300)


def test_page_idle_absent_on_debian(guest_pytest: Callable[..., vmrun.VMResult]) -> None:
    guest_pytest("test_page_idle_raw.py", passed=2, skipped=3, topology="2node",
                 kernel="debian-6.12", timeout=300)
