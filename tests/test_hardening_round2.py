"""Reliability, round 2: every case of tests/hardening/cases_round2.py, run against the
installed console scripts, gives the safe outcome (each gave the unsafe one in its
``before`` column, the code before this round)."""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "cases_round2", Path(__file__).resolve().parent / "hardening" / "cases_round2.py")
assert _spec is not None and _spec.loader is not None
cases = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cases)

SAFE = {
    "64 idle TCP connections held to the metrics port, 20 scrapes":
        r"^20 of 20 scrapes answered 200; idle connections shed: counted$",
    "sampler.hint_faults.state_file names the config file itself":
        r"^--check-config exit 2, start exit 2: kmigratedd: .*sampler\.hint_faults\.state_file: "
        r"its directory \$TMP/etc has mode 0755: the state directory must be root's alone.*; "
        r"the file intact$",
    "EMFILE once in a periodic task":
        r"^logged 1 line\(s\) \(topology refresh failed: OSError: \[Errno 24\].*counted 1, "
        r"run again after 0\.\ds$",
    "SIGUSR1, SIGUSR2, SIGALRM":
        r"^still running; status lines and the ignored signal logged; then SIGTERM: exit 0, "
        r"socket removed$",
    "kmigratedctl status | head -1, kmigratedctl config | true": r"^quiet, no traceback$",
    "kmigratedctl reload of a bad config":
        r"^client exit 1, code -32002; log: 1 ERROR line\(s\), no traceback$",
    "malformed replies to kmigratedctl (1, [], no result, null config, {} status)":
        r"^5 of 5 give one line and a non-zero exit$",
    "RLIMIT_NOFILE 12":
        r"^exit 2, no traceback: kmigratedd: .*(Too many open files|too many open files).*",
    "queues.capacity_per_cpu that cannot be allocated (RLIMIT_AS 700 MiB)":
        r"^exit 2, no traceback: kmigratedd: (cannot allocate the candidate queues|out of "
        r"memory)",
    "control socket under /proc; a group-writable state directory":
        r"^socket under /proc: --check-config exit 2; group-writable state dir: --check-config "
        r"exit 2$",
    "a non-root start": (r"^exit 2: kmigratedd: kmigratedd needs root, or CAP_SYS_ADMIN"
                         if os.geteuid() == 0 else r"^exit 2: "),
    "a JSON-RPC request with two method keys; a notification":
        r"^duplicate keys: errors \[-32600, -32600\], paused False; a notification: 0 replies$",
    "the control socket deleted while the daemon runs, then a second start":
        r"^the second exits 2: kmigratedd: another kmigratedd \(pid PID\) is running with this "
        r"control socket",
    "blank lines sent on an idle control connection": r"^closed after 3[0-4]s$",
    "a second daemon with the same metrics port":
        r"^exit 2: kmigratedd: metrics\.port PORT on 127\.0\.0\.1 is in use .*; nothing started$",
}


def test_every_case_has_an_expectation() -> None:
    assert sorted(SAFE) == sorted(name for name, _, _ in cases.CASES)


@pytest.mark.parametrize("name, before, run", cases.CASES, ids=[c[0] for c in cases.CASES])
def test_case_is_safe_now(name: str, before: str, run,  # type: ignore[no-untyped-def]
                          hardening_row) -> None:
    now = run()
    hardening_row(name, before, now)
    assert re.search(SAFE[name], now), now
