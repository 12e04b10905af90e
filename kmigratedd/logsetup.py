"""Logging to stderr in a journald-friendly format.

Under systemd (``JOURNAL_STREAM`` set) each line starts with the syslog priority
as ``<N>`` (sd-daemon(3)), so journald records the level and adds its own time
stamp; elsewhere lines carry a time stamp and the level name.
"""

from __future__ import annotations

import logging
import os
import sys

_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
             logging.CRITICAL: 2}


class _JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prio = _PRIORITY.get(record.levelno, 6)
        return "\n".join(f"<{prio}>{line}" for line in super().format(record).splitlines())


def setup(level: str, debug: bool = False) -> None:
    """Configure the root logger once; ``debug`` forces DEBUG and tracebacks."""
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(_JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else getattr(logging, level.upper()))


def set_level(level: str) -> None:
    logging.getLogger().setLevel(getattr(logging, level.upper()))
