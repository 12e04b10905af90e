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
