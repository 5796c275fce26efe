"""Shell completion scripts for ``meshd`` (``meshd completion bash|zsh``), made from the argparse parser itself.

The commands, their flags, which flags take a value and what completes it (a file, a directory, a fixed set of
words, a command line after ``--exec``, or nothing to propose) are read from ``meshd.cli.build_parser()`` each time
a script is printed, so a script never lags behind the command line that printed it.
"""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

# What completes a value: nothing (free text), a file, a directory, one of ``words``, or a command line.
FREE, FILE, DIR, WORDS, COMMAND_LINE = "free", "file", "dir", "words", "command line"


class Argument(NamedTuple):
    """A flag (``names``) or a positional argument (no names), and what completes its value."""

    names: tuple[str, ...]
    takes_value: bool
    kind: str
    words: tuple[str, ...]
    help: str
    metavar: str
    optional: bool = False  # a positional that may be left out


class Command(NamedTuple):
    name: str
    help: str
    flags: tuple[Argument, ...]
    positionals: tuple[Argument, ...]


def _argument(action: argparse.Action, hints: Mapping[Callable[..., Any], Iterable[str]]) -> Argument:
    takes_value = action.nargs != 0
    words: tuple[str, ...] = ()
    if not takes_value:
        kind = FREE
    elif action.nargs == argparse.REMAINDER:
        kind = COMMAND_LINE
    elif action.choices is not None:
        kind, words = WORDS, tuple(str(choice) for choice in action.choices)
    elif action.type is not None and action.type in hints:
        kind, words = WORDS, tuple(hints[action.type])
    elif action.type is Path:
        kind = DIR if action.metavar == "DIR" else FILE
    else:
        kind = FREE
    metavar = action.metavar if isinstance(action.metavar, str) else action.dest.upper()
    help_text = "" if action.help in (None, argparse.SUPPRESS) else str(action.help)
    optional = not action.option_strings and action.nargs in ("?", "*")
    return Argument(tuple(action.option_strings), takes_value, kind, words, help_text, metavar, optional)


def describe(
    parser: argparse.ArgumentParser, hints: Mapping[Callable[..., Any], Iterable[str]] | None = None
) -> tuple[tuple[Argument, ...], tuple[Command, ...]]:
    """The top-level flags and every command of ``parser``; ``hints`` maps an argparse ``type`` to the words that
    complete a value of that type (an epoch: ``auto``, ``await``)."""
    hints = hints or {}
    top = tuple(_argument(action, hints) for action in parser._actions if action.option_strings)
    commands: list[Command] = []
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
        for name, sub in action.choices.items():
            arguments = [_argument(each, hints) for each in sub._actions]
            flags = tuple(argument for argument in arguments if argument.names)
            positionals = tuple(argument for argument in arguments if not argument.names)
            commands.append(Command(name, helps.get(name, ""), flags, positionals))
    return top, tuple(commands)


def script(
    shell: str, parser: argparse.ArgumentParser, hints: Mapping[Callable[..., Any], Iterable[str]] | None = None
) -> str:
    """The completion script of ``shell`` ("bash" or "zsh") for ``parser``."""
    top, commands = describe(parser, hints)
    if shell == "bash":
        return bash_script(top, commands)
    if shell == "zsh":
        return zsh_script(top, commands)
    raise ValueError(f"no completion for shell {shell!r}")


# ----- bash


BASH_HEAD = """\
# bash completion for meshd, printed by `meshd completion bash` (made from meshd's own argument parser).
# Needs bash 4 or newer. Use it with `source <(meshd completion bash)` in ~/.bashrc, or save it as
# ~/.local/share/bash-completion/completions/meshd.

_meshd_files() {
    compopt -o filenames 2>/dev/null
    mapfile -t COMPREPLY < <(compgen -f -- "$cur")
}

_meshd_dirs() {
    compopt -o filenames 2>/dev/null
    mapfile -t COMPREPLY < <(compgen -d -- "$cur")
}

_meshd_words() {
    mapfile -t COMPREPLY < <(compgen -W "$1" -- "$cur")
}

# The command line after --exec (at word $1): a command, then its arguments (files).
_meshd_command_line() {
    local first=$1
    [[ ${COMP_WORDS[first]} == -- && $first -lt $COMP_CWORD ]] && first=$((first + 1))
    if ((COMP_CWORD == first)); then
        mapfile -t COMPREPLY < <(compgen -c -- "$cur")
    else
        _meshd_files
    fi
}

_meshd() {
    local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD - 1]}
    local command="" at=0 i
    COMPREPLY=()
    # --flag=VALUE: bash splits it at the "=" (COMP_WORDBREAKS), so the flag is the word before it.
    [[ $prev == = && COMP_CWORD -gt 1 ]] && prev=${COMP_WORDS[COMP_CWORD - 2]}
    for ((i = 1; i < COMP_CWORD; i++)); do
        case ${COMP_WORDS[i]} in
            -*) ;;
            *) command=${COMP_WORDS[i]}; at=$i; break ;;
        esac
    done
"""

BASH_TAIL = """\
}

complete -F _meshd meshd
"""


def _bash_value(argument: Argument) -> str:
    """The bash that completes a value of ``argument``, ending the function."""
    if argument.kind == FILE:
        return "_meshd_files; return 0"
    if argument.kind == DIR:
        return "_meshd_dirs; return 0"
    if argument.kind == WORDS:
        return f"_meshd_words {shlex.quote(' '.join(argument.words))}; return 0"
    return "return 0"  # free text: nothing to propose


def _bash_command(command: Command) -> list[str]:
    lines = [f"        {command.name})"]
    if any(flag.kind == COMMAND_LINE for flag in command.flags):
        rest = "|".join(name for flag in command.flags if flag.kind == COMMAND_LINE for name in flag.names)
        lines += [
            "            for ((i = at + 1; i < COMP_CWORD; i++)); do",
            f"                case ${{COMP_WORDS[i]}} in {rest}) _meshd_command_line $((i + 1)); return 0 ;; esac",
            "            done",
        ]
    valued = [flag for flag in command.flags if flag.takes_value and flag.kind != COMMAND_LINE]
    if valued:
        lines.append("            case $prev in")
        for flag in valued:
            lines.append(f"                {'|'.join(flag.names)}) {_bash_value(flag)} ;;")
        lines.append("            esac")
    if command.positionals:
        lines.append(f"            [[ $cur != -* ]] && {{ {_bash_value(command.positionals[0])}; }}")
    names = " ".join(name for flag in command.flags for name in flag.names)
    lines += [f"            _meshd_words {shlex.quote(names)}", "            ;;"]
    return lines


def bash_script(top: Iterable[Argument], commands: Iterable[Command]) -> str:
    commands = list(commands)
    first = [command.name for command in commands] + [name for flag in top for name in flag.names]
    body = [
        "    if [[ -z $command ]]; then",
        f"        _meshd_words {shlex.quote(' '.join(first))}",
        "        return 0",
        "    fi",
        "    case $command in",
    ]
    for command in commands:
        body += _bash_command(command)
    body.append("    esac")
    return BASH_HEAD + "\n".join(body) + "\n" + BASH_TAIL


# ----- zsh


ZSH_HEAD = """\
#compdef meshd
# zsh completion for meshd, printed by `meshd completion zsh` (made from meshd's own argument parser).
# Use it with `source <(meshd completion zsh)` in ~/.zshrc after compinit, or save it as _meshd in a directory
# of $fpath.

_meshd() {
    local curcontext=$curcontext state state_descr line ret=1
    typeset -A opt_args
"""

ZSH_TAIL = """\
    return ret
}

if [[ ${funcstack[1]} == _meshd ]]; then
    _meshd "$@"
else
    compdef _meshd meshd
fi
"""


def _zsh_quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def _zsh_text(text: str, limit: int = 72) -> str:
    """A help text as an ``_arguments`` description: its first clause, with the characters the spec reserves
    escaped."""
    text = " ".join(text.split()).split("; ")[0]
    if len(text) > limit:
        text = text[: limit - 3].rsplit(" ", 1)[0].rstrip(" ,(:") + "..."
    return "".join("\\" + char if char in "[]:\\" else char for char in text)


def _zsh_action(argument: Argument) -> str:
    if argument.kind == FILE:
        return "_files"
    if argument.kind == DIR:
        return "_files -/"
    if argument.kind == WORDS:
        return "(" + " ".join(argument.words) + ")"
    return " "  # free text: the message alone


def _zsh_flag(flag: Argument) -> list[str]:
    """The ``_arguments`` specs of a flag, one per name."""
    description = f"[{_zsh_text(flag.help)}]" if flag.help else ""
    message = _zsh_text(flag.metavar)
    if not flag.takes_value:
        value = ""
    elif flag.kind == COMMAND_LINE:
        value = ":*::command:_normal"
    else:
        value = f":{message}:{_zsh_action(flag)}"
    return [_zsh_quote(f"{name}{description}{value}") for name in flag.names]


def _zsh_positional(position: int, argument: Argument) -> str:
    colons = "::" if argument.optional else ":"
    return _zsh_quote(f"{position}{colons}{_zsh_text(argument.metavar)}:{_zsh_action(argument)}")


def zsh_script(top: Iterable[Argument], commands: Iterable[Command]) -> str:
    top_specs = [spec for flag in top for spec in _zsh_flag(flag)]
    lines = ["    _arguments -C \\"]
    lines += [f"        {spec} \\" for spec in top_specs]
    lines += ["        '1:command:->command' \\", "        '*::argument:->argument' && ret=0", "    case $state in"]
    lines += ["        command)", "            local -a commands=("]
    lines += [f"                {_zsh_quote(command.name + ':' + _zsh_text(command.help))}" for command in commands]
    lines += ["            )", "            _describe -t commands 'meshd command' commands && ret=0", "            ;;"]
    lines += [
        "        argument)",
        '            curcontext="${curcontext%:*:*}:meshd-$words[1]:"',
        "            case $words[1] in",
    ]
    for command in commands:
        specs = [spec for flag in command.flags for spec in _zsh_flag(flag)]
        specs += [_zsh_positional(position, each) for position, each in enumerate(command.positionals, start=1)]
        lines.append(f"                {command.name})")
        lines.append("                    _arguments \\")
        lines += [f"                        {spec} \\" for spec in specs]
        lines[-1] = lines[-1].removesuffix(" \\") + " && ret=0"
        lines.append("                    ;;")
    lines += ["            esac", "            ;;", "    esac"]
    return ZSH_HEAD + "\n".join(lines) + "\n" + ZSH_TAIL
