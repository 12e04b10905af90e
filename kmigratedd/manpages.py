"""Manual pages, generated from what the programs are: ``kmigratedd(8)`` and
``kmigratedctl(8)`` from their argparse parsers, ``kmigratedd.yaml(5)`` from the embedded
default config, whose comments document every key.  ``kmigratedd --man PAGE`` prints one
in roff; nothing is written by hand, so a page cannot drift from the option or key it
describes.
"""

from __future__ import annotations

import argparse
import re
from importlib import resources

from . import __version__

PAGES = ("kmigratedd.8", "kmigratedctl.8", "kmigratedd.yaml.5")
DATE = "2026-12"


def esc(text: str) -> str:
    """Text safe in roff: backslashes doubled, a leading dot or quote guarded."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + ln if ln[:1] in (".", "'") else ln for ln in text.split("\n"))


def _head(name: str, section: int, summary: str) -> list[str]:
    return [f'.TH {name.upper()} {section} "{DATE}" "kmigratedd {__version__}" '
            f'"kmigratedd manual"', ".SH NAME", f"{esc(name)} \\- {esc(summary)}"]


def _options(parser: argparse.ArgumentParser, with_help: bool = True) -> list[str]:
    out: list[str] = []
    for a in parser._actions:
        if a.help == argparse.SUPPRESS or isinstance(a, argparse._SubParsersAction):
            continue
        if not with_help and isinstance(a, argparse._HelpAction):
            continue
        flags = ", ".join(f"\\fB{esc(o)}\\fR" for o in a.option_strings) or \
            f"\\fI{esc(a.dest)}\\fR"
        if a.option_strings and a.nargs != 0:
            flags += f" \\fI{esc(str(a.metavar or a.dest.upper()))}\\fR"
        out += [".TP", flags, esc(a.help or "")]
    return out


def from_parser(parser: argparse.ArgumentParser, name: str, summary: str,
                description: str) -> str:
    """A section 8 page: synopsis, description, options, and each subcommand's own."""
    usage = parser.format_usage().removeprefix("usage: ").strip()
    out = _head(name, 8, summary)
    out += [".SH SYNOPSIS", ".nf", esc(usage), ".fi", ".SH DESCRIPTION", esc(description),
            ".SH OPTIONS"] + _options(parser)
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            out.append(".SH COMMANDS")
            helps = {c.dest: c.help for c in a._choices_actions}
            for cmd, sub in a.choices.items():
                out += [".TP", f"\\fB{esc(cmd)}\\fR", esc(helps.get(cmd) or "")]
                opts = _options(sub, with_help=False)
                if opts:
                    out += [".RS"] + opts + [".RE"]
    out += [".SH SEE ALSO", "\\fBkmigratedd\\fR(8), \\fBkmigratedctl\\fR(8), "
            "\\fBkmigratedd.yaml\\fR(5), \\fBmove_pages\\fR(2)"]
    return "\n".join(out) + "\n"


_KEY = re.compile(r"^(\s*)([a-z_]+):(?:\s+(.*))?$")


def config_page() -> str:
    """kmigratedd.yaml(5): the embedded default, each key under its dotted name with the
    comment above it and its default value."""
    text = resources.files("kmigratedd").joinpath("default.yaml").read_text()
    out = _head("kmigratedd.yaml", 5, "kmigratedd configuration file")
    intro: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines) and lines[i].startswith("#"):
        intro.append(lines[i].lstrip("#").strip())
        i += 1
    out += [".SH DESCRIPTION", esc("\n".join(intro)).replace("\n\n", "\n.PP\n"),
            ".SH KEYS"]
    path: list[tuple[int, str]] = []
    comment: list[str] = []
    for line in lines[i:]:
        stripped = line.strip()
        if stripped.startswith("#"):
            comment.append(stripped.lstrip("#").strip())
            continue
        m = _KEY.match(line)
        if not m:
            comment = []
            continue
        indent, key, value = len(m.group(1)), m.group(2), m.group(3)
        while path and path[-1][0] >= indent:
            path.pop()
        path.append((indent, key))
        dotted = ".".join(k for _, k in path)
        if value is None:  # a section
            if comment:
                out += [".SS " + esc(dotted), esc(" ".join(comment))]
            else:
                out += [".SS " + esc(dotted)]
        else:
            body = " ".join(comment) if comment else ""
            out += [".TP", f"\\fB{esc(dotted)}\\fR (default: {esc(value)})", esc(body)]
        comment = []
    out += [".SH FILES", "/etc/kmigratedd/kmigratedd.yaml (the systemd unit's)",
            ".SH SEE ALSO", "\\fBkmigratedd\\fR(8), \\fBkmigratedctl\\fR(8)"]
    return "\n".join(out) + "\n"


def page(name: str) -> str:
    """The roff of ``name`` (one of :data:`PAGES`)."""
    if name == "kmigratedd.yaml.5":
        return config_page()
    if name == "kmigratedd.8":
        from .cli import _parser

        return from_parser(_parser(), "kmigratedd", "promote hot pages to the fast memory tier",
                           "kmigratedd finds hot pages on slow (CXL or other CPU-less) NUMA "
                           "nodes and promotes them to the fast tier asynchronously and in "
                           "batches with move_pages(2). With no --config it runs the embedded "
                           "default (see kmigratedd.yaml(5)). Exit status: 0 on a clean stop, "
                           "2 for a bad config or a start-up error (named in one line on "
                           "stderr), 1 otherwise.")
    if name == "kmigratedctl.8":
        from .ctl import parser

        return from_parser(parser(), "kmigratedctl", "control a running kmigratedd",
                           "kmigratedctl talks to kmigratedd over its control socket "
                           "(JSON-RPC 2.0, one request per line).")
    raise ValueError(f"no manual page {name!r} (pages: {', '.join(PAGES)})")
