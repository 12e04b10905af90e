"""Config inputs that broke ``kmigratedd --check-config`` (and start, and reload), each
run against the installed console script.

``CASES`` is a list of ``(name, before, run)``: ``name`` describes the input, ``before`` is
what the code before the hardening gave, and ``run()`` runs the input now and returns
``"exit N: <the one stderr line>"`` (truncated).  A runner can load this file by path:

    spec = importlib.util.spec_from_file_location("cases_config", PATH)

and ``python tests/hardening/cases_config.py`` prints the table.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

KMIGRATEDD = Path(sys.executable).with_name("kmigratedd")
TIMEOUT_S = 20.0
# No live machine has node 1023 online (MAX_NUMNODES is at most 1 << 10).
OFFLINE_NODE = 1023


def alias_bomb(levels: int) -> str:
    """``levels`` anchors, each a list of ten aliases of the one before: 10**levels
    integers under ``scope.pids``, from a few hundred bytes of YAML."""
    lines = ["scope:", "  exclude_pids: []", "  pids:", "    - &l0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    for i in range(1, levels):
        lines.append(f"    - &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]")
    return "\n".join(lines) + "\n"


def nested(depth: int) -> str:
    return "workers:\n  max_wait_ms: " + "[" * depth + "]" * depth + "\n"


def summary(proc: subprocess.CompletedProcess[str] | None) -> str:
    if proc is None:
        return f"hangs (killed after {TIMEOUT_S:g}s)"
    lines = proc.stderr.splitlines()
    first = lines[0] if lines else ""
    if len(first) > 160:
        first = first[:157] + "..."
    more = f" (+{len(lines) - 1} more lines)" if len(lines) > 1 else ""
    return f"exit {proc.returncode}: {first}{more}"


def check_config(path: str) -> subprocess.CompletedProcess[str] | None:
    try:
        return subprocess.run([str(KMIGRATEDD), "--check-config", path], capture_output=True,
                              text=True, timeout=TIMEOUT_S, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return None


def run_text(text: str) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "kmigratedd.yaml"
        path.write_text(text)
        return summary(check_config(str(path)))


def run_path(path: str) -> str:
    return summary(check_config(path))


def run_fifo() -> str:
    with tempfile.TemporaryDirectory() as tmp:
        fifo = Path(tmp) / "kmigratedd.yaml"
        os.mkfifo(fifo)
        return summary(check_config(str(fifo)))


def text_case(text: str) -> Callable[[], str]:
    return lambda: run_text(text)


# (name, before, run); the key each error must name is in EXPECT below.
CASES: list[tuple[str, str, Callable[[], str]]] = [
    ("workers.max_wait_ms: .inf", "traceback (OverflowError), exit 1",
     text_case("workers:\n  max_wait_ms: .inf\n")),
    ("workers.max_wait_ms: .nan", "traceback (ValueError), exit 1",
     text_case("workers:\n  max_wait_ms: .nan\n")),
    ("workers.batch_pages: a 400-digit integer", "traceback (OverflowError), exit 1",
     text_case("workers:\n  batch_pages: " + "9" * 400 + "\n")),
    ('workers.min_free_bytes: "999…9 TiB" (400 digits)', "traceback (OverflowError), exit 1",
     text_case('workers:\n  min_free_bytes: "' + "9" * 400 + ' TiB"\n')),
    ("a list as a key: ? [a, b]", "traceback (TypeError: unhashable), exit 1",
     text_case("? [a, b]\n: 1\n")),
    ("a value nested 300 deep", "traceback (RecursionError), exit 1", text_case(nested(300))),
    ("/dev/zero as the config", "traceback (MemoryError), exit 1", lambda: run_path("/dev/zero")),
    ("a FIFO as the config", "hangs forever", run_fifo),
    ("alias bomb, 10**6 items under scope.pids", "a 7 MB error line, exit 2",
     text_case(alias_bomb(6))),
    ("alias bomb, 10**9 items under scope.pids", "traceback (MemoryError), exit 1",
     text_case(alias_bomb(9))),
    ("workers.rate_limit_mb_per_s: .nan",
     "accepted (unlimited rate), exit 0; kmigratedctl config crashes",
     text_case("workers:\n  rate_limit_mb_per_s: .nan\n")),
    ("control.group: a group that does not exist", "passes --check-config; start exits 1",
     text_case("control:\n  group: kmigratedd-no-such-group\n")),
    ("metrics.listen_address: a name that does not resolve",
     "passes --check-config; start exits 1 without naming the key",
     text_case("metrics:\n  listen_address: no-such-host.invalid\n")),
    (f"topology.tiers: an offline node ({OFFLINE_NODE})", "passes --check-config; start exits 1",
     text_case(f"topology:\n  tiers: [[0], [{OFFLINE_NODE}]]\n")),
    (f"topology.promotion_targets: an offline node ({OFFLINE_NODE})",
     "passes --check-config; start exits 1",
     text_case(f"topology:\n  promotion_targets: {{{OFFLINE_NODE}: 0}}\n")),
]

# What the one stderr line must contain now, per case name.
EXPECT: dict[str, str] = {
    CASES[0][0]: "workers.max_wait_ms: must be <= 60000 ms, got inf",
    CASES[1][0]: "workers.max_wait_ms: must be a number, got nan",
    CASES[2][0]: "workers.batch_pages: must be <= 65536, got <401-digit integer>",
    CASES[3][0]: "workers.min_free_bytes: size '",
    CASES[4][0]: "<document>: keys must be strings, got a list ['a', 'b']",
    CASES[5][0]: "nested more than 64 deep",
    CASES[6][0]: "/dev/zero: not a regular file (a character device)",
    CASES[7][0]: "not a regular file (a FIFO)",
    CASES[8][0]: "more than 100000 nodes once aliases are expanded",
    CASES[9][0]: "more than 100000 nodes once aliases are expanded",
    CASES[10][0]: "workers.rate_limit_mb_per_s: must be a number, got nan",
    CASES[11][0]: "control.group: no group named 'kmigratedd-no-such-group'",
    CASES[12][0]: "metrics.listen_address: cannot listen on 'no-such-host.invalid'",
    CASES[13][0]: f"topology.tiers: node {OFFLINE_NODE} is not online",
    CASES[14][0]: f"topology.promotion_targets: node {OFFLINE_NODE} is not online",
}


def main() -> None:
    print("name | before | now")
    for name, before, run in CASES:
        print(f"{name} | {before} | {run()}")


if __name__ == "__main__":
    main()
