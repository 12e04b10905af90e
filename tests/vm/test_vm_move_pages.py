"""Host side: raw move_pages(2) behaviour inside the tiered guest."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import vmrun

pytestmark = pytest.mark.vm


@pytest.mark.parametrize("kernel", ["debian-6.12", "debian-6.1"])
def test_move_pages_2node(guest_pytest: Callable[..., vmrun.VMResult], kernel: str) -> None:
    guest_pytest("test_move_pages_raw.py", passed=6, topology="2node", kernel=kernel, timeout=600)
