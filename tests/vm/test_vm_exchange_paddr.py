"""Host side: with the hint-faults sampler and demotion.method damon-paddr, kmigratedd makes room
on a full fast tier in the guest through a DAMON paddr kdamond over node 0 whose migrate_cold
scheme's quota follows the room needed (tests/vm/guest/test_exchange.py)."""
from __future__ import annotations

from collections.abc import Callable

import pytest

import vmrun

pytestmark = pytest.mark.vm


def test_exchange_through_damon_paddr_on_a_full_fast_tier_debian_612(
        guest_pytest: Callable[..., vmrun.VMResult]) -> None:
    guest_pytest("test_exchange.py", passed=1, topology="2node", kernel="debian-6.12",
                 mem=["4608M", "2048M"], timeout=1500, pytest_args=["-s"],
                 env={"KMIGRATEDD_EXCHANGE_SAMPLER": "hint-faults",
                      "KMIGRATEDD_EXCHANGE_DEMOTION": "damon-paddr",
                      "KMIGRATEDD_EXCHANGE_HOT_MIB": "128"})
