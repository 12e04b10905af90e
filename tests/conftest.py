from __future__ import annotations

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
