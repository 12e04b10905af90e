"""Host side: the embedded default config promotes hot pages and not cold ones, dense,
sparse (1 in 16, 1 in 64), THP and a hot-set shift (tests/vm/guest/test_precision.py), on
Debian 6.12 with node 0 empty and under pressure.  (On the idle-tracking kernel auto picks
hint-faults too, so a run there repeats the first; the idle sampler's precision is in
test_vm_sampler_idle.py and test_vm_daemon_e2e.py.)"""
from __future__ import annotations

from collections.abc import Callable

import pytest

import vmrun

pytestmark = pytest.mark.vm

CASES = 5


def test_precision_debian_612(guest_pytest: Callable[..., vmrun.VMResult]) -> None:
    guest_pytest("test_precision.py", passed=CASES, topology="2node", kernel="debian-6.12",
                 timeout=1500, pytest_args=["-s"])


def test_precision_debian_612_node0_under_pressure(
        guest_pytest: Callable[..., vmrun.VMResult]) -> None:
    guest_pytest("test_precision.py", passed=CASES, topology="2node", kernel="debian-6.12",
                 timeout=1500, pytest_args=["-s"],
                 env={"KMIGRATEDD_PRECISION_PRESSURE": "1"})
