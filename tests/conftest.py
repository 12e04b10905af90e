from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

import pytest

DATA = Path(__file__).resolve().parent / "data"
REPO = Path(__file__).resolve().parent.parent


def pytest_sessionstart(session: pytest.Session) -> None:
    """Every test runs against the installed kmigratedd (tests/run.sh installs the wheel into a
    venv outside the source tree).  A run that imports ./kmigratedd instead stops here."""
    import kmigratedd

    where = Path(kmigratedd.__file__).resolve()
    if where.is_relative_to(REPO):
        pytest.exit(f"kmigratedd was imported from the source tree ({where}), not from an "
                    "installed wheel: run the tests through tests/run.sh", returncode=4)


@pytest.fixture
def data_dir() -> Path:
    return DATA


HARDENING_ROWS = pytest.StashKey[list[tuple[str, str, str]]]()


@pytest.fixture
def hardening_row(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """record(name, before, now): a row of the hardening table printed at the end of the run
    (tests/hardening/cases_*.py hold the inputs; tests/test_hardening_*.py run them)."""
    rows = request.config.stash.setdefault(HARDENING_ROWS, [])

    def record(name: str, before: str, now: str) -> None:
        rows.append((name, before, now))

    return record


# Tests that start the installed daemon (it refuses to start without root or
# CAP_SYS_ADMIN) or act as root: skipped, saying so, when the quick loop runs as a user.
NEEDS_ROOT_MODULES = {"test_control.py", "test_daemon.py", "test_hardening_net.py",
                      "test_hardening_round2.py"}
NEEDS_ROOT_TESTS = {
    "test_artifact.py::test_the_installed_daemon_serves_answers_and_stops_cleanly",
    "test_hardening_config.py::test_reload_refuses_the_same_inputs_and_always_ends_ready",
    "test_hardening_files.py::test_installed_daemon_recovers_at_start_with_another_sampler",
}


# tests/run.sh runs the tests under pytest-xdist, one worker per guest the machine has room
# for (pytest_xdist_auto_num_workers): the host tests stay together, in order, on one worker
# (the group "host"); each guest test is a unit of its own, the longest first so that the
# workers end together.  The minutes are the guest runs' wall times in a CI run; a guest test
# not listed counts as GUEST_MINUTES_DEFAULT.
GUEST_MINUTES = {
    "test_vm_exchange.py": 11, "test_vm_daemon_faults.py": 7, "test_vm_prometheus.py": 6,
    "test_vm_exchange_idle.py": 6, "test_vm_daemon_e2e.py": 5, "test_vm_exchange_damon.py": 5,
    "test_vm_exchange_paddr.py": 5, "test_vm_precision.py": 5, "test_vm_scale.py": 4,
}
GUEST_MINUTES_DEFAULT = 2
GIB_PER_GUEST = 10  # a fast-tier test's guest has 6.5 GiB; the host keeps the rest


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto`: one worker per guest this machine can run at once, one per CPU and
    GIB_PER_GUEST of memory (KMIGRATEDD_TEST_WORKERS overrides)."""
    raw = os.environ.get("KMIGRATEDD_TEST_WORKERS", "")
    if raw:
        if not raw.isdigit() or int(raw) < 1:
            raise pytest.UsageError(f"KMIGRATEDD_TEST_WORKERS={raw!r}: give a number >= 1")
        return int(raw)
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return max(1, min(os.cpu_count() or 1, int(mem_gib // GIB_PER_GUEST)))


def _order_for_workers(items: list[pytest.Item]) -> None:
    host = pytest.mark.xdist_group("host")
    guest: list[pytest.Item] = []
    rest: list[pytest.Item] = []
    for item in items:
        if item.get_closest_marker("vm") is not None and item.path.name.startswith("test_vm_"):
            guest.append(item)
        else:
            item.add_marker(host)
            rest.append(item)
    # a stable sort: within a module the tests keep their order
    guest.sort(key=lambda i: -GUEST_MINUTES.get(i.path.name, GUEST_MINUTES_DEFAULT))
    items[:] = guest + rest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("PYTEST_XDIST_WORKER"):
        _order_for_workers(items)
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root: starts the installed daemon, which needs root "
                                   "or CAP_SYS_ADMIN (sudo bash tests/run.sh)")
    for item in items:
        module = item.path.name
        if module in NEEDS_ROOT_MODULES or \
                f"{module}::{item.name.split('[')[0]}" in NEEDS_ROOT_TESTS:
            item.add_marker(skip)


VM_RUNS = pytest.StashKey[list[tuple[Any, ...]]]()


def _vm_runs_here() -> list[tuple[Any, ...]]:
    vmpytest = sys.modules.get("vmpytest")  # imported by tests/vm/conftest.py
    return [dataclasses.astuple(r) for r in vmpytest.RUNS] if vmpytest else []


def pytest_sessionfinish(session: pytest.Session) -> None:
    """In an xdist worker: hand what the summaries print to the controller."""
    out = getattr(session.config, "workeroutput", None)
    if out is not None:
        out["hardening_rows"] = session.config.stash.get(HARDENING_ROWS, [])
        out["vm_runs"] = _vm_runs_here()


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """In the xdist controller: gather the workers' summary rows."""
    out = getattr(node, "workeroutput", {})
    node.config.stash.setdefault(HARDENING_ROWS, []).extend(
        tuple(r) for r in out.get("hardening_rows", []))
    node.config.stash.setdefault(VM_RUNS, []).extend(tuple(r) for r in out.get("vm_runs", []))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter,
                            config: pytest.Config) -> None:
    runs = config.stash.get(VM_RUNS, []) + _vm_runs_here()
    if runs:
        sys.path.insert(0, str(REPO / "tests" / "vm"))
        import vmpytest

        terminalreporter.section("kmigratedd VM runs")
        for line in vmpytest.summary_lines([vmpytest.RunRecord(*r) for r in runs]):
            terminalreporter.write_line(line)
    rows = config.stash.get(HARDENING_ROWS, [])
    if rows:
        terminalreporter.section("kmigratedd hardening: each input, before and now")
        terminalreporter.write_line("| input | before | now |")
        terminalreporter.write_line("|---|---|---|")
        for name, before, now in rows:
            cells = [c.replace("|", "\\|").replace("\n", " ") for c in (name, before, now)]
            terminalreporter.write_line("| " + " | ".join(cells) + " |")
