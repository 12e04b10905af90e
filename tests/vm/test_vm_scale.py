"""Host side: a workload started last among 500 small processes on the slow node is
promoted by kmigratedd with its default config, and with each other sampler the kernels
allow (tests/vm/guest/test_scale.py).
KMIGRATEDD_SCALE_SAMPLER (say hint-faults), KMIGRATEDD_SCALE_OTHERS and
KMIGRATEDD_E2E_BOUND_S are passed to the guest."""
from __future__ import annotations

import os
from collections.abc import Callable

import pytest

import vmrun

pytestmark = pytest.mark.vm

FORWARD = ("KMIGRATEDD_SCALE_SAMPLER", "KMIGRATEDD_SCALE_OTHERS", "KMIGRATEDD_E2E_BOUND_S")


def test_scale_debian_612(guest_pytest: Callable[..., vmrun.VMResult]) -> None:
    env = {k: os.environ[k] for k in FORWARD if k in os.environ}
    guest_pytest("test_scale.py", passed=1, topology="2node", kernel="debian-6.12",
                 timeout=2400, env=env, pytest_args=["-s"])


def test_scale_debian_612_damon(guest_pytest: Callable[..., vmrun.VMResult]) -> None:
    env = {k: os.environ[k] for k in FORWARD[1:] if k in os.environ}
    guest_pytest("test_scale.py", passed=1, topology="2node", kernel="debian-6.12",
                 timeout=2400, env={**env, "KMIGRATEDD_SCALE_SAMPLER": "damon"},
                 pytest_args=["-s"])


def test_scale_idle_kernel_idle(guest_pytest: Callable[..., vmrun.VMResult]) -> None:
    env = {k: os.environ[k] for k in FORWARD[1:] if k in os.environ}
    guest_pytest("test_scale.py", passed=1, topology="2node", kernel="idle",
                 timeout=2400, env={**env, "KMIGRATEDD_SCALE_SAMPLER": "idle"},
                 pytest_args=["-s"])
