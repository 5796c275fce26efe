"""The ``meshd`` command line: run, status, watch, start, keygen, cluster, completion.

Exit codes: 0 success or orderly stop; 1 runtime failure (a port stayed busy; ``status``/``watch``/``start``: no
meshd admin websocket answered in time; ``start``: the daemon refused the epoch; ``status --ready``/``--all``: not
ready); 2 usage or configuration error (the message names the flag or key); 75 fenced by a newer epoch. Output cut
short by its reader (``meshd status | head -1``) ends the process by SIGPIPE, quietly.

Start-up is part of the contract (a restarted daemon must rejoin fast): this module imports only what parsing the
command line needs, and each command imports its own machinery. ``status``, ``watch`` and ``start`` live in
``meshd.admin.commands`` and load the admin client, never the daemon or the admin server; ``--version`` and
``completion`` load neither.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from meshd.admin import DEFAULT_TIMEOUT
from meshd.admin.commands import DEFAULT_ADMIN, cmd_start, cmd_status, cmd_watch
from meshd.core.names import EPOCH_MODES, LOG_FORMATS, LOG_LEVELS, ON_FENCE, U64_MAX, split_address
from meshd.errors import AdminUnreachable, ConfigError, ExitCode

if TYPE_CHECKING:
    from meshd.config import Config
    from meshd.core.address import Address
    from meshd.daemon import Settings

# What a shell reports for a process killed by SIGPIPE; the exit code itself should that signal be blocked.
SIGPIPE_EXIT = 128 + signal.SIGPIPE
EXEC_HELP = (
    "run CMD as this daemon's worker once the mesh is ready, with the data sockets (MESHD_FDS); must come last "
    "(overrides worker.exec)"
)
# The signals that stop a daemon in order (exit 0).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


# A HOST:PORT from the command line, checked but not yet an Address (attrs would load before the mesh port listens).
HostPort = tuple[str, int]


def _address(text: str) -> HostPort:
    try:
        return split_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _as_address(given: HostPort | None) -> Address | None:
    from meshd.core.address import Address

    return None if given is None else Address(*given)


def _epoch(text: str) -> int | str:
    """An argparse type: a non-negative integer epoch, or the name of an epoch mode (``auto``, ``await``)."""
    if text in EPOCH_MODES:
        return text
    if not text.isdigit() or int(text) > U64_MAX:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, 'auto' or 'await', got {text!r}")
    return int(text)


def seconds(text: str) -> float:
    """An argparse type: a positive number of seconds."""
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from exc
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text!r}")
    return value


def count(text: str) -> int:
    """An argparse type: a positive integer."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def _controller_epoch(text: str) -> int:
    """An argparse type: the integer epoch of a controller's ``start`` op."""
    if not text.isdigit() or int(text) > U64_MAX:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer below 2**64, got {text!r}")
    return int(text)


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port in 1..65535, got {text!r}")
    return int(text)


def _address_list(text: str) -> list[HostPort]:
    """An argparse type: ``HOST:PORT,HOST:PORT,...`` (one admin address per slot, in slot order)."""
    return [_address(part.strip()) for part in text.split(",") if part.strip()]


def version() -> str:
    """The installed distribution's version (this checkout's ``meshd.__version__`` when it is not installed)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("meshd")
    except PackageNotFoundError:
        from meshd import __version__

        return __version__


class _Version(argparse.Action):
    """``--version``: prints ``meshd <version>`` and exits 0; the version is looked up only when asked for."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings, dest=dest, default=argparse.SUPPRESS, nargs=0, help=help)

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        print(f"meshd {version()}", flush=True)
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meshd", description="Form and keep an epoch-fenced full TCP mesh.")
    parser.add_argument("--version", action=_Version, help="print meshd's version and exit")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run one daemon (one per cluster process)")
    run.add_argument("--config", required=True, type=Path, help="TOML configuration file")
    run.add_argument("--index", type=int, help="this process's slot in cluster.peers (overrides `index`)")
    run.add_argument(
        "--epoch",
        type=_epoch,
        help="an integer epoch from a controller, 'auto' (the cluster mints its own generations) or 'await' "
        "(wait for the controller's start op on the admin websocket); overrides `epoch`",
    )
    run.add_argument("--admin", type=_address, help="admin websocket HOST:PORT (overrides admin.listen)")
    run.add_argument("--log-format", choices=LOG_FORMATS, help="overrides log.format")
    run.add_argument("--log-level", choices=LOG_LEVELS, type=str.upper, help="overrides log.level")
    run.add_argument(
        "--secret-file", type=Path, metavar="PATH", help="the cluster's key file (overrides cluster.secret_file)"
    )
    run.add_argument(
        "--insecure",
        action="store_true",
        help="allow peers beyond loopback without a secret (cluster.insecure): anyone who reaches them can fence",
    )
    run.add_argument(
        "--listen", type=_address, metavar="HOST:PORT", help="where the mesh port binds (overrides cluster.listen)"
    )
    run.add_argument(
        "--on-fence",
        choices=ON_FENCE,
        help="exit: exit 75 and let the orchestrator restart us; restart: start a new daemon in this process, with the "
        "newer epoch (overrides daemon.on_fence)",
    )
    run.add_argument("--exec", nargs=argparse.REMAINDER, metavar="-- CMD", help=EXEC_HELP)

    give_up = f"exit 1 when the daemon does not answer within SECONDS (default {DEFAULT_TIMEOUT:g})"
    talk: dict[str, argparse.ArgumentParser] = {}
    for name, text, timeout_help, json_help in (
        ("status", "show a daemon's mesh status (--all: every slot's)", give_up, "print JSON instead of a table"),
        (
            "watch",
            "print a daemon's events as they happen",
            f"{give_up}; a silence of SECONDS sends a ping",
            "print JSON instead of a table",
        ),
        (
            "start",
            "give an --epoch await daemon its epoch (the controller's start op)",
            give_up,
            "print the daemon's answer as JSON",
        ),
    ):
        sub = talk[name] = commands.add_parser(name, help=text)
        sub.add_argument(
            "--admin",
            type=_address,
            help=f"the daemon's admin websocket (default: admin.listen of --config, or {DEFAULT_ADMIN})",
        )
        sub.add_argument("--config", type=Path, help="the daemon's TOML file: its admin.listen and admin.token_file")
        sub.add_argument(
            "--token-file", type=Path, metavar="PATH", help="the admin token to present (overrides admin.token_file)"
        )
        sub.add_argument("--json", action="store_true", help=json_help)
        sub.add_argument("--timeout", type=seconds, default=DEFAULT_TIMEOUT, metavar="SECONDS", help=timeout_help)
    _status_flags(talk["status"])
    talk["start"].add_argument(
        "--epoch",
        type=_controller_epoch,
        required=True,
        metavar="E",
        help="the epoch to start (an integer): the first start forms the mesh, the same epoch again changes nothing, "
        "a newer one fences the daemon (exit 75); an older one is refused (exit 1)",
    )

    keygen = commands.add_parser("keygen", help="write a new cluster key file (mode 0600), or print a key")
    keygen.add_argument("path", nargs="?", type=Path, metavar="PATH", help="the file to write (default: print the key)")
    keygen.add_argument("--output", "-o", type=Path, metavar="PATH", help="the file to write (the same as PATH)")
    keygen.add_argument("--force", action="store_true", help="replace an existing file")

    cluster = commands.add_parser("cluster", help="run a local cluster with a controller that restarts crashed daemons")
    cluster.add_argument("--size", type=count, required=True, help="number of daemons")
    cluster.add_argument("--exec", nargs=argparse.REMAINDER, metavar="-- CMD", help="every daemon's worker (last)")
    cluster.add_argument("--base-port", type=int, default=7000, help="mesh ports are P..P+N-1 (default 7000)")
    cluster.add_argument("--admin-base-port", type=int, default=7100, help="admin ports (default 7100)")
    cluster.add_argument("--chaos", type=seconds, metavar="SECONDS", help="kill -9 a random daemon every SECONDS")
    cluster.add_argument("--duration", type=seconds, metavar="SECONDS", help="stop after SECONDS (default: Ctrl-C)")
    cluster.add_argument("--seed", type=int, help="seed of the chaos victim choice")
    cluster.add_argument("--auto", action="store_true", help="run the daemons with --epoch auto (no controller epochs)")
    cluster.add_argument(
        "--log-dir",
        type=Path,
        metavar="DIR",
        help="write the daemons' logs into DIR, kept after the cluster ends (default: a fresh temporary directory, "
        "also kept; its path is printed)",
    )

    completion = commands.add_parser("completion", help="print a shell completion script (bash or zsh)")
    completion.add_argument(
        "shell",
        choices=("bash", "zsh"),
        help="bash: `source <(meshd completion bash)`; zsh (after compinit): `source <(meshd completion zsh)`, "
        "or save it as _meshd in a directory of $fpath",
    )
    return parser


def _status_flags(status: argparse.ArgumentParser) -> None:
    """``meshd status``'s own flags: the readiness probe and the cluster-wide table."""
    status.add_argument(
        "--ready",
        action="store_true",
        help="a probe: exit 0 when the daemon is ready (and its worker, once one started, runs), 1 otherwise "
        "(not ready, unreachable, or no answer within --timeout); prints the reason in one line",
    )
    status.add_argument(
        "--quiet", "-q", action="store_true", help="with --ready or --all: print nothing, only exit 0 or 1"
    )
    status.add_argument(
        "--all",
        action="store_true",
        help="ask every slot of the cluster at once and print one table; exit 0 when every slot is ready in one "
        "epoch, 1 otherwise. Slot K's admin websocket is the host of cluster.peers[K] (of --config) at port A+K, "
        "A being --admin-base-port, or else the port of admin.listen (the `meshd cluster` numbering)",
    )
    status.add_argument(
        "--admin-base-port",
        type=_port,
        metavar="A",
        help="with --all: slot K's admin port is A+K (as `meshd cluster --admin-base-port A` numbers them)",
    )
    status.add_argument(
        "--admins",
        type=_address_list,
        metavar="HOST:PORT,...",
        help="with --all: every slot's admin websocket, in slot order (any other layout); --config is then optional",
    )


def _command(words: list[str]) -> list[str]:
    """The worker's command after ``--exec`` (a leading ``--`` only separates it)."""
    command = words[1:] if words[:1] == ["--"] else words
    if not command:
        raise ConfigError("--exec", "needs a command: --exec -- CMD [ARG...]")
    return command


def _index(args: argparse.Namespace, config: Config) -> int | None:
    return config.index if args.index is None else args.index


def _settings(args: argparse.Namespace, config: Config) -> Settings:
    """The daemon's settings: the command line over the config file (configuration errors name the flag)."""
    from attrs import evolve

    from meshd.config import check_exposure
    from meshd.core.generation import EpochMode
    from meshd.core.wire import Epoch
    from meshd.daemon import Settings
    from meshd.secret import SecretFile, read_token

    if args.log_format:
        config.log.format = args.log_format
    if args.log_level:
        config.log.level = args.log_level
    if args.exec is not None:
        config.worker.exec = _command(args.exec)
        config.worker.socket = None
    index = _index(args, config)
    epoch = config.epoch if args.epoch is None else args.epoch
    if index is None:
        raise ConfigError("--index", "required (or set `index` in the config file)")
    if not 0 <= index < config.size:
        raise ConfigError("--index", f"must be in 0..{config.size - 1}, got {index}")
    if epoch is None:
        raise ConfigError("--epoch", "required (or set `epoch` in the config file)")
    admin = _as_address(args.admin) or config.admin.listen
    if args.on_fence is not None:
        config.daemon.on_fence = args.on_fence
    if args.listen is not None:
        config.cluster.listen = _as_address(args.listen)
    secret_path = config.cluster.secret_file if args.secret_file is None else str(args.secret_file)
    insecure = config.cluster.insecure or args.insecure
    check_exposure(config, admin, secret_path, insecure)
    cluster = evolve(config.cluster, secret_file=secret_path, insecure=insecure)
    config = evolve(config, index=index, epoch=epoch, cluster=cluster)
    secret = None
    if secret_path is not None:
        secret = SecretFile(
            Path(secret_path), "--secret-file" if args.secret_file is not None else "cluster.secret_file"
        )
    token = None if config.admin.token_file is None else read_token(Path(config.admin.token_file))
    if isinstance(epoch, str):
        return Settings(config, index, None, admin, mode=EpochMode(epoch), secret=secret, admin_token=token)
    return Settings(config, index, Epoch(epoch), admin, secret=secret, admin_token=token)


def cmd_run(args: argparse.Namespace) -> int:
    """Run a daemon. Its mesh and admin ports listen before trio and the protocol load (``meshd.listen``); from
    then on a SIGTERM or SIGINT is noted and stops the daemon in order once it runs."""
    from meshd.listen import early_addresses, open_listening_sockets

    early_signals: list[int] = []
    previous = {signum: signal.signal(signum, _noting(early_signals)) for signum in STOP_SIGNALS}
    listening: dict[HostPort, list[socket.socket]] = {}
    try:
        for host, port in early_addresses(args.config, args.index, args.listen, args.admin):
            with contextlib.suppress(OSError):  # busy: the daemon retries it for timeouts.bind, and says why
                listening[host, port] = open_listening_sockets(host, port)
        from meshd import config as configuration

        try:
            config = configuration.load(args.config)
        except ConfigError:
            _close_all(listening)
            raise
        return _run_daemon(args, config, listening, early_signals)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _noting(signals: list[int]) -> Callable[[int, Any], None]:
    def note(signum: int, _frame: Any) -> None:
        signals.append(signum)

    return note


def _close_all(listening: dict[HostPort, list[socket.socket]]) -> None:
    for sockets in listening.values():
        for sock in sockets:
            sock.close()


def _run_daemon(
    args: argparse.Namespace, config: Config, listening: dict[HostPort, list[socket.socket]], early: list[int]
) -> int:
    import trio
    from loguru import logger

    from meshd.core.address import Address
    from meshd.daemon import serve
    from meshd.logs import configure
    from meshd.net import TcpNetwork
    from meshd.restart import next_settings

    try:
        settings = _settings(args, config)
    except ConfigError:
        _close_all(listening)
        raise
    configure(settings.config.log.level, settings.config.log.format)
    network = TcpNetwork({Address(*where): sockets for where, sockets in listening.items()})
    while True:
        ending = trio.run(serve, settings, network, early)
        again = None
        if ending.code == ExitCode.FENCED and settings.config.daemon.on_fence == "restart":
            again = next_settings(settings, ending.fenced_by)
        if again is None:
            return ending.code
        logger.bind(index=settings.index, epoch=str(ending.fenced_by or settings.mode)).warning(
            "fenced: restarting in place (--on-fence restart, restart {}){}",
            again.restarts,
            "" if again.epoch is None else f" at epoch {again.epoch}",
        )
        settings, network = again, TcpNetwork()


def cmd_cluster(args: argparse.Namespace) -> int:
    import trio

    from meshd.cluster.local import ClusterSpec, run_cluster
    from meshd.logs import configure

    configure("WARNING", "text")
    spec = ClusterSpec(
        size=args.size,
        base_port=args.base_port,
        admin_base_port=args.admin_base_port,
        chaos=args.chaos,
        duration=args.duration,
        seed=args.seed,
        auto=args.auto,
        log_dir=args.log_dir,
        exec=() if args.exec is None else tuple(_command(args.exec)),
    )
    return trio.run(run_cluster, spec)


def cmd_keygen(args: argparse.Namespace) -> int:
    """Write a new key file (mode 0600, never over an existing file without --force), or print a key."""
    from meshd.secret import new_key_line, write_key_file

    if args.path is not None and args.output is not None and args.path != args.output:
        raise ConfigError("--output", "give the file once: as PATH or as --output")
    path = args.output or args.path
    if path is None:
        sys.stdout.write(new_key_line())
        return ExitCode.OK
    try:
        write_key_file(path, force=args.force)
    except FileExistsError:
        raise ConfigError("PATH", f"{path} exists; --force replaces it (its old keys are lost)") from None
    except OSError as exc:
        raise ConfigError("PATH", f"cannot write {path}: {exc.strerror or exc}") from exc
    print(f"wrote a new key to {path} (mode 0600); copy it to every process of the cluster", file=sys.stderr)
    return ExitCode.OK


def cmd_completion(args: argparse.Namespace) -> int:
    """Print the completion script of ``args.shell``, made from this very parser (it cannot drift from it)."""
    from meshd.completion import script

    sys.stdout.write(script(args.shell, build_parser(), hints={_epoch: EPOCH_MODES}))
    return ExitCode.OK


COMMANDS = {
    "run": cmd_run,
    "status": cmd_status,
    "watch": cmd_watch,
    "start": cmd_start,
    "cluster": cmd_cluster,
    "keygen": cmd_keygen,
    "completion": cmd_completion,
}


def _end_by_sigpipe() -> int:
    """The reader of stdout went away (``meshd status | head -1``): end quietly, as Unix tools do, killed by
    SIGPIPE (the shell reports 141). stdout points at /dev/null first, so that the interpreter's last flush cannot
    fail again should the signal be blocked: then SIGPIPE_EXIT is the exit code."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGPIPE)
    return SIGPIPE_EXIT


def _split_exec(argv: list[str]) -> tuple[list[str], list[str] | None]:
    """The arguments before ``--exec``, and the worker's command after it (argparse would take ``--`` itself)."""
    if "--exec" not in argv:
        return argv, None
    at = argv.index("--exec")
    return argv[:at], argv[at + 1 :]


def entry() -> NoReturn:
    """The ``meshd`` command: ``main``, then an exit that skips the interpreter's teardown once stdout and stderr
    are flushed. By then a daemon has closed what it owns (links, worker, sockets, logs go to stderr); tearing down
    its few hundred modules costs about 40 ms of CPU, which every survivor of a fence would pay just as the cluster
    restarts on the same cores."""
    code = main()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    before, command = _split_exec(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(before)
    if hasattr(args, "exec"):
        args.exec = command
    try:
        return COMMANDS[args.command](args)
    except ConfigError as exc:
        print(f"meshd: configuration error: {exc}", file=sys.stderr)
        return ExitCode.USAGE
    except AdminUnreachable as exc:
        print(f"meshd: {exc}", file=sys.stderr)
        return ExitCode.FAILURE
    except BrokenPipeError:
        return _end_by_sigpipe()
    except KeyboardInterrupt:
        return ExitCode.OK


if __name__ == "__main__":
    entry()
