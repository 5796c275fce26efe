"""The ``meshd`` command line: run, status, watch, cluster.

Exit codes: 0 success or orderly stop; 1 runtime failure (a port stayed busy; ``status``/``watch``: no meshd admin
websocket answered in time); 2 usage or configuration error (the message names the flag or key); 75 fenced by a
newer epoch. Output cut short by its reader (``meshd status | head -1``) ends the process by SIGPIPE, quietly.

Start-up is part of the contract (a restarted daemon must rejoin fast): this module imports only what parsing the
command line needs, and each command imports its own machinery. ``status`` and ``watch`` load the admin client,
never the daemon or the admin server.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import signal
import socket
import sys
from collections.abc import Callable
from contextlib import aclosing
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meshd.admin import DEFAULT_TIMEOUT
from meshd.config import DEFAULT_ADMIN_PORT, EPOCH_MODES, LOG_FORMATS, LOG_LEVELS
from meshd.core.address import Address
from meshd.core.generation import EpochMode
from meshd.core.wire import U64_MAX
from meshd.errors import AdminUnreachable, ConfigError, ExitCode

if TYPE_CHECKING:
    from meshd.admin.messages import WatchMessage
    from meshd.config import Config
    from meshd.core.status import MeshEvent, Status
    from meshd.daemon import Settings

DEFAULT_ADMIN = f"127.0.0.1:{DEFAULT_ADMIN_PORT}"
# What a shell reports for a process killed by SIGPIPE; the exit code itself should that signal be blocked.
SIGPIPE_EXIT = 128 + signal.SIGPIPE
EXEC_HELP = (
    "run CMD as this daemon's worker once the mesh is ready, with the data sockets (MESHD_FDS); must come last "
    "(overrides worker.exec)"
)
# The signals that stop a daemon in order (exit 0).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _address(text: str) -> Address:
    try:
        return Address.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _epoch(text: str) -> int | EpochMode:
    if text in EPOCH_MODES:
        return EpochMode(text)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meshd", description="Form and keep an epoch-fenced full TCP mesh.")
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
    run.add_argument("--exec", nargs=argparse.REMAINDER, metavar="-- CMD", help=EXEC_HELP)

    give_up = f"exit 1 when the daemon does not answer within SECONDS (default {DEFAULT_TIMEOUT:g})"
    for name, text, timeout_help in (
        ("status", "show a daemon's mesh status", give_up),
        ("watch", "print a daemon's events as they happen", f"{give_up}; a silence of SECONDS sends a ping"),
    ):
        sub = commands.add_parser(name, help=text)
        sub.add_argument(
            "--admin",
            type=_address,
            help=f"the daemon's admin websocket (default: admin.listen of --config, or {DEFAULT_ADMIN})",
        )
        sub.add_argument("--config", type=Path, help="the daemon's TOML file: its admin.listen and admin.token_file")
        sub.add_argument(
            "--token-file", type=Path, metavar="PATH", help="the admin token to present (overrides admin.token_file)"
        )
        sub.add_argument("--json", action="store_true", help="print JSON instead of a table")
        sub.add_argument("--timeout", type=seconds, default=DEFAULT_TIMEOUT, metavar="SECONDS", help=timeout_help)

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
    return parser


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
    admin = args.admin or config.admin.listen
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
    if isinstance(epoch, EpochMode):
        return Settings(config, index, None, admin, mode=epoch, secret=secret, admin_token=token)
    return Settings(config, index, Epoch(epoch), admin, secret=secret, admin_token=token)


def cmd_run(args: argparse.Namespace) -> int:
    """Run a daemon. Its mesh and admin ports listen before trio and the protocol load (``meshd.listen``); from
    then on a SIGTERM or SIGINT is noted and stops the daemon in order once it runs."""
    from meshd import config as configuration
    from meshd.listen import open_listening_sockets

    config = configuration.load(args.config)
    index = _index(args, config)
    early_signals: list[int] = []
    previous = {signum: signal.signal(signum, _noting(early_signals)) for signum in STOP_SIGNALS}
    try:
        listening = {}
        if index is not None and 0 <= index < config.size:
            for address in (config.cluster.peers[index], args.admin or config.admin.listen):
                with contextlib.suppress(OSError):  # busy: the daemon retries it for timeouts.bind, and says why
                    listening[address] = open_listening_sockets(address)
        return _run_daemon(args, config, listening, early_signals)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _noting(signals: list[int]) -> Callable[[int, Any], None]:
    def note(signum: int, _frame: Any) -> None:
        signals.append(signum)

    return note


def _run_daemon(
    args: argparse.Namespace, config: Config, listening: dict[Address, list[socket.socket]], early: list[int]
) -> int:
    import trio

    from meshd.daemon import serve
    from meshd.logs import configure
    from meshd.net import TcpNetwork

    try:
        settings = _settings(args, config)
    except ConfigError:
        for sockets in listening.values():
            for sock in sockets:
                sock.close()
        raise
    configure(settings.config.log.level, settings.config.log.format)
    return trio.run(serve, settings, TcpNetwork(listening), early)


def _clock(timestamp: float | None) -> str:
    from datetime import datetime

    return "-" if not timestamp else datetime.fromtimestamp(timestamp).strftime("%H:%M:%S")


def format_status(status: Status | dict[str, Any]) -> str:
    """A readable table of one daemon's status (typed, or the JSON object ``status --json`` prints)."""
    from meshd.core.status import Status

    if not isinstance(status, Status):
        status = Status.from_json(status)
    head = (
        f"meshd index {status.index} of {status.size} in cluster {status.cluster!r}: "
        f"{status.state} since {_clock(status.state_since)}, epoch {status.epoch}, "
        f"incarnation {status.incarnation:016x}"
    )
    rows = [("PEER", "ADDRESS", "STATE", "EPOCH", "SINCE", "CONNECTS", "FAILURES", "LAST ERROR")]
    for peer in status.peers:
        rows.append(
            (
                str(peer.index),
                str(peer.address),
                str(peer.state),
                "-" if peer.epoch is None else str(peer.epoch),
                _clock(peer.since),
                str(peer.connects),
                str(peer.failures),
                peer.last_error or "-",
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]) - 1)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1] for row in rows
    ]
    return "\n".join([head, *(line.rstrip() for line in lines), *_worker_line(status)])


def _worker_line(status: Status) -> list[str]:
    """The worker's line under the table, when a worker has started."""
    worker = status.worker
    if worker.state is None:
        return []
    who = "attached worker" if worker.pid is None else f"worker pid {worker.pid}"
    line = f"{who}: {worker.state} since {_clock(worker.started)}, generation {worker.epoch}"
    return [line if worker.exit is None else f"{line}, exit {worker.exit}"]


def format_event(event: MeshEvent) -> str:
    """One line per event: its time, its name, then its fields as ``key=value``."""
    from datetime import datetime

    stamp = datetime.fromtimestamp(event.time).strftime("%H:%M:%S.%f")[:-3]
    fields = event.to_json()
    details = " ".join(f"{key}={value}" for key, value in fields.items() if key not in ("event", "time"))
    return f"{stamp} {event.event_name:<14} {details}".rstrip()


def _admin_target(args: argparse.Namespace) -> tuple[Address, str | None]:
    """The admin websocket ``status``/``watch`` talk to and the token they present: the flags over ``--config``."""
    from meshd.secret import read_token

    admin, token_file = Address.parse(DEFAULT_ADMIN), None
    if args.config is not None:
        from meshd import config as configuration

        config = configuration.load(args.config)
        admin, token_file = config.admin.listen, config.admin.token_file
    if args.admin is not None:
        admin = args.admin
    if args.token_file is not None:
        return admin, read_token(args.token_file, "--token-file")
    return admin, None if token_file is None else read_token(Path(token_file))


def cmd_status(args: argparse.Namespace) -> int:
    import trio

    from meshd.admin import client

    admin, token = _admin_target(args)
    status = trio.run(functools.partial(client.status, admin, timeout=args.timeout, token=token))
    print(json.dumps(status.to_json()) if args.json else format_status(status), flush=True)
    return ExitCode.OK


def cmd_watch(args: argparse.Namespace) -> int:
    import trio

    from meshd.admin import client
    from meshd.admin.messages import Snapshot

    admin, token = _admin_target(args)

    def show(message: WatchMessage) -> None:
        if args.json:
            print(json.dumps(message.to_json()), flush=True)
        elif isinstance(message, Snapshot):
            print(format_status(message.status), flush=True)
        else:
            print(format_event(message), flush=True)

    async def follow() -> None:
        """Print events until the daemon goes away or SIGINT/SIGTERM arrives (both end the watch with 0)."""
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:

                async def stop_on_signal() -> None:
                    async for _ in signals:
                        nursery.cancel_scope.cancel()

                nursery.start_soon(stop_on_signal)
                watch = client.events(admin, timeout=args.timeout, liveness=args.timeout, token=token)
                async with aclosing(watch) as messages:
                    async for message in messages:
                        show(message)
                nursery.cancel_scope.cancel()

    try:
        trio.run(follow)
    except BaseExceptionGroup as group:
        raise client.lone_error(group) from None
    return ExitCode.OK


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


COMMANDS = {"run": cmd_run, "status": cmd_status, "watch": cmd_watch, "cluster": cmd_cluster, "keygen": cmd_keygen}


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
    sys.exit(main())
