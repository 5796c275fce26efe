"""The operator's commands over the admin websocket: ``status`` (one daemon, ``--ready``, ``--all``: every slot of
a cluster), ``watch`` and ``start``, and the tables they print.

They load the admin client, never the daemon or the admin server; this module imports only the standard library at
its top, so that ``meshd run`` (whose parser names these commands) pays nothing for it.
"""

from __future__ import annotations

import argparse
import functools
import json
import signal
import sys
from contextlib import aclosing
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meshd.core.names import DEFAULT_ADMIN_PORT
from meshd.errors import AdminUnreachable, ConfigError, ExitCode

if TYPE_CHECKING:
    from meshd.admin.messages import WatchMessage
    from meshd.core.address import Address
    from meshd.core.status import MeshEvent, Status

DEFAULT_ADMIN = f"127.0.0.1:{DEFAULT_ADMIN_PORT}"


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
    """The admin websocket ``status``/``watch``/``start`` talk to and the token they present: the flags over
    ``--config``."""
    from meshd.core.address import Address

    admin, token_file = Address.parse(DEFAULT_ADMIN), None
    if args.config is not None:
        from meshd import config as configuration

        config = configuration.load(args.config)
        admin, token_file = config.admin.listen, config.admin.token_file
    if args.admin is not None:
        admin = Address(*args.admin)
    return admin, _token(args, token_file)


def _token(args: argparse.Namespace, token_file: str | None) -> str | None:
    """The admin token to present: ``--token-file``, else the config's ``admin.token_file``, else none."""
    from meshd.secret import read_token

    if args.token_file is not None:
        return read_token(args.token_file, "--token-file")
    return None if token_file is None else read_token(Path(token_file))


def cmd_status(args: argparse.Namespace) -> int:
    import trio

    from meshd.admin import client

    if args.all:
        return _status_all(args)
    for flag, given in (("--admins", args.admins is not None), ("--admin-base-port", args.admin_base_port is not None)):
        if given:
            raise ConfigError(flag, "only with --all")
    if args.quiet and not args.ready:
        raise ConfigError("--quiet", "only with --ready or --all")
    admin, token = _admin_target(args)
    if args.ready:
        return _probe(args, admin, token)
    status = trio.run(functools.partial(client.status, admin, timeout=args.timeout, token=token))
    print(json.dumps(status.to_json()) if args.json else format_status(status), flush=True)
    return ExitCode.OK


def _unready(status: Status) -> str | None:
    """Why a daemon is not ready (a probe's answer), or None: its state is ready and its worker, if one started,
    runs (a worker that is starting, stopping or exited is not serving)."""
    if status.state != "ready":
        return str(status.state)
    worker = status.worker.state
    if worker is not None and worker != "running":
        return f"ready, but its worker is {worker}"
    return None


def _down(status: Status) -> list[int]:
    """The peers this daemon has no link to."""
    return [peer.index for peer in status.peers if peer.state != "up"]


def _links(status: Status) -> str:
    return f"{len(status.peers) - len(_down(status))}/{len(status.peers)}"


def _say(args: argparse.Namespace, line: str) -> None:
    """A probe's one line: on stdout (stderr when stdout carries --json), none with --quiet."""
    if not args.quiet:
        print(line, file=sys.stderr if args.json else sys.stdout, flush=True)


def _probe(args: argparse.Namespace, admin: Address, token: str | None) -> int:
    """``status --ready``: 0 when the daemon is ready, 1 otherwise, including no answer within ``--timeout`` (the
    client bounds every step of the call, so a stopped daemon cannot hold the probe)."""
    import trio

    from meshd.admin import client

    try:
        status = trio.run(functools.partial(client.status, admin, timeout=args.timeout, token=token))
    except AdminUnreachable as exc:
        _say(args, f"not ready: {exc}")
        return ExitCode.FAILURE
    if args.json:
        print(json.dumps(status.to_json()), flush=True)
    why = _unready(status)
    down = _down(status)
    facts = f"epoch {status.epoch if status.epoch is not None else '-'}, {_links(status)} links up"
    if down:
        facts += f", down: peer{'s' if len(down) > 1 else ''} {', '.join(map(str, down))}"
    if status.worker.state is not None:
        facts += f", worker {status.worker.state}"
    if why is None:
        _say(args, f"ready: index {status.index} of {status.size}, {facts}")
        return ExitCode.OK
    _say(args, f"not ready: {why}; {facts}")
    return ExitCode.FAILURE


def _cluster_targets(args: argparse.Namespace) -> tuple[list[Address], str | None, str | None]:
    """``status --all``: every slot's admin websocket, the token to present, and the cluster's name (None without
    ``--config``). Slot K's is ``--admins``' K-th address, else the host of ``cluster.peers[K]`` at port A+K, A being
    ``--admin-base-port`` or else the port of ``admin.listen`` (``meshd cluster``'s numbering)."""
    if args.admin is not None:
        raise ConfigError("--admin", "names one daemon; with --all give --admins HOST:PORT,... or --admin-base-port")
    config = None
    if args.config is not None:
        from meshd import config as configuration

        config = configuration.load(args.config)
    token = _token(args, None if config is None else config.admin.token_file)
    name = None if config is None else config.cluster.name
    if args.admins is not None:
        if args.admin_base_port is not None:
            raise ConfigError("--admins", "give either --admins or --admin-base-port, not both")
        if not args.admins:
            raise ConfigError("--admins", "expected HOST:PORT,HOST:PORT,... (one per slot, in slot order)")
        if config is not None and len(args.admins) != config.size:
            raise ConfigError(
                "--admins", f"lists {len(args.admins)} addresses, but cluster.peers of {args.config} has {config.size}"
            )
        from meshd.core.address import Address

        return [Address(*given) for given in args.admins], token, name
    if config is None:
        raise ConfigError("--all", "needs --config FILE (its cluster.peers) or --admins HOST:PORT,...")
    base, key = (args.admin_base_port, "--admin-base-port")
    if base is None:
        base, key = config.admin.listen.port, "admin.listen"
    if not 1 <= base <= 65536 - config.size:
        raise ConfigError(key, f"admin ports {base}..{base + config.size - 1} are not all in 1..65535")
    from meshd.core.address import Address

    return [Address(peer.host, base + slot) for slot, peer in enumerate(config.cluster.peers)], token, name


async def _ask_all(admins: list[Address], timeout: float, token: str | None) -> list[Status | str]:
    """Every slot's status, or why it gave none; all asked at once, each bounded by ``timeout``."""
    import trio

    from meshd.admin import client

    found: list[Status | str] = ["not asked"] * len(admins)

    async def ask(slot: int, address: Address) -> None:
        try:
            found[slot] = await client.status(address, timeout=timeout, token=token)
        except client.CLIENT_ERRORS as exc:
            found[slot] = str(exc) or f"the admin websocket at {address} went away"

    async with trio.open_nursery() as nursery:
        for slot, address in enumerate(admins):
            nursery.start_soon(ask, slot, address)
    return found


def _slot_row(slot: int, admin: Address, answer: Status | str, size: int, name: str | None) -> dict[str, Any]:
    """One slot of ``status --all`` as its JSON object (the table is made from it): ``problem`` says in a few words
    why the slot is not ready (null when it is), ``error`` why it gave no status of its own (null when it did)."""
    row: dict[str, Any] = {"slot": slot, "admin": str(admin)}
    if isinstance(answer, str):
        empty = dict.fromkeys(("epoch", "links", "down", "worker", "status"))
        return row | {"state": "unreachable", "ready": False, "problem": "unreachable", "error": answer} | empty
    why = _unready(answer)
    error = None
    if answer.index != slot or answer.size != size or (name is not None and answer.cluster != name):
        who = f"index {answer.index} of {answer.size} in cluster {answer.cluster!r}"
        why, error = f"answers as {who}", f"{admin} answers as {who}, not as slot {slot} of this cluster"
    return row | {
        "state": "foreign" if error else str(answer.state),
        "ready": why is None,
        "problem": why,
        "error": error,
        "epoch": None if answer.epoch is None else answer.epoch.to_json(),
        "links": _links(answer),
        "down": _down(answer),
        "worker": None if answer.worker.state is None else str(answer.worker.state),
        "status": answer.to_json(),
    }


def _cluster_verdict(rows: list[dict[str, Any]]) -> tuple[bool, str]:
    """Whether every slot is ready in one epoch, and the summary line that says so, or what is wrong."""
    ready = [row for row in rows if row["ready"]]
    epochs = [str(row["epoch"]) for row in rows if row["epoch"] is not None and row["state"] != "foreign"]
    epochs = list(dict.fromkeys(epochs))
    where = (
        "" if not epochs else f" in epoch {epochs[0]}" if len(epochs) == 1 else f" in mixed epochs {', '.join(epochs)}"
    )
    head = f"cluster: {len(ready)}/{len(rows)} ready{where}"
    problems = [f"slot {row['slot']} {row['problem']}" for row in rows if row["problem"]]
    if problems:
        return False, f"{head}; {'; '.join(problems)}"
    if len(epochs) > 1:
        return False, head
    return True, head


def format_cluster(rows: list[dict[str, Any]]) -> list[str]:
    """The table of ``status --all``: one line per slot, then why each unreachable or foreign slot is so."""
    table = [("SLOT", "ADMIN", "STATE", "EPOCH", "READY", "LINKS", "DOWN", "WORKER")]
    for row in rows:
        down = row["down"]
        table.append(
            (
                str(row["slot"]),
                row["admin"],
                row["state"],
                "-" if row["epoch"] is None else str(row["epoch"]),
                "yes" if row["ready"] else "no",
                row["links"] or "-",
                ",".join(map(str, down)) if down else "-",
                row["worker"] or "-",
            )
        )
    widths = [max(len(line[column]) for line in table) for column in range(len(table[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip() for line in table]
    return lines + [f"slot {row['slot']}: {row['error']}" for row in rows if row["error"]]


def _status_all(args: argparse.Namespace) -> int:
    """``status --all``: one table of every slot; 0 when every slot is ready in one epoch, 1 otherwise."""
    import trio

    admins, token, name = _cluster_targets(args)
    found = trio.run(_ask_all, admins, args.timeout, token)
    rows = [
        _slot_row(slot, admin, answer, len(admins), name)
        for slot, (admin, answer) in enumerate(zip(admins, found, strict=True))
    ]
    ok, summary = _cluster_verdict(rows)
    report = {"ok": ok, "summary": summary, "size": len(rows), "ready": sum(row["ready"] for row in rows)}
    if args.json:
        output = json.dumps(report | {"slots": rows})
    else:
        output = summary if args.ready else "\n".join([*format_cluster(rows), summary])
    if not args.quiet:
        print(output, flush=True)
    return ExitCode.OK if ok else ExitCode.FAILURE


def cmd_start(args: argparse.Namespace) -> int:
    """The controller's ``start`` op: 0 when the daemon took the epoch, 1 when it refused it or did not answer."""
    import trio

    from meshd.admin import client
    from meshd.core.wire import Epoch

    admin, token = _admin_target(args)
    answer = trio.run(functools.partial(client.start, admin, Epoch(args.epoch), timeout=args.timeout, token=token))
    if args.json:
        print(json.dumps(answer.to_json()), flush=True)
    if answer.error is not None:
        print(f"meshd: the daemon at {admin} refused epoch {args.epoch}: {answer.error}", file=sys.stderr, flush=True)
        return ExitCode.FAILURE
    if not args.json:
        fenced = f"ran an older epoch than {answer.epoch}: it is fenced and exits 75"
        print(f"the daemon at {admin} {fenced if answer.fenced else f'runs epoch {answer.epoch}'}", flush=True)
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
