"""Host side: with the damon sampler, whose cold regions the workers demote with move_pages,
kmigratedd makes room on a full fast tier in the guest (tests/vm/guest/test_exchange.py).
The embedded default (tests/vm/test_vm_exchange.py) picks hint-faults, which sees no access
on the fast tier, and kswapd to make room."""
from __future__ import annotations

from collections.abc import Callable

import pytest

import vmrun

pytestmark = pytest.mark.vm


def test_exchange_with_damon_on_a_full_fast_tier_debian_612(
        guest_pytest: Callable[..., vmrun.VMResult]) -> None:
    guest_pytest("test_exchange.py", passed=1, topology="2node", kernel="debian-6.12",
                 mem=["4608M", "2048M"], timeout=1500, pytest_args=["-s"],
                 env={"KMIGRATEDD_EXCHANGE_SAMPLER": "damon",
                      "KMIGRATEDD_EXCHANGE_HOT_MIB": "128"})
