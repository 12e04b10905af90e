"""Host side: the deploy artifacts against a promoting kmigratedd in the tiered guest —
every Grafana panel query through a real Prometheus scraping the daemon (alert rules
loaded), and deploy/kmigratedd.service under a real systemd
(tests/vm/guest/test_prometheus_dashboard.py)."""
from __future__ import annotations

from collections.abc import Callable

import pytest

import vmrun

pytestmark = pytest.mark.vm


def test_deploy_artifacts_debian_612(guest_pytest: Callable[..., vmrun.VMResult]) -> None:
    guest_pytest("test_prometheus_dashboard.py", passed=2, topology="2node", kernel="debian-6.12",
                 timeout=1500, pytest_args=["-s"])
