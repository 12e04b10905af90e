"""``kmigratedd`` command line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import yaml

from . import __version__, logsetup
from . import config as config_mod
from .errors import ConfigError, KmigratedError, StartupError, startup_error
from .kernelfs import KernelFs
from .procfs import has_capability

EXIT_CONFIG = 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="kmigratedd",
        description="Promote hot pages from slow NUMA nodes to the fast tier, "
                    "asynchronously and in batches.")
    p.add_argument("-c", "--config", metavar="FILE",
                   help="YAML config (default: the embedded default, deploy/kmigratedd.yaml)")
    p.add_argument("--check-config", metavar="FILE", nargs="?", const="",
                   help="validate FILE (or the embedded default), print the effective config, "
                        "and exit: 0 if valid, 2 if not")
    p.add_argument("--probe", action="store_true",
                   help="print what this kernel and machine offer (tiers, samplers, demotion "
                        "methods, the sysctls it would set, what auto picks) and exit; "
                        "changes nothing")
    p.add_argument("--json", action="store_true",
                   help="with --probe or --check-config: print JSON")
    p.add_argument("--man", metavar="PAGE", choices=("kmigratedd.8", "kmigratedctl.8",
                                                      "kmigratedd.yaml.5"),
                   help="print a manual page in roff (kmigratedd.8, kmigratedctl.8, "
                        "kmigratedd.yaml.5) and exit, e.g. kmigratedd --man kmigratedd.8 | "
                        "man -l -")
    p.add_argument("--completion", metavar="SHELL", choices=("bash", "zsh"),
                   help="print a completion script for kmigratedd and kmigratedctl (bash, zsh) "
                        "and exit, e.g. kmigratedd --completion bash > "
                        "/etc/bash_completion.d/kmigratedd")
    p.add_argument("--dry-run", action="store_true", default=None,
                   help="do everything but move pages (overrides workers.dry_run)")
    p.add_argument("--root", metavar="DIR", default="/", help=argparse.SUPPRESS)
    p.add_argument("--debug", action="store_true", help="debug logging and tracebacks")
    p.add_argument("--version", action="version", version=f"kmigratedd {__version__}")
    return p


CAP_SYS_ADMIN = 21


def check_privileges() -> None:
    """Root, or CAP_SYS_ADMIN (sysctls, PFNs in pagemap, system-wide perf events): else
    one line and exit 2 before anything happens."""
    if os.geteuid() == 0 or has_capability(KernelFs(Path("/")), CAP_SYS_ADMIN):
        return
    raise StartupError(f"kmigratedd needs root, or CAP_SYS_ADMIN and CAP_SYS_PTRACE (see "
                       f"deploy/kmigratedd.service); running as uid {os.geteuid()} without "
                       "them: start it with sudo, or as the systemd unit")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    fs = KernelFs(Path(args.root))
    try:
        # --check-config and start accept the same configs: the file and what it names on
        # this machine (config_mod.load_checked), checked before any side effect.
        if args.check_config is not None:
            cfg, _ = config_mod.load_checked(args.check_config or args.config, fs)
            text = config_mod.dump(cfg)
            if args.json:
                text = json.dumps(yaml.safe_load(text), indent=2) + "\n"
            sys.stdout.write(text)
            return 0
        if args.completion:
            from .completion import script

            sys.stdout.write(script(args.completion))
            return 0
        if args.man:
            from .manpages import page

            sys.stdout.write(page(args.man))
            return 0
        if args.probe:
            from . import probe

            cfg, topo = config_mod.load_checked(args.config, fs)
            sys.stdout.write(probe.run(cfg, fs, topo, args.json))
            return 0
        cfg, _ = config_mod.load_checked(args.config, fs)
        check_privileges()
        from .daemon import run

        logsetup.setup(cfg.log_level, debug=args.debug)
        return run(cfg, args.config, fs, dry_run=args.dry_run)
    except (KmigratedError, MemoryError, OSError) as exc:
        code, message = failure(exc)
        if args.debug and not isinstance(exc, (ConfigError, StartupError, MemoryError)):
            logging.getLogger("kmigratedd").exception("fatal")
        print(message, file=sys.stderr)
        return code
    except KeyboardInterrupt:
        return 130


def failure(exc: BaseException) -> tuple[int, str]:
    """The exit status and the one line a failure ends the daemon with: 2 for the
    config and the set-up (what the operator must fix first), 1 for the rest."""
    if isinstance(exc, (ConfigError, StartupError)):
        return EXIT_CONFIG, f"kmigratedd: {exc}"
    if isinstance(exc, MemoryError):
        return EXIT_CONFIG, ("kmigratedd: out of memory: raise the memory limit (MemoryMax=, "
                             "ulimit -v)")
    if isinstance(exc, OSError):
        err = startup_error(exc)
        return (EXIT_CONFIG if isinstance(err, StartupError) else 1), f"kmigratedd: {err}"
    return 1, f"kmigratedd: {exc}"


if __name__ == "__main__":
    sys.exit(main())
