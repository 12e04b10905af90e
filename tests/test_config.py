"""Config: a table of good and bad YAML files; each bad one has its exact error line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kmigratedd import config
from kmigratedd.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent

GOOD = [
    ("empty file", "", {}),
    ("only comments", "# nothing\n", {}),
    ("log level", "log_level: debug\n", {"log_level": "debug"}),
    ("tier override", "topology:\n  tiers: [[0], [1, 2]]\n",
     {"topology.tiers": ((0,), (1, 2))}),
    ("targets", "topology:\n  promotion_targets: {1: 0, 3: 2}\n",
     {"topology.promotion_targets": {1: 0, 3: 2}}),
    ("human duration", "topology:\n  refresh_interval_ms: 2s\n",
     {"topology.refresh_interval_ms": 2000}),
    ("human ms", "daemon:\n  shutdown_timeout_ms: 250ms\n", {"daemon.shutdown_timeout_ms": 250}),
    ("minutes", "topology:\n  refresh_interval_ms: 1.5m\n",
     {"topology.refresh_interval_ms": 90000}),
    ("zero drain", "daemon:\n  shutdown_timeout_ms: 0\n", {"daemon.shutdown_timeout_ms": 0}),
    ("float that is whole", "topology:\n  refresh_interval_ms: 1000.0\n",
     {"topology.refresh_interval_ms": 1000}),
    ("null section", "topology:\n", {"topology.refresh_interval_ms": 5000}),
    ("workers", "workers:\n  copy_threads: 2\n  min_free_bytes: 1GiB\n"
     "  resume_free_bytes: 1.5GiB\n  rate_limit_mb_per_s: 1GB/s\n",
     {"workers.copy_threads": 2, "workers.min_free_bytes": 1 << 30,
      "workers.resume_free_bytes": 3 << 29, "workers.rate_limit_mb_per_s": 1000.0}),
    ("sampler by name", "sampler:\n  name: hint-faults\n  interval_ms: 250ms\n",
     {"sampler.name": "hint-faults", "sampler.interval_ms": 250}),
    ("scope", "scope:\n  commands: ['^postgres$']\n  cgroups: [/system.slice/db.service]\n",
     {"scope.commands": ("^postgres$",), "scope.cgroups": ("/system.slice/db.service",)}),
]

BAD = [
    ("unknown top key", "log_levle: info\n",
     "log_levle: unknown key (known here: log_level, topology, sampler, scope, queues, workers, "
     "demotion, metrics, control, daemon)"),
    ("unknown nested key", "topology:\n  tier: []\n",
     "topology.tier: unknown key (known here: tiers, promotion_targets, refresh_interval_ms)"),
    ("bad choice", "log_level: loud\n",
     "log_level: must be one of debug, info, warning, error, got 'loud'"),
    ("wrong type", "topology:\n  refresh_interval_ms: [1]\n",
     "topology.refresh_interval_ms: expected a number in ms, got [1]"),
    ("bool for number", "daemon:\n  shutdown_timeout_ms: yes\n",
     "daemon.shutdown_timeout_ms: expected a number in ms, got True"),
    ("bad unit", "topology:\n  refresh_interval_ms: 5 parsecs\n",
     "topology.refresh_interval_ms: bad duration '5 parsecs': use a number with one of "
     "ns, us, µs, ms, s, m, h (e.g. '100ms')"),
    ("size for duration", "topology:\n  refresh_interval_ms: 10MiB\n",
     "topology.refresh_interval_ms: bad duration '10MiB': use a number with one of "
     "ns, us, µs, ms, s, m, h (e.g. '100ms')"),
    ("too small", "topology:\n  refresh_interval_ms: 10ms\n",
     "topology.refresh_interval_ms: must be >= 100 ms, got '10ms'"),
    ("too large", "daemon:\n  shutdown_timeout_ms: 1h\n",
     "daemon.shutdown_timeout_ms: must be <= 600000 ms, got '1h'"),
    ("negative", "daemon:\n  shutdown_timeout_ms: -1\n",
     "daemon.shutdown_timeout_ms: must be >= 0 ms, got -1"),
    ("fraction of ms", "daemon:\n  shutdown_timeout_ms: 1.5\n",
     "daemon.shutdown_timeout_ms: must be a whole number of ms, got 1.5"),
    ("section not a mapping", "topology: 5\n", "topology: expected a mapping, got an integer"),
    ("document not a mapping", "- a\n- b\n", "<document>: expected a mapping, got a list"),
    ("tiers not a list", "topology:\n  tiers: 0\n",
     "topology.tiers: expected a list, got an integer"),
    ("tier not a list", "topology:\n  tiers: [0, 1]\n",
     "topology.tiers[0]: expected a list, got an integer"),
    ("node id not int", "topology:\n  tiers: [[0], [a]]\n",
     "topology.tiers[1][0]: expected a number, got a string"),
    ("one tier", "topology:\n  tiers: [[0, 1]]\n",
     "topology.tiers: one tier gives nothing to promote; list at least two or leave it empty"),
    ("empty tier", "topology:\n  tiers: [[0], []]\n",
     "topology.tiers[1]: a tier needs at least one node"),
    ("node twice", "topology:\n  tiers: [[0], [1, 0]]\n",
     "topology.tiers[1]: node 0 is already in tier 0"),
    ("self target", "topology:\n  promotion_targets: {1: 1}\n",
     "topology.promotion_targets.1: a node cannot promote to itself"),
    ("target slower", "topology:\n  tiers: [[0], [1]]\n  promotion_targets: {0: 1}\n",
     "topology.promotion_targets.0: target node 1 is not in a faster tier than node 0"),
    ("duplicate key", "log_level: info\nlog_level: debug\n",
     "invalid YAML at line 2 column 1: duplicate key 'log_level' (line 2)"),
    ("syntax error", "topology: [\n",
     "invalid YAML at line 2 column 1: expected the node content, but found '<stream end>'"),
    ("bad sampler", "sampler:\n  name: pebs2\n",
     "sampler.name: must be one of auto, pebs, ibs, idle, damon, hint-faults, got 'pebs2'"),
    ("hot above history", "sampler:\n  idle:\n    history_rounds: 2\n    hot_rounds: 3\n",
     "sampler.idle.hot_rounds: must be <= history_rounds (2), got 3"),
    ("ring not power of two", "sampler:\n  hint_faults:\n    ring_pages: 48\n",
     "sampler.hint_faults.ring_pages: must be a power of two, got 48"),
    ("aggregate below sample", "sampler:\n  damon:\n    sample_interval_ms: 50\n"
     "    aggregate_interval_ms: 10\n",
     "sampler.damon.aggregate_interval_ms: must be >= sample_interval_ms (50)"),
    ("bad regex", "scope:\n  commands: ['(']\n",
     "scope.commands: bad pattern '(': missing ), unterminated subpattern at position 0"),
    ("relative cgroup", "scope:\n  cgroups: [system.slice]\n",
     "scope.cgroups: cgroup paths start with '/' (relative to the cgroup2 mount), "
     "got 'system.slice'"),
    ("queue too small", "queues:\n  capacity_per_cpu: 8\n",
     "queues.capacity_per_cpu: must be >= 16, got 8"),
    ("pid not int", "scope:\n  pids: [init]\n",
     "scope.pids[0]: expected a number, got a string"),
    ("copy threads word", "workers:\n  copy_threads: many\n",
     "workers.copy_threads: must be a whole number from 1 to 64 or auto, got 'many'"),
    ("copy threads zero", "workers:\n  copy_threads: 0\n",
     "workers.copy_threads: must be a whole number from 1 to 64 or auto, got 0"),
    ("resume below min", "workers:\n  min_free_bytes: 1GiB\n",
     "workers.resume_free_bytes: must be >= min_free_bytes (1073741824)"),
    ("bad size", "workers:\n  min_free_bytes: 1 gigabyte\n",
     "workers.min_free_bytes: bad size '1 gigabyte': use a number of bytes or a number with one "
     "of B, KiB, MiB, GiB, TiB, kB, KB, MB, GB, TB (e.g. '200MiB')"),
    ("bad rate", "workers:\n  rate_limit_mb_per_s: fast\n",
     "workers.rate_limit_mb_per_s: bad rate 'fast': use a number in MB/s or e.g. '200MB/s', "
     "'1GiB/s'"),
    ("relative socket", "control:\n  socket_path: k.sock\n",
     "control.socket_path: must be an absolute path, got 'k.sock'"),
    ("empty address", "metrics:\n  listen_address: ''\n",
     "metrics.listen_address: must not be empty"),
    ("group not a string", "control:\n  group: [wheel]\n",
     "control.group: expected a string, got a list"),
    ("damon threshold unreachable", "sampler:\n  damon:\n    hot_min_accesses: 50\n",
     "sampler.damon.hot_min_accesses: must be <= aggregate_interval_ms / sample_interval_ms "
     "(20), the most accesses DAMON counts per aggregation interval"),
    ("tab indentation", "topology:\n\ttiers: []\n",
     "invalid YAML at line 2 column 1: found character '\\t' that cannot start any token"),
    # PyYAML's scanner takes chr() of a \U escape: past 0x10FFFF a ValueError, past 2^31 an
    # OverflowError, neither of them a YAMLError.
    ("escape past unicode", 'log_level: "\\U00110000"\n',
     "invalid YAML: chr() arg not in range(0x110000)"),
    ("escape past C int", 'log_level: "\\U99999999"\n',
     "invalid YAML: Python int too large to convert to C int"),
]


def lookup(cfg: config.Config, dotted: str):
    value = cfg
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


@pytest.mark.parametrize("name,text,expect", GOOD, ids=[g[0] for g in GOOD])
def test_good(tmp_path, name, text, expect):
    path = tmp_path / "good.yaml"
    path.write_text(text)
    cfg = config.load(str(path))
    for key, value in expect.items():
        got = lookup(cfg, key)
        assert (dict(got) if key.endswith("targets") else got) == value
    # The effective config round-trips through --check-config's dump.
    assert config.parse(config.dump(cfg), "dump") == cfg


@pytest.mark.parametrize("name,text,line", BAD, ids=[b[0] for b in BAD])
def test_bad(tmp_path, name, text, line):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        config.load(str(path))
    assert str(info.value) == f"{path}: {line}"
    assert isinstance(info.value, ValueError)


def test_missing_and_binary_files(tmp_path):
    with pytest.raises(ConfigError) as info:
        config.load(str(tmp_path / "nope.yaml"))
    assert str(info.value) == f"{tmp_path / 'nope.yaml'}: cannot read: No such file or directory"
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        config.load(str(tmp_path / "bin.yaml"))


def test_frozen():
    cfg = config.load(None)
    with pytest.raises(AttributeError):
        cfg.log_level = "debug"  # type: ignore[misc]
    with pytest.raises(TypeError):
        cfg.topology.promotion_targets[1] = 0  # type: ignore[index]


def test_shipped_yaml_is_the_embedded_default():
    shipped = (REPO / "deploy" / "kmigratedd.yaml").read_text()
    assert shipped == config.default_text()
    assert config.load(str(REPO / "deploy" / "kmigratedd.yaml")) == config.load(None)


def test_embedded_default_equals_dataclass_defaults():
    """Every key of the shipped file is documented with the code's default value."""
    assert config.load(None) == config.Config()


def test_every_key_is_documented_in_the_shipped_yaml():
    import dataclasses

    text = config.default_text()

    def walk(cls, prefix=""):
        for f in dataclasses.fields(cls):
            tp = cls.__annotations__[f.name]
            yield f.name
            if isinstance(tp, str) and tp.endswith("Config"):
                yield from walk(getattr(config, tp), prefix + f.name + ".")

    for key in walk(config.Config):
        assert f"{key}:" in text, key


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(Path(sys.executable).with_name("kmigratedd")), *args],
                          capture_output=True, text=True, timeout=60)


def test_check_config_prints_effective_config():
    r = run_cli("--check-config", str(REPO / "deploy" / "kmigratedd.yaml"))
    assert r.returncode == 0, r.stderr
    assert "refresh_interval_ms: 5000" in r.stdout and "shutdown_timeout_ms: 5000" in r.stdout
    assert config.parse(r.stdout, "stdout") == config.Config()


def test_check_config_bad_file_prints_one_line_and_exits_2(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("topology:\n  refresh_interval_ms: soon\n")
    r = run_cli("--check-config", str(path))
    assert r.returncode == 2
    assert r.stdout == ""
    assert r.stderr.count("\n") == 1
    assert r.stderr.startswith(f"kmigratedd: {path}: topology.refresh_interval_ms: bad duration")


def test_daemon_refuses_bad_config_before_any_side_effect(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("unknown: 1\n")
    r = run_cli("--config", str(path))
    assert r.returncode == 2 and r.stderr.count("\n") == 1


def test_changed_keys_names_the_sections_a_reload_cannot_apply():
    old = config.Config()
    new = config.parse("metrics:\n  port: 9999\nqueues:\n  capacity_per_cpu: 1024\n"
                       "workers:\n  batch_pages: 64\n", "new.yaml")
    assert config.changed_keys(old, new) == ["queues.capacity_per_cpu", "metrics.port"]
    assert config.changed_keys(old, old) == []
