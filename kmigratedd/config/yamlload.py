"""Reading config text: a bounded file read, and a strict YAML loader (duplicate keys
rejected; nesting and alias expansion bounded while composing, before anything is
built)."""

from __future__ import annotations

import os
import stat
import typing
from typing import Any

import yaml

from ..errors import ConfigError, brief

MAX_BYTES = 1 << 20  # the shipped, fully commented file is about 10 KiB
MAX_DEPTH = 64  # nested nodes, aliases followed; the schema needs 4
MAX_NODES = 100_000  # nodes once aliases are expanded; the shipped file has about 80


class BadKey:
    """A list or mapping used as a mapping key (unhashable in Python): kept so that the
    decoder can name the key path of the mapping it is in."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __repr__(self) -> str:
        return brief(self.value)


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate mapping keys (PyYAML keeps the last silently),
    and bounds nesting and alias expansion while composing, before anything is built.

    Aliases share one node, so a few lines can stand for 10**9 nodes ("billion laughs");
    every node is counted as many times as aliases make it appear, and its height is
    remembered so an alias deepens the document by the height of what it names.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._nodes = 0  # nodes so far, aliases expanded
        self._heights: list[int] = [0]  # per open node: the height of its tallest child
        self._height: dict[int, int] = {}  # id(node) -> height, once composed
        self._size: dict[int, int] = {}  # id(node) -> nodes it expands to, once composed

    def _grow(self, nodes: int, height: int, mark: Any) -> None:
        self._nodes += nodes
        if self._nodes > MAX_NODES:
            raise yaml.composer.ComposerError(
                None, None, f"more than {MAX_NODES} nodes once aliases are expanded", mark)
        if len(self._heights) - 1 + height > MAX_DEPTH:
            raise yaml.composer.ComposerError(
                None, None, f"nested more than {MAX_DEPTH} deep", mark)
        self._heights[-1] = max(self._heights[-1], height)

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        mark = event.start_mark
        if isinstance(event, yaml.AliasEvent):
            node = typing.cast(yaml.Node, super().compose_node(parent, index))
            if id(node) not in self._size:  # the alias is inside its own anchor
                raise yaml.composer.ComposerError(None, None, "recursive alias "
                                                  f"{brief(event.anchor, 40)}", mark)
            self._grow(self._size[id(node)], self._height[id(node)], mark)
            return node
        before = self._nodes
        self._grow(1, 1, mark)
        self._heights.append(0)
        node = typing.cast(yaml.Node, super().compose_node(parent, index))
        height = 1 + self._heights.pop()
        self._height[id(node)] = height
        self._size[id(node)] = self._nodes - before
        self._heights[-1] = max(self._heights[-1], height)
        return node

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        # Scalars can still fail to build, with whatever PyYAML's code for them hits: int()
        # of more than 4300 digits, a date such as 2024-13-45, "!!int" with no digits
        # (IndexError).
        try:
            return super().construct_object(node, deep)
        except yaml.YAMLError:
            raise
        except Exception as exc:
            what = brief(node.value, 40) if isinstance(node, yaml.ScalarNode) else node.tag
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read {what}: {exc}", node.start_mark) from None


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    out: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            key = BadKey(key)
        if key in out:
            mark = key_node.start_mark
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {brief(key, 40)} (line {mark.line + 1})", mark)
        out[key] = loader.construct_object(value_node, deep=True)
    return out


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def one_line(text: str, limit: int = 120) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def load_yaml(text: str, source: str) -> Any:
    if len(text) > MAX_BYTES:
        raise ConfigError(source, "", f"larger than {MAX_BYTES >> 20} MiB")
    try:
        return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1} column {mark.column + 1}" if mark else "?"
        raise ConfigError(source, "", f"invalid YAML at {where}: "
                                      f"{one_line(exc.problem or '')}") from None
    # ReaderError: a character YAML does not allow; ValueError, OverflowError: the scanner's
    # chr() of a "\U" escape past the code points.
    except (yaml.YAMLError, ValueError, OverflowError) as exc:
        raise ConfigError(source, "", f"invalid YAML: {one_line(str(exc))}") from None


_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR,
          "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def _is_our_stdin(st: os.stat_result) -> bool:
    """``--check-config /dev/stdin`` with a pipe: the caller feeds it, reading may wait."""
    try:
        st0 = os.fstat(0)
    except OSError:
        return False
    return stat.S_ISFIFO(st.st_mode) and (st.st_dev, st.st_ino) == (st0.st_dev, st0.st_ino)


def read_file(path: str) -> bytes:
    """At most MAX_BYTES + 1 bytes of a regular file, never blocking on anything else."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode) and not _is_our_stdin(st):
            raise ConfigError(path, "", f"not a regular file ({_kind(st.st_mode)})")
        # O_NONBLOCK: the path may have been replaced by a FIFO since the stat; fstat says.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(path, "", f"cannot read: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            if not _is_our_stdin(st):
                raise ConfigError(path, "", f"not a regular file ({_kind(st.st_mode)})")
            os.set_blocking(fd, True)
        chunks: list[bytes] = []
        size = 0
        while size <= MAX_BYTES and (chunk := os.read(fd, MAX_BYTES + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise ConfigError(path, "", f"cannot read: {exc.strerror}") from None
    finally:
        os.close(fd)
    return b"".join(chunks)
