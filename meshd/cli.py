"""The ``meshd`` command line: run, status, watch, cluster.

Exit codes: 0 success or orderly stop; 1 runtime failure (port busy, daemon unreachable);
2 usage or configuration error (the message names the flag or key); 75 fenced by a newer epoch.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from contextlib import aclosing
from datetime import datetime
from pathlib import Path
from typing import Any

import trio
from attrs import evolve
from loguru import logger

from meshd import config as configuration
from meshd.config import DEFAULT_ADMIN_PORT, EPOCH_MODES, LOG_FORMATS, LOG_LEVELS
from meshd.core.address import Address
from meshd.core.wire import U64_MAX, Epoch
from meshd.daemon import Settings
from meshd.errors import AdminUnreachable, BindError, ConfigError
from meshd.logs import configure

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
DEFAULT_ADMIN = f"127.0.0.1:{DEFAULT_ADMIN_PORT}"


def _address(text: str) -> Address:
    try:
        return Address.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _epoch(text: str) -> int | str:
    if text in EPOCH_MODES:
        return text
    if not text.isdigit() or int(text) > U64_MAX:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, 'auto' or 'await', got {text!r}")
    return int(text)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from exc
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text!r}")
    return value


def _count(text: str) -> int:
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

    for name, text in (("status", "show a daemon's mesh status"), ("watch", "print a daemon's events as they happen")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("--admin", type=_address, default=DEFAULT_ADMIN, help=f"default {DEFAULT_ADMIN}")
        sub.add_argument("--json", action="store_true", help="print JSON instead of a table")

    cluster = commands.add_parser("cluster", help="run a local cluster with a controller that restarts crashed daemons")
    cluster.add_argument("--size", type=_count, required=True, help="number of daemons")
    cluster.add_argument("--base-port", type=int, default=7000, help="mesh ports are P..P+N-1 (default 7000)")
    cluster.add_argument("--admin-base-port", type=int, default=7100, help="admin ports (default 7100)")
    cluster.add_argument("--chaos", type=_seconds, metavar="SECONDS", help="kill -9 a random daemon every SECONDS")
    cluster.add_argument("--duration", type=_seconds, metavar="SECONDS", help="stop after SECONDS (default: Ctrl-C)")
    cluster.add_argument("--seed", type=int, help="seed of the chaos victim choice")
    cluster.add_argument("--auto", action="store_true", help="run the daemons with --epoch auto (no controller epochs)")
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    config = configuration.load(args.config)
    if args.log_format:
        config.log.format = args.log_format
    if args.log_level:
        config.log.level = args.log_level
    index = config.index if args.index is None else args.index
    epoch = config.epoch if args.epoch is None else args.epoch
    if index is None:
        raise ConfigError("--index", "required (or set `index` in the config file)")
    if not 0 <= index < config.size:
        raise ConfigError("--index", f"must be in 0..{config.size - 1}, got {index}")
    if epoch is None:
        raise ConfigError("--epoch", "required (or set `epoch` in the config file)")
    admin = args.admin or config.admin.listen
    config = evolve(config, index=index, epoch=epoch)
    if isinstance(epoch, str):
        return Settings(config, index, None, admin, mode=epoch)
    return Settings(config, index, Epoch(epoch), admin)


def cmd_run(args: argparse.Namespace) -> int:
    from meshd.daemon import serve

    settings = _settings(args)
    configure(settings.config.log.level, settings.config.log.format)
    try:
        return trio.run(serve, settings)
    except BindError as exc:
        logger.bind(index=settings.index, epoch=str(settings.epoch or settings.mode)).error("{}", exc)
        return EXIT_FAILURE


def _clock(timestamp: float | None) -> str:
    return "-" if not timestamp else datetime.fromtimestamp(timestamp).strftime("%H:%M:%S")


def format_status(status: dict[str, Any]) -> str:
    """A readable table of one daemon's status."""
    head = (
        f"meshd index {status['index']} of {status['size']} in cluster {status['cluster']!r}: "
        f"{status['state']} since {_clock(status['state_since'])}, epoch {status['epoch']}, "
        f"incarnation {status['incarnation']}"
    )
    rows = [("PEER", "ADDRESS", "STATE", "EPOCH", "SINCE", "CONNECTS", "FAILURES", "LAST ERROR")]
    for peer in status["peers"]:
        rows.append(
            (
                str(peer["index"]),
                peer["address"],
                peer["state"],
                "-" if peer["epoch"] is None else str(peer["epoch"]),
                _clock(peer["since"]),
                str(peer["connects"]),
                str(peer["failures"]),
                peer["last_error"] or "-",
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]) - 1)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1] for row in rows
    ]
    return "\n".join([head, *(line.rstrip() for line in lines)])


def format_event(event: dict[str, Any]) -> str:
    stamp = datetime.fromtimestamp(event.get("time", 0)).strftime("%H:%M:%S.%f")[:-3]
    details = " ".join(f"{key}={value}" for key, value in event.items() if key not in ("event", "time", "status"))
    return f"{stamp} {event['event']:<14} {details}".rstrip()


def cmd_status(args: argparse.Namespace) -> int:
    from meshd import admin

    status = trio.run(admin.request, args.admin, {"op": "status"})
    print(json.dumps(status) if args.json else format_status(status))
    return EXIT_OK


def cmd_watch(args: argparse.Namespace) -> int:
    from meshd import admin

    async def show_events() -> None:
        async with aclosing(admin.watch(args.admin)) as events:
            async for event in events:
                if args.json:
                    print(json.dumps(event), flush=True)
                elif event["event"] == "snapshot":
                    print(format_status(event["status"]), flush=True)
                else:
                    print(format_event(event), flush=True)

    async def follow() -> None:
        """Print events until the daemon goes away or SIGINT/SIGTERM arrives (both end the watch with 0)."""
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:

                async def stop_on_signal() -> None:
                    async for _ in signals:
                        nursery.cancel_scope.cancel()

                nursery.start_soon(stop_on_signal)
                await show_events()
                nursery.cancel_scope.cancel()

    trio.run(follow)
    return EXIT_OK


def cmd_cluster(args: argparse.Namespace) -> int:
    from meshd.orchestrator import ClusterSpec, run_cluster

    configure("WARNING", "text")
    spec = ClusterSpec(
        size=args.size,
        base_port=args.base_port,
        admin_base_port=args.admin_base_port,
        chaos=args.chaos,
        duration=args.duration,
        seed=args.seed,
        auto=args.auto,
    )
    return trio.run(run_cluster, spec)


COMMANDS = {"run": cmd_run, "status": cmd_status, "watch": cmd_watch, "cluster": cmd_cluster}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except ConfigError as exc:
        print(f"meshd: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except AdminUnreachable as exc:
        print(f"meshd: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
