"""Host side: the idle-page sampler inside the tiered guest (the `idle` kernel with
CONFIG_IDLE_PAGE_TRACKING, built by tests/vm/build_kernel.sh), and its benchmark."""
from __future__ import annotations

from collections.abc import Callable

import pytest

import vmrun

pytestmark = pytest.mark.vm


def test_idle_sampler(guest_pytest: Callable[..., vmrun.VMResult]) -> None:
    guest_pytest("test_sampler_idle.py", passed=6, topology="2node", kernel="idle", timeout=1800,
                 pytest_args=["-s"])
