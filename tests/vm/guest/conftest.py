"""Guest-side tests: meaningful only inside the kmigratedd VM (KMIGRATEDD_IN_VM=1)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

IN_VM = os.environ.get("KMIGRATEDD_IN_VM") == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if IN_VM:
        return
    skip = pytest.mark.skip(
        reason="guest test: runs only inside the kmigratedd VM (tests/vm/test_vm_*.py boot it)"
    )
    for item in items:
        if HERE in Path(str(item.path)).parents:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def topology() -> str:
    return os.environ["KMIGRATEDD_VM_TOPOLOGY"]


@pytest.fixture(scope="session")
def kernel() -> str:
    return os.environ["KMIGRATEDD_VM_KERNEL"]


@pytest.fixture(scope="session")
def slow_nodes(topology: str) -> list[int]:
    return {"2node": [1], "3node": [1, 2]}[topology]
