"""Host side: the DAMON sampler inside the tiered guest (real DAMON, real move_pages queries).

Run with -s to see the measured figures (time to first candidate, time to 90% hot
coverage, cold fraction)."""
from __future__ import annotations

from collections.abc import Callable

import pytest

import vmrun

pytestmark = pytest.mark.vm


def test_damon_sampler_612(guest_pytest: Callable[..., vmrun.VMResult]) -> None:
    guest_pytest("test_sampler_damon.py", passed=5, skipped=1, topology="2node", kernel="debian-6.12", timeout=900)


def test_damon_probe_61(guest_pytest: Callable[..., vmrun.VMResult]) -> None:
    guest_pytest("test_sampler_damon.py::test_probe_says_why_on_an_old_kernel", passed=1,
                 topology="2node", kernel="debian-6.1", timeout=300)
