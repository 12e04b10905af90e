"""cffi builder (out-of-line, API mode) of kmigratedd's native shim, ``kmigratedd._native``.

setuptools runs it at install time through cffi's integration (``cffi_modules`` in setup.py,
cffi in pyproject.toml's ``build-system.requires``): cffi generates the wrapper C source into the
build directory and compiles it with ``native/km*.c``.  Nothing generated is committed.

The wrapper declares only the functions in ``EXPORTED``, the ones ``kmigratedd/shim/`` calls;
the other functions of ``native/km*.c`` are internal to the extension, and the shared object is
compiled with hidden visibility, so it exports nothing but its module init function.
``tests/test_artifact.py`` checks ``EXPORTED`` against the calls in the package.
"""

from __future__ import annotations

import pathlib
import re

import cffi

HERE = pathlib.Path(__file__).resolve().parent
MODULE = "kmigratedd._native"
# setuptools builds with the project root as the working directory; source paths stay relative
# so that the sdist builds wherever it is unpacked.
SOURCES = ["native/kmshim.c", "native/kmqueue.c", "native/kmperf.c", "native/kmidle.c",
           "native/kmcand.c"]
HEADERS = ["kmshim.h", "kmqueue.h", "kmperf.h", "kmidle.h", "kmcand.h"]
CFLAGS = ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-fvisibility=hidden"]

# Every C function Python calls through ``shim.lib``.
EXPORTED = frozenset({
    "km_move_pages", "km_move_pages_batched", "km_fill_i32", "km_status_tally",
    "km_queue_new", "km_queue_free", "km_queue_len", "km_queue_get_stats", "km_queue_push",
    "km_queue_drain",
    "km_perf_supported_sample_type", "km_perf_open", "km_perf_drain",
    "km_samples_filter", "km_samples_by_node",
    "km_pread_words", "km_pagemap_pfns", "km_idle_mark", "km_idle_test", "km_idle_track",
    "km_idle_test_batch", "km_idle_age", "km_idle_cold", "km_idle_pick",
    "km_cand_prepare", "km_cand_targets", "km_select_u64", "km_runs_i32", "km_keys_for",
    "km_sort_unique_u64", "km_remove_sorted_u64", "km_split_keys",
})

_FUNCTION = re.compile(r"\b(km_\w+)\s*\(")


def declarations(text: str) -> list[str]:
    """The top-level declarations of a header: comments and preprocessor lines dropped, split at
    each ``;`` outside braces (so a struct definition stays whole)."""
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#"))
    out: list[str] = []
    depth, start = 0, 0
    for i, ch in enumerate(text):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif ch == ";" and depth == 0:
            decl = text[start:i + 1].strip()
            if decl:
                out.append(decl)
            start = i + 1
    return out


def function_name(decl: str) -> str | None:
    """The name of the function a declaration declares, or None for a type."""
    if decl.startswith(("struct", "typedef")) and "(" not in decl:
        return None
    m = _FUNCTION.search(decl)
    return m.group(1) if m else None


def cdef() -> str:
    """Types, and the prototypes of the exported functions only."""
    kept: list[str] = []
    declared: set[str] = set()
    for name in HEADERS:
        for decl in declarations((HERE / name).read_text()):
            fn = function_name(decl)
            if fn is None or fn in EXPORTED:
                kept.append(decl)
            if fn is not None:
                declared.add(fn)
    missing = EXPORTED - declared
    if missing:
        raise ValueError(f"EXPORTED names functions no header declares: {sorted(missing)}")
    return "\n".join(kept)


def make_builder() -> cffi.FFI:
    builder = cffi.FFI()
    builder.cdef(cdef())
    builder.set_source(
        MODULE,
        "".join(f'#include "{h}"\n' for h in HEADERS),
        sources=SOURCES,
        include_dirs=["native"],
        extra_compile_args=CFLAGS,
    )
    return builder


ffibuilder = make_builder()
