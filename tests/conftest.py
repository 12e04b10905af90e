from __future__ import annotations

import os
from pathlib import Path

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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root: starts the installed daemon, which needs root "
                                   "or CAP_SYS_ADMIN (sudo bash tests/run.sh)")
    for item in items:
        module = item.path.name
        if module in NEEDS_ROOT_MODULES or \
                f"{module}::{item.name.split('[')[0]}" in NEEDS_ROOT_TESTS:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter,
                            config: pytest.Config) -> None:
    rows = config.stash.get(HARDENING_ROWS, [])
    if rows:
        terminalreporter.section("kmigratedd hardening: each input, before and now")
        terminalreporter.write_line("| input | before | now |")
        terminalreporter.write_line("|---|---|---|")
        for name, before, now in rows:
            cells = [c.replace("|", "\\|").replace("\n", " ") for c in (name, before, now)]
            terminalreporter.write_line("| " + " | ".join(cells) + " |")
