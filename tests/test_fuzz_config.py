"""Property-based fuzzing of the config loader: any text gives a Config or a one-line
ConfigError, within a time budget; never another exception, never a hang.

Examples per test: 200, or ``KMIGRATEDD_FUZZ_EXAMPLES``; each one has
``KMIGRATEDD_FUZZ_BUDGET_S`` seconds (default 5).  ``pytest -s`` prints the count and the
run time of each test.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import tempfile
import time
import typing
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kmigratedd import config
from kmigratedd.errors import ConfigError

EXAMPLES = int(os.environ.get("KMIGRATEDD_FUZZ_EXAMPLES", "200"))
BUDGET_S = float(os.environ.get("KMIGRATEDD_FUZZ_BUDGET_S", "5"))
SOURCE = "fuzz.yaml"
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much,
                                       HealthCheck.function_scoped_fixture])  # the counter


class Hang(Exception):
    pass


def _alarm(signum: int, frame: object) -> None:
    raise Hang(f"over the {BUDGET_S:g}s budget")


@pytest.fixture(autouse=True)
def count_and_time(request: pytest.FixtureRequest) -> Iterator[list[int]]:
    """Per test: a SIGALRM budget for each example, and the example count and run time."""
    counter = [0, 0]  # examples, of which valid configs
    old = signal.signal(signal.SIGALRM, _alarm)
    t0 = time.monotonic()
    yield counter
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, old)
    print(f"\n{request.node.name}: {counter[0]} examples ({counter[1]} valid configs) in "
          f"{time.monotonic() - t0:.1f}s")


def check(text: str, counter: list[int] | None = None) -> config.Config | None:
    """The property: a Config or a one-line ConfigError naming the source, in budget."""
    if counter is not None:
        counter[0] += 1
    signal.setitimer(signal.ITIMER_REAL, BUDGET_S)
    t0 = time.monotonic()
    try:
        cfg = config.parse(text, SOURCE)
    except ConfigError as exc:
        line = str(exc)
        assert line.startswith(f"{SOURCE}: "), line
        assert "\n" not in line and "\r" not in line, line
        assert len(line) <= 400, line
        return None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        assert time.monotonic() - t0 < BUDGET_S
    assert isinstance(cfg, config.Config)
    if counter is not None:
        counter[1] += 1
    # A valid config prints as YAML that loads back to itself (--check-config's output), and
    # survives the control socket's JSON (kmigratedctl config).
    assert config.parse(config.dump(cfg), "dump") == cfg
    assert config.from_json(json.loads(json.dumps(cfg.to_dict())), "json") == cfg
    assert math.isfinite(cfg.workers.rate_limit_mb_per_s)
    return cfg


# --- the real schema ------------------------------------------------------------------


def schema_paths(cls: type = config.Config, prefix: tuple[str, ...] = ()
                 ) -> Iterator[tuple[str, ...]]:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            yield from schema_paths(tp, prefix + (f.name,))
        else:
            yield prefix + (f.name,)


PATHS = list(schema_paths())
NAMES = sorted({p for path in PATHS for p in path})

UNITS = ["ms", "s", "us", "m", "h", "ns", "B", "KiB", "MiB", "GiB", "TiB", "MB", "GB",
         "MB/s", "GiB/s", "parsecs", ""]

scalars = st.one_of(
    st.integers(min_value=-(1 << 70), max_value=1 << 70),
    st.integers(min_value=-10**1000, max_value=10**1000),  # yaml dumps ints up to 4300 digits
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.text(max_size=12),
    st.builds(lambda n, u: f"{n}{u}", st.integers(0, 10**420) | st.floats(0, 1e300),
              st.sampled_from(UNITS)),
    st.sampled_from(["auto", "pebs", "idle", "damon", "debug", "info", "", "/run/k.sock",
                     "0.0.0.0", "::", "127.0.0.1", "/system.slice", "(", "^a$", "\0", "\ud800"]),
)


def _repeat(child: object, n: int) -> list[object]:
    return [child] * n  # the same object n times: safe_dump writes an anchor and aliases


values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.sampled_from(NAMES) | st.text(max_size=6) | st.integers(0, 3),
                        children, max_size=4),
        st.builds(_repeat, children, st.integers(2, 12)),
    ),
    max_leaves=12,
)


def _set(doc: dict[str, object], path: tuple[str, ...], value: object) -> None:
    for part in path[:-1]:
        nxt = doc.get(part)
        if not isinstance(nxt, dict):
            nxt = doc[part] = {}
        doc = nxt
    doc[path[-1]] = value


@st.composite
def documents(draw: st.DrawFn) -> object:
    doc: dict[str, object] = {}
    for path in draw(st.lists(st.sampled_from(PATHS), max_size=8)):
        _set(doc, path, draw(values))
    if draw(st.booleans()):
        doc[draw(st.sampled_from(NAMES) | st.text(max_size=6))] = draw(values)
    return doc if draw(st.integers(0, 9)) else draw(values)


near_values = st.one_of(
    st.integers(0, 70_000), st.sampled_from([0, 1, 2, 4, 16, 64, 1 << 20, 1 << 50, 4096]),
    st.floats(0, 1e6), st.sampled_from(["100ms", "2s", "1.5m", "1GiB", "512MiB", "1GB/s",
                                         "auto", "debug", "idle", "damon", "/run/k.sock", ""]),
    st.lists(st.integers(0, 3), max_size=3), st.booleans(), scalars)


@st.composite
def near_valid(draw: st.DrawFn) -> dict[str, object]:
    """The default config with a few keys changed: mostly valid, near the bounds."""
    doc = config.Config().to_dict()
    for path in draw(st.lists(st.sampled_from(PATHS), min_size=1, max_size=3)):
        _set(doc, path, draw(near_values))
    return doc


TOKENS = ["[", "]", "{", "}", ":", ": ", ",", "- ", "? ", "&a ", "*a", "&b ", "*b", "!!int ",
          "!!python/object:os.system ", "<<: ", "'", '"', "#", "\n", "\n  ", "\t", "%YAML 1.1\n",
          "---\n", "...\n", ".inf", "-.inf", ".nan", "9" * 400, "9" * 5000, " TiB", "ms",
          "2024-13-45", "0x", "0o7", "1:2:3", "~", "null", "yes", "\\ud800", "\\0", "\x07",
          "\ufeff", "[" * 70, "]" * 70, "log_level", "workers", "max_wait_ms", "topology",
          "tiers", "promotion_targets", "scope", "pids", "control", "group", "metrics",
          "listen_address", "rate_limit_mb_per_s", "copy_threads", "auto", "0", "1", "-1"]

yamlish = st.lists(st.sampled_from(TOKENS) | st.text(max_size=3), max_size=60).map("".join)


@st.composite
def mutated(draw: st.DrawFn) -> str:
    """A structured document, dumped, with tokens spliced in."""
    text = yaml.safe_dump(draw(documents()), default_flow_style=draw(st.booleans()))
    for _ in range(draw(st.integers(0, 4))):
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.sampled_from(TOKENS)) + text[at:]
    return text


@FUZZ
@given(text=st.text(max_size=300))
def test_any_text(count_and_time, text):
    check(text, count_and_time)


@FUZZ
@given(text=yamlish)
def test_yaml_ish_text(count_and_time, text):
    check(text, count_and_time)


@FUZZ
@given(doc=documents())
def test_structured_documents(count_and_time, doc):
    check(yaml.safe_dump(doc), count_and_time)


@FUZZ
@given(doc=near_valid())
def test_near_valid_documents(count_and_time, doc):
    check(yaml.safe_dump(doc), count_and_time)


@FUZZ
@given(text=mutated())
def test_mutated_documents(count_and_time, text):
    check(text, count_and_time)


@FUZZ
@given(data=st.binary(max_size=200) | yamlish.map(str.encode))
def test_any_bytes_from_a_file(count_and_time, data):
    count_and_time[0] += 1
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.yaml"
        path.write_bytes(data)
        signal.setitimer(signal.ITIMER_REAL, BUDGET_S)
        try:
            config.load(str(path))
            count_and_time[1] += 1
        except ConfigError as exc:
            assert str(exc).startswith(f"{path}: ") and "\n" not in str(exc), str(exc)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)


def test_alias_bombs_and_depth_are_bounded(count_and_time):
    """The worst inputs the strategies only approach: each stops at a bound, fast."""
    bomb = "a: &l0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(
        f"a{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]\n" for i in range(1, 12))
    for text in (bomb, "[" * 100_000, "a: " + "[" * 65 + "]" * 65, "- " * 1000 + "1",
                 "{a: " * 1000 + "}" * 1000, "x: " + "9" * 100_000,
                 "log_level: " + "a" * config.MAX_BYTES + "b"):
        check(text, count_and_time)
