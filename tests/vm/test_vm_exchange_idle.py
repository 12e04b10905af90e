"""Host side: kmigratedd with the idle sampler makes room on a full fast tier in the guest (the
`idle` kernel with CONFIG_IDLE_PAGE_TRACKING; node 0 of 4.5 GiB held by a cold process): the
idle sampler ages the fast tier's pages while promotion needs room and offers the cold ones for
demotion (tests/vm/guest/test_exchange.py, KMIGRATEDD_EXCHANGE_SAMPLER=idle)."""
from __future__ import annotations

from collections.abc import Callable

import pytest

import vmrun

pytestmark = pytest.mark.vm


def test_exchange_on_a_full_fast_tier_idle_sampler(
        guest_pytest: Callable[..., vmrun.VMResult]) -> None:
    guest_pytest("test_exchange.py", passed=1, topology="2node", kernel="idle",
                 mem=["4608M", "2048M"], timeout=1500, pytest_args=["-s"],
                 env={"KMIGRATEDD_EXCHANGE_SAMPLER": "idle",
                      "KMIGRATEDD_EXCHANGE_HOT_MIB": "128"})
