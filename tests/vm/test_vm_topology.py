"""Host side: boot guests with each topology/kernel and check the raw topology in them."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import vmrun

pytestmark = pytest.mark.vm


@pytest.mark.parametrize(
    ("topology", "kernel"),
    [
        ("2node", "debian-6.12"),
        ("3node", "debian-6.12"),
        ("2node", "debian-6.1"),  # compatibility: 9p module order, one memory tier
    ],
)
def test_topology(guest_pytest: Callable[..., vmrun.VMResult], topology: str, kernel: str) -> None:
    guest_pytest("test_topology_raw.py", passed=10, topology=topology, kernel=kernel, timeout=300)
