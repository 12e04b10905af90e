"""Shared by the property-based fuzz suites (tests/test_fuzz_*.py): how many examples
to run and a line per test saying how many ran and for how long.

KMIGRATEDD_FUZZ_EXAMPLES sets the examples per property (default 200, the CI run);
a long local run: KMIGRATEDD_FUZZ_EXAMPLES=20000 bash tests/run.sh tests/test_fuzz_*.py
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from hypothesis import HealthCheck, settings

EXAMPLES = int(os.environ.get("KMIGRATEDD_FUZZ_EXAMPLES", "200"))

# No example database: it would be written into the source tree, and CI starts clean.
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])


class Counter:
    def __init__(self) -> None:
        self.n = 0

    def __call__(self) -> None:
        self.n += 1


@contextmanager
def reported(request: pytest.FixtureRequest) -> Iterator[Counter]:
    """Count the examples a property ran; report them and the time on the terminal."""
    count = Counter()
    t0 = time.monotonic()
    try:
        yield count
    finally:
        line = (f"fuzz {request.node.name}: {count.n} examples in "
                f"{time.monotonic() - t0:.1f}s (KMIGRATEDD_FUZZ_EXAMPLES={EXAMPLES})")
        tr = request.config.pluginmanager.get_plugin("terminalreporter")
        if tr is not None:
            tr.write_line(line)
        print(line)
