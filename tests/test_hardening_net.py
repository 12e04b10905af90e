"""Every case of tests/hardening/cases_net.py, run against the installed console scripts,
gives the safe outcome."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "cases_net", Path(__file__).resolve().parent / "hardening" / "cases_net.py")
assert _spec is not None and _spec.loader is not None
cases_net = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cases_net)

SAFE = {
    "control.socket_path is an existing regular file":
        r"^exit 2: kmigratedd: \S+kmigratedd\.yaml: control\.socket_path: \$TMP/control\.sock "
        r"is a regular file, not a socket; .*; file intact$",
    "control.socket_path is a symlink to a regular file":
        r"^exit 2: .*control\.socket_path: .* is a symbolic link, not a socket; .*"
        r"symlink and target intact$",
    "a file put at the socket path while running, then SIGTERM":
        r"^exit 0; the file put in its place is kept$",
    "/metrics request whose headers trickle in (one line every 0.5 s)":
        r"^connection closed after [4-7]\.\ds$",
    "60,000 '[' on the control socket":
        r"^JSON-RPC error -32600: invalid request: nested deeper than 32 levels; "
        r"daemon answers$",
    "control socket: half a request, then silence":
        r"^JSON-RPC error -32600: request not complete within 5s after [4-8]\.\ds$",
    "kmigratedctl status from a peer in control.group only as a supplementary group":
        r"^(allowed: status answered|skipped: .*)$",
    "kmigratedctl status from a peer not in control.group (mode 0660 refuses it)":
        r"^(exit 1: kmigratedctl: permission denied .*|skipped: .*)$",
    "control.socket_path longer than 108 bytes (daemon)":
        r"^exit 2: kmigratedd: .*control\.socket_path: longer than 107 bytes, the most a unix "
        r"socket path can be",
    "kmigratedctl -s PATH longer than 108 bytes":
        r"^exit 1: kmigratedctl: --socket /tmp/d+/s+\.sock: 131 bytes long; "
        r"a unix socket path holds at most 107 bytes",
    "kmigratedctl --version": r"^exit 0: kmigratedctl \d+\.\d+",
    "kmigratedctl --help": r"^exit 0: 0 double backticks; description 'kmigratedctl: talk",
    "Kubernetes manifests: who can reach /metrics":
        r"^metrics on 0\.0\.0\.0; NetworkPolicy kmigratedd-metrics: TCP/9477 only from "
        r"namespace \{.+\} and pod \{.+\}$",
}


def test_every_case_has_an_expectation() -> None:
    assert sorted(SAFE) == sorted(name for name, _, _ in cases_net.CASES)


@pytest.mark.parametrize("name, before, run", cases_net.CASES,
                         ids=[c[0] for c in cases_net.CASES])
def test_case_is_safe_now(name: str, before: str, run,  # type: ignore[no-untyped-def]
                          hardening_row) -> None:
    now = run()
    hardening_row(name, before, now)
    assert re.search(SAFE[name], now), now
