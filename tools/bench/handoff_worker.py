"""The bench's tiny worker (``tools.bench.handoff``): its first action stamps the wall clock, then it checks that it
holds every data socket meshd handed it (MESHD_FDS: N-1 connected TCP sockets), writes one JSON line to
``OUT/<index>.json`` and waits for the end of its generation (SIGTERM ends it).

``--probe``: stamp and write at once, with no mesh (the bench spawns it bare to time the interpreter's own start).
Standard library only, imported after the stamp.
"""

import time

STAMP = time.time()

import json  # noqa: E402  (after the stamp, on purpose)
import os  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402


def held_sockets(entries: list[str]) -> tuple[int, dict[str, int]]:
    """How many MESHD_FDS entries are connected TCP sockets, and their options (the last one's)."""
    held, options = 0, {}
    for entry in entries:
        if entry == "-":
            continue
        sock = socket.socket(fileno=int(entry))
        try:
            sock.getpeername()  # raises unless it is connected
            if sock.type == socket.SOCK_STREAM:
                held += 1
            options = {
                "nodelay": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY),
                "notsent_lowat": sock.getsockopt(socket.IPPROTO_TCP, getattr(socket, "TCP_NOTSENT_LOWAT", 25)),
                "sndbuf": sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF),
                "rcvbuf": sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
                "blocking": int(sock.getblocking()),
            }
        except OSError:
            pass
        finally:
            sock.detach()
    return held, options


def main() -> int:
    out = Path(sys.argv[-1])
    if "--probe" in sys.argv:
        (out / f"probe-{os.getpid()}.json").write_text(json.dumps({"stamp": STAMP}) + "\n")
        return 0
    entries = os.environ["MESHD_FDS"].split(",")
    held, options = held_sockets(entries)
    index = int(os.environ["MESHD_INDEX"])
    record = {
        "index": index,
        "epoch": os.environ["MESHD_EPOCH"],
        "stamp": STAMP,
        "sockets": held,
        "expected": int(os.environ["MESHD_SIZE"]) - 1,
        "options": options,
        "pid": os.getpid(),
    }
    partial = out / f"{index}.json.part"
    partial.write_text(json.dumps(record) + "\n")
    partial.rename(out / f"{index}.json")  # whole or absent
    while True:
        signal.pause()  # until SIGTERM (default action: the end) or SIGKILL


if __name__ == "__main__":
    sys.exit(main())
