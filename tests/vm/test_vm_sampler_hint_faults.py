"""Host side: the hint-fault sampler inside the tiered guest (Debian 6.12)."""
from __future__ import annotations

from typing import Callable

import pytest

import vmrun

pytestmark = pytest.mark.vm


def test_hint_fault_sampler(guest_pytest: Callable[..., vmrun.VMResult]) -> None:
    guest_pytest("test_sampler_hint_faults.py", passed=3, topology="2node", kernel="debian-6.12",
                 timeout=900, pytest_args=["-s"])
