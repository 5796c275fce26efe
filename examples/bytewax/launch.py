"""The worker meshd execs for a bytewax (Timely) cluster: turns meshd's MESHD_* facts into a ``bytewax.run`` command
line and execs it (the launcher's process becomes bytewax: meshd's SIGTERM/SIGKILL reach bytewax itself, and
PR_SET_PDEATHSIG, which survives exec, kills it with its daemon).

    meshd run --config C --index I --epoch E --exec -- python examples/bytewax/launch.py [OPTIONS] [-- BYTEWAX-ARGS]

becomes

    python -m bytewax.run examples/bytewax/flow.py:flow -i $MESHD_INDEX -w 1 -a "h0:q0;h1:q1;..." [BYTEWAX-ARGS]

bytewax forms its own Timely connections (address based): the launcher closes the data sockets meshd handed over
(MESHD_FDS) and only takes the generation's membership from meshd. meshd gates it: bytewax starts only once the
mesh is ready in a generation, and is stopped (SIGTERM, then SIGKILL after worker.stop_grace) and reaped before its
daemon leaves the generation, so a Timely process never meets one of another generation.

Timely ports: slot i listens on host_i:q_i, where host_i is the host of slot i's mesh address (MESHD_PEERS) and
q_i = (slot i's mesh port) + OFFSET (``--port-offset``, env MESHD_BYTEWAX_PORT_OFFSET, default 1000), or the i-th
of ``--ports q0,q1,...`` (env MESHD_BYTEWAX_PORTS). Every process must derive the same list, so give every slot the
same option. The ports must be free: the launcher checks its own (bound with SO_REUSEADDR, as Rust's std and so
Timely bind it) and exits 3 with a message when it is taken.

Options: ``--flow IMPORT`` (bytewax.run's import string; default the flow.py beside this file, ``:flow``),
``--workers W`` (Timely workers per process, default 1; must be the same everywhere), ``--dry-run`` (print the
command and exit 0). Exit codes of the launcher itself: 2 bad environment or options, 3 own port busy; after the
exec, bytewax's own.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import socket
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_OFFSET = 1000
BAD_ENV = 2
PORT_BUSY = 3


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.strip().rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"not host:port: {address!r}")
    return host.strip("[]"), int(port)


def timely_addresses(peers: list[str], offset: int, ports: list[int] | None) -> list[str]:
    """The Timely address of every slot, in index order: each slot's mesh host, with its mesh port + ``offset``
    (or ``ports[i]``)."""
    if ports is not None and len(ports) != len(peers):
        raise ValueError(f"{len(ports)} ports for {len(peers)} peers")
    addresses = []
    for index, peer in enumerate(peers):
        host, mesh_port = split_address(peer)
        port = ports[index] if ports is not None else mesh_port + offset
        if not 0 < port < 65536:
            raise ValueError(f"slot {index}: Timely port {port} out of range (mesh port {mesh_port} + {offset})")
        addresses.append(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    return addresses


def port_free(address: str) -> str | None:
    """None when ``address`` can be bound the way Timely binds it (SO_REUSEADDR: a TIME_WAIT left by the previous
    generation does not count); else why not."""
    host, port = split_address(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return str(exc)
    return None


def close_data_sockets(fds: str) -> None:
    """bytewax dials its own connections: drop the descriptors meshd handed over (not leaked into bytewax)."""
    for entry in fds.split(","):
        if entry.strip().isdigit():
            with contextlib.suppress(OSError):
                os.close(int(entry))


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    extra: list[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, extra = argv[:at], argv[at + 1 :]
    parser = argparse.ArgumentParser(description="exec bytewax.run for this meshd slot (see the module docstring)")
    parser.add_argument("--flow", default=f"{HERE / 'flow.py'}:flow", help="bytewax.run import string")
    parser.add_argument("--workers", type=int, default=1, help="Timely workers per process (-w), the same everywhere")
    parser.add_argument(
        "--port-offset",
        type=int,
        default=int(os.environ.get("MESHD_BYTEWAX_PORT_OFFSET", DEFAULT_OFFSET)),
        help=f"Timely port = mesh port + OFFSET (default {DEFAULT_OFFSET}; env MESHD_BYTEWAX_PORT_OFFSET)",
    )
    parser.add_argument(
        "--ports",
        default=os.environ.get("MESHD_BYTEWAX_PORTS"),
        help="explicit Timely ports q0,q1,... in index order (env MESHD_BYTEWAX_PORTS); overrides --port-offset",
    )
    parser.add_argument("--python", default=sys.executable, help="the interpreter that has bytewax")
    parser.add_argument("--dry-run", action="store_true", help="print the command and exit")
    return parser.parse_args(argv), extra


def main(argv: list[str]) -> int:
    args, extra = parse(argv)
    env = os.environ
    try:
        index = int(env["MESHD_INDEX"])
        peers = [peer for peer in env["MESHD_PEERS"].split(",") if peer.strip()]
        ports = [int(port) for port in args.ports.split(",")] if args.ports else None
        addresses = timely_addresses(peers, args.port_offset, ports)
        if not 0 <= index < len(addresses):
            raise ValueError(f"MESHD_INDEX {index} outside 0..{len(addresses) - 1}")
    except (KeyError, ValueError) as exc:
        print(f"launch.py: no usable meshd environment: {exc!r} (run me with meshd run --exec)", file=sys.stderr)
        return BAD_ENV
    command = [
        args.python, "-m", "bytewax.run", args.flow,
        "-i", str(index), "-w", str(args.workers), "-a", ";".join(addresses), *extra,
    ]  # fmt: skip
    if args.dry_run:
        print(shlex.join(command))
        return 0
    busy = port_free(addresses[index])
    if busy is not None:
        print(f"launch.py: slot {index}: Timely port {addresses[index]} is taken: {busy}", file=sys.stderr, flush=True)
        return PORT_BUSY
    epoch = env.get("MESHD_EPOCH", "?")
    print(f"launch.py: slot {index} epoch {epoch}: exec {shlex.join(command)}", file=sys.stderr, flush=True)
    close_data_sockets(env.get("MESHD_FDS", ""))
    os.execvp(command[0], command)  # never returns: this process is bytewax from here on


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
