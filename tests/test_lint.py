"""Static checks of the package: ruff and mypy (strict), as configured in pyproject.toml."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    path = BIN / name
    if not path.exists():
        found = shutil.which(name)
        if found is None:
            pytest.fail(f"{name} is not installed: bash tests/setup.sh")
        return found
    return str(path)


def test_ruff():
    r = subprocess.run([tool("ruff"), "check", "--output-format", "concise", "kmigratedd",
                        "native/build_shim.py", "setup.py"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_mypy_strict():
    r = subprocess.run([tool("mypy"), "kmigratedd"], cwd=REPO, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
