"""``kmigratedctl``: talk to a running kmigratedd over its control socket.

    kmigratedctl status [--json]     per node: tier, free memory, promotion rate,
                                     queue depth, errors by reason; sampler; state
    kmigratedctl status --watch [S]  the same, refreshed every S seconds (default 2)
    kmigratedctl top [--cgroups]     processes by memory on the slow tier: hot pages
                                     waiting, promoted and demoted per second
    kmigratedctl pause | resume      stop / restart promotion (sampling goes on)
    kmigratedctl reload              re-read the config file (a bad one is refused)
    kmigratedctl config              the running config, as YAML (--json: JSON)
    kmigratedctl topology            nodes, tiers and targets this machine has (no daemon needed)

The socket speaks JSON-RPC 2.0, one request per line, so scripts can also use
``nc -U /run/kmigratedd/control.sock``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from . import __version__
from . import config as config_mod
from .control import socket_path_problem
from .errors import ConfigError, KmigratedError
from .kernelfs import KernelFs
from .topology import Topology, discover

DEFAULT_SOCKET = config_mod.ControlConfig().socket_path


class CtlError(KmigratedError, RuntimeError):
    """One line for the user; exit status 1."""


def call(path: str, method: str, timeout: float = 30.0) -> Any:
    """One JSON-RPC call; raises CtlError with a one-line reason."""
    problem = socket_path_problem(path)
    if problem:
        raise CtlError(f"--socket {problem}")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
    except FileNotFoundError:
        raise CtlError(f"kmigratedd is not running (no control socket at {path})") from None
    except ConnectionRefusedError:
        raise CtlError(f"kmigratedd is not running (nothing listens on {path})") from None
    except PermissionError:
        raise CtlError(f"permission denied on {path}: run as root or as a member of the "
                       "group set in control.group") from None
    except OSError as exc:
        raise CtlError(f"cannot connect to {path}: {exc.strerror or exc}") from None
    try:
        try:
            s.sendall((json.dumps({"jsonrpc": "2.0", "id": 1, "method": method}) + "\n")
                      .encode())
        except (BrokenPipeError, ConnectionResetError):
            pass  # the daemon refused us and closed; its reply says why
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    except TimeoutError:
        raise CtlError(f"kmigratedd did not answer {method} within {timeout:g}s") from None
    except OSError as exc:
        raise CtlError(f"{method}: {exc.strerror or exc}") from None
    finally:
        s.close()
    if not buf:
        raise CtlError(f"kmigratedd closed the connection without answering {method}")
    try:
        reply = json.loads(buf)
    except ValueError:
        raise CtlError(f"{method}: kmigratedd sent a reply that is not JSON") from None
    if not isinstance(reply, dict) or ("result" in reply) == ("error" in reply):
        raise CtlError(f"{method}: kmigratedd sent a malformed reply (a JSON-RPC reply has "
                       "either a result or an error)")
    if "error" in reply:
        err = reply["error"]
        if not isinstance(err, dict):
            raise CtlError(f"{method}: kmigratedd sent a malformed error")
        if err.get("code") == -32001:
            raise CtlError(f"{err.get('message')} on {path}: run as root or with the group "
                           "set in control.group (primary or supplementary)")
        raise CtlError(f"{method}: {err.get('message')}")
    result = reply["result"]
    if not isinstance(result, dict):
        raise CtlError(f"{method}: kmigratedd sent a malformed result (expected an object, got "
                       f"{type(result).__name__})")
    return result


def _mib(n: object) -> str:
    return f"{int(n) / (1 << 20):,.0f} MiB" if isinstance(n, int) else "-"


def format_status(st: dict[str, Any]) -> str:
    lines = [
        f"kmigratedd {st['version']} (pid {st['pid']}, up {st['uptime_s']:.0f}s): {st['state']}"
        f"{' [PAUSED]' if st['paused'] else ''}{' [DRY RUN]' if st['dry_run'] else ''}",
        f"sampler: {st['sampler'] or '-'}",
    ]
    if st.get("idle_reason"):
        lines.append(f"idle: {st['idle_reason']}")
    sw = st.get("sweep")
    if sw:
        lines.append(f"start-up sweep: {sw.get('sampler')}, "
                     f"{sw.get('candidates_offered', 0):,} candidates offered so far")
    dm = st.get("demotion") or {}
    if dm:
        line = f"demotion: {dm.get('method', '-')}"
        for nid, d in sorted((dm.get("nodes") or {}).items(), key=lambda kv: int(kv[0])):
            line += f"; node {nid} -> {d['to']}: "
            if "kdamond" in d:
                line += (f"kdamond {d['kdamond']}, quota {_mib(d['quota_bytes'])}/s, "
                         f"{_mib(d['demoted_bytes'])} demoted")
            else:
                line += f"{d['demoted_pages']:,} pages demoted by reclaim"
                if d.get("target_short"):
                    line += (f" (node {d['to']} short of free memory: promotion keeps "
                             "the headroom)")
        lines.append(line)
    pr = st.get("pressure")
    if pr:
        srcs = ", ".join(f"{name} {d['percent']:g}% ({d['watch']})"
                         + (" (not readable)" if d.get("missing") else "")
                         for name, d in (pr.get("sources") or {}).items())
        state = "HOLDING promotion and demotion" if pr["held"] else "not holding"
        lines.append(f"memory pressure: {srcs}; {state} (at {pr['hold_percent']:g}%, "
                     f"{pr['held_seconds']:g}s held so far)")
    q = st.get("queues")
    if q:
        lines.append(f"queues: {q['depth']} candidates waiting (capacity {q['capacity_per_cpu']} "
                     f"per CPU), {q['dropped']} dropped, {q['coalesced']} coalesced")
    if st.get("hot_threshold") is not None:
        lines.append(f"hot threshold: {st['hot_threshold']} folded samples per candidate")
    header = (f"{'node':>4} {'tier':>4} {'cpus':>4} {'free':>10} {'total':>10} {'role':<12} "
              f"{'pages/s':>9} {'MB/s':>8} {'promoted':>10} {'inbox':>7}  errors")
    lines += ["", header]
    for nid, n in sorted(st["nodes"].items(), key=lambda kv: int(kv[0])):
        w = n.get("worker")
        role = f"-> node {n['promotes_to']}" if n.get("promotes_to") is not None else (
            "fast (target)" if w else "")
        row = (f"{nid:>4} {n['tier'] if n['tier'] is not None else '-':>4} {n['cpus']:>4} "
               f"{_mib(n['mem_free_bytes']):>10} {_mib(n['mem_total_bytes']):>10} {role:<12}")
        if w:
            errors = ", ".join(f"{k} {v}" for k, v in w["errors"].items() if v) or "none"
            if w["headroom_blocked"]:
                errors += " (headroom: blocked)"
            row += (f" {w['promoted_pages_per_s']:>9,.0f} {w['promoted_mb_per_s']:>8.1f} "
                    f"{w['promoted_pages']:>10,} {w['inbox_pages']:>7}  {errors}")
            if w.get("promoted_pages"):
                cold = w.get("promoted_then_cold", 0)
                row += (f"\n{'':>4} precision guard: {cold:,} of the promoted pages seen cold "
                        f"since ({100 * cold / w['promoted_pages']:.1f}%), "
                        f"{w.get('demotion_regrets', 0):,} demoted pages wanted back, "
                        f"{w.get('pingpongs', 0):,} promoted pages bounced back within "
                        f"{w.get('pingpong_window_s', 0):g}s")
            if w.get("room_needed_bytes") or w.get("demoted_pages"):
                row += (f"\n{'':>4} exchange: room needed {_mib(w['room_needed_bytes'])}, "
                        f"{w['demoted_pages']:,} cold pages demoted, "
                        f"{w['demote_inbox_pages']:,} waiting; promoted pages kept "
                        f"{w.get('promoted_protect_s', 0):g}s")
        lines.append(row.rstrip())
    lines.append(f"(rates over the last {st['rate_interval_s']:g}s)")
    return "\n".join(lines)


def _topology_json(topo: Topology) -> dict[str, object]:
    return {
        "tier_source": topo.tier_source,
        "tiers": [{"rank": t.rank, "kernel_id": t.kernel_id, "nodes": list(t.nodes)}
                  for t in topo.tiers],
        "promotion_targets": {str(k): v for k, v in topo.targets.items()},
        "nodes": {str(n.id): {
            "cpus": sorted(n.cpus), "mem_total_bytes": n.mem_total_bytes,
            "mem_free_bytes": n.mem_free_bytes,
            "distances": {str(k): v for k, v in n.distances.items()},
            "hmat_read_latency_ns": n.hmat.read_latency_ns if n.hmat else None,
            "hmat_read_bandwidth_mb_per_s": n.hmat.read_bandwidth_mb_per_s if n.hmat else None,
        } for n in topo.nodes.values()},
        "memory_block_size_bytes": topo.block_size_bytes,
    }


def parser() -> argparse.ArgumentParser:
    """kmigratedctl's command line (also the source of its manual page)."""
    doc = __doc__.replace("``", "")  # reST literals, plain in --help
    p = argparse.ArgumentParser(prog="kmigratedctl", description=doc.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(doc.splitlines()[2:]))
    p.add_argument("--version", action="version", version=f"kmigratedctl {__version__}")
    p.add_argument("-s", "--socket", default=DEFAULT_SOCKET, help=f"default {DEFAULT_SOCKET}")
    p.add_argument("--json", action="store_true", help="print JSON")
    sub = p.add_subparsers(dest="command", required=True)
    for name, text in (("status", "state of the daemon, per node"), ("pause", "pause promotion"),
                       ("resume", "resume promotion"), ("reload", "re-read the config file"),
                       ("config", "the running config")):
        sp = sub.add_parser(name, help=text)
        sp.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print JSON")
        if name == "status":
            sp.add_argument("-w", "--watch", metavar="SECONDS", type=float, nargs="?",
                            const=2.0, help="refresh every SECONDS (default 2) until ^C")
            sp.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    tp = sub.add_parser("top", help="processes by memory on the slow tier: their hot pages "
                                    "waiting, pages promoted and demoted per second")
    tp.add_argument("-n", "--lines", type=int, default=20, help="processes shown (default 20)")
    tp.add_argument("-i", "--interval", type=float, default=1.0, metavar="SECONDS",
                    help="rates over this long (default 1)")
    tp.add_argument("--cgroups", action="store_true", help="sum the processes by cgroup")
    tp.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")
    t = sub.add_parser("topology", help="nodes, tiers and promotion targets (no daemon needed)")
    t.add_argument("-c", "--config", metavar="FILE", help="config with tier/target overrides")
    t.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")
    t.add_argument("--root", metavar="DIR", default="/", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.command == "topology":
            cfg = config_mod.load(args.config)
            topo = discover(KernelFs(Path(args.root)), tiers=cfg.topology.tiers,
                            promotion_targets=cfg.topology.promotion_targets)
            return emit((json.dumps(_topology_json(topo), indent=2) if args.json
                         else topo.describe()) + "\n")
        if getattr(args, "watch", None) is not None:
            return watch(args)
        if args.command == "top":
            if args.interval <= 0 or args.lines <= 0:
                print("kmigratedctl: top: --interval and --lines must be > 0", file=sys.stderr)
                return 2
            return emit(top(args))
        result = call(args.socket, args.command)
    except ConfigError as exc:
        print(f"kmigratedctl: {exc}", file=sys.stderr)
        return 2
    except KmigratedError as exc:
        print(f"kmigratedctl: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        return 1
    try:
        text = render(args, result)
    except ConfigError as exc:
        print(f"kmigratedctl: {exc}", file=sys.stderr)
        return 2
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        print(f"kmigratedctl: {args.command}: kmigratedd sent a malformed reply "
              f"({type(exc).__name__}: {str(exc)[:80]})", file=sys.stderr)
        return 1
    return emit(text)


def top(args: argparse.Namespace) -> str:
    """``top``: the per-process view, with rates over ``args.interval`` seconds."""
    first = call(args.socket, "processes")
    time.sleep(args.interval)
    now = call(args.socket, "processes")
    before = {p["pid"]: p for p in first["processes"]}
    rows = []
    for p in now["processes"][:args.lines]:
        b = before.get(p["pid"], {})
        rows.append({**p,
                     "promoted_per_s": (p["promoted_pages"] - b.get("promoted_pages", 0))
                     / args.interval,
                     "demoted_per_s": (p["demoted_pages"] - b.get("demoted_pages", 0))
                     / args.interval})
    if args.json:
        return json.dumps({"interval_s": args.interval, "processes": rows,
                           "cgroups": now["cgroups"]}, indent=2) + "\n"
    mib = now["page_size"] / (1 << 20)
    if now.get("idle_reason"):
        return f"idle: {now['idle_reason']}\n"
    if args.cgroups:
        out = [f"{'SLOW MiB':>9} {'WAITING':>8} {'PROMOTED':>9} {'DEMOTED':>8} {'PROCS':>5}  "
               "CGROUP"]
        for c in now["cgroups"][:args.lines]:
            out.append(f"{c['slow_pages'] * mib:9.1f} {c['waiting_pages']:8} "
                       f"{c['promoted_pages']:9} {c['demoted_pages']:8} {c['processes']:5}  "
                       f"{c['cgroup'] or '-'}")
        return "\n".join(out) + "\n"
    out = [f"processes by memory on the slow tier; rates over {args.interval:g} s",
           f"{'PID':>7} {'COMM':16} {'SLOW MiB':>9} {'FAST MiB':>9} {'WAITING':>8} "
           f"{'PROM/s':>8} {'DEM/s':>8}  CGROUP"]
    for r in rows:
        total = sum(r["pages_by_node"].values())
        out.append(f"{r['pid']:7} {r['comm'][:16]:16} {r['slow_pages'] * mib:9.1f} "
                   f"{(total - r['slow_pages']) * mib:9.1f} {r['waiting_pages']:8} "
                   f"{r['promoted_per_s']:8.0f} {r['demoted_per_s']:8.0f}  {r['cgroup'] or '-'}")
    return "\n".join(out) + "\n"


def watch(args: argparse.Namespace) -> int:
    """``status --watch``: the status again every ``args.watch`` seconds, the screen cleared
    first on a terminal, until ^C (or ``--count`` refreshes); a daemon that goes away ends
    it with its one-line error."""
    if args.watch <= 0:
        print("kmigratedctl: status --watch: SECONDS must be > 0", file=sys.stderr)
        return 2
    tty = sys.stdout.isatty()
    n = 0
    try:
        while True:
            text = render(args, call(args.socket, "status"))
            stamp = time.strftime("%H:%M:%S")
            head = "\033[H\033[2J" if tty else ("\n" if n else "")
            if emit(f"{head}every {args.watch:g}s, {stamp}\n{text}"):
                return 1
            n += 1
            if args.count and n >= args.count:
                return 0
            time.sleep(args.watch)
    except KeyboardInterrupt:
        return 0


def render(args: argparse.Namespace, result: dict[str, Any]) -> str:
    if args.json:
        return json.dumps(result, indent=2, sort_keys=True) + "\n"
    if args.command == "status":
        return format_status(result) + "\n"
    if args.command == "config":
        # JSON made the node ids keying topology.promotion_targets strings; from_json
        # turns them back, so the YAML printed loads as the running config.
        return config_mod.dump(config_mod.from_json(result, "running config"))
    return ", ".join(f"{k}: {v}" for k, v in result.items()) + "\n"


def emit(text: str) -> int:
    """Print ``text``; a reader that went away (``| head -1``) ends it quietly, exit 1."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        # Python would report the pipe again when it flushes stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
