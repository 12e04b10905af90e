"""Host side: the embedded default config promotes hot pages and not cold ones, dense,
sparse (1 in 16, 1 in 64), THP and a hot-set shift (tests/vm/guest/test_precision.py), on
Debian 6.12 with node 0 empty.  The guest test also runs with node 0 under pressure
(KMIGRATEDD_PRECISION_PRESSURE=1), and on the idle-tracking kernel, by hand: CI runs the
one that differs most (node 0 under pressure is what the full-tier exchange tests run on,
and on the idle kernel auto picks hint-faults too), to stay within its time."""
from __future__ import annotations

from collections.abc import Callable

import pytest

import vmrun

pytestmark = pytest.mark.vm

CASES = 5


def test_precision_debian_612(guest_pytest: Callable[..., vmrun.VMResult]) -> None:
    guest_pytest("test_precision.py", passed=CASES, topology="2node", kernel="debian-6.12",
                 timeout=1500, pytest_args=["-s"])
