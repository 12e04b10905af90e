from __future__ import annotations

from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parent / "data"
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def data_dir() -> Path:
    return DATA
