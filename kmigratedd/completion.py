"""Shell completion for ``kmigratedd`` and ``kmigratedctl``, generated from their argparse
parsers (``kmigratedd --completion bash|zsh``): the options, kmigratedctl's commands and
their options, file names after options that take a file."""

from __future__ import annotations

import argparse

from .manpages import PAGES

FILE_OPTIONS = ("-c", "--config", "--check-config", "-s", "--socket")


def _words(parser: argparse.ArgumentParser) -> tuple[list[str], dict[str, list[str]]]:
    opts: list[str] = []
    subs: dict[str, list[str]] = {}
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            for name, sub in a.choices.items():
                subs[name] = [o for s in sub._actions if s.help != argparse.SUPPRESS
                              for o in s.option_strings]
        elif a.help != argparse.SUPPRESS:
            opts += a.option_strings
    return opts, subs


def bash() -> str:
    from .cli import _parser
    from .ctl import parser

    d_opts, _ = _words(_parser())
    c_opts, c_subs = _words(parser())
    files = "|".join(FILE_OPTIONS)
    cases = "\n".join(f'        {name}) words="{" ".join(o)}" ;;' for name, o in c_subs.items())
    return f'''# bash completion for kmigratedd and kmigratedctl (kmigratedd --completion bash)
_kmigratedd() {{
    local cur=${{COMP_WORDS[COMP_CWORD]}} prev=${{COMP_WORDS[COMP_CWORD-1]}}
    case $prev in {files}) COMPREPLY=($(compgen -f -- "$cur")); return ;;
        --man) COMPREPLY=($(compgen -W "{' '.join(PAGES)}" -- "$cur")); return ;;
        --completion) COMPREPLY=($(compgen -W "bash zsh" -- "$cur")); return ;;
    esac
    COMPREPLY=($(compgen -W "{" ".join(d_opts)}" -- "$cur"))
}}
_kmigratedctl() {{
    local cur=${{COMP_WORDS[COMP_CWORD]}} prev=${{COMP_WORDS[COMP_CWORD-1]}} cmd= w words
    case $prev in {files}) COMPREPLY=($(compgen -f -- "$cur")); return ;; esac
    for w in "${{COMP_WORDS[@]:1:COMP_CWORD-1}}"; do
        case $w in {"|".join(c_subs)}) cmd=$w ;; esac
    done
    case $cmd in
        "") words="{" ".join(c_opts)} {" ".join(c_subs)}" ;;
{cases}
    esac
    COMPREPLY=($(compgen -W "$words" -- "$cur"))
}}
complete -F _kmigratedd kmigratedd
complete -F _kmigratedctl kmigratedctl
'''


def zsh() -> str:
    return ("# zsh completion for kmigratedd and kmigratedctl (kmigratedd --completion zsh)\n"
            "autoload -U +X bashcompinit && bashcompinit\n" + bash())


def script(shell: str) -> str:
    return bash() if shell == "bash" else zsh()
