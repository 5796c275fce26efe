"""The programs and measurements behind the floors (``tools.bench.floors``): processes timed from spawn to exit or
to a listening port, loopback links in one process (plain sockets and trio), and a heartbeat-only trio mesh."""

from __future__ import annotations

import contextlib
import errno
import resource
import selectors
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

import trio

from meshd.cluster.spawn import log_tail, meshd_argv
from meshd.core.address import Address
from tools.bench.common import (
    HOST,
    LOG_TAIL,
    POLL_INTERVAL,
    BenchError,
    Lab,
    accepts,
    rss_mib,
)

# Bounds on every wait.
EXIT_TIMEOUT = 30.0  # one process, or a crowd of them: spawn -> every one exited
LISTEN_TIMEOUT = 30.0  # spawn -> the port accepts
LINKS_TIMEOUT = 30.0  # no progress of the loopback links for this long
# After the trio listener accepts, its RSS is read this much later (trio.run has begun).
RSS_SETTLE = 0.05
HELLO = b"h" * 32  # one round trip per link: HELLO out, REPLY back
REPLY = b"r" * 32

# A listening socket and nothing else; argv: host, port. The trio variant imports trio first and sleeps in trio.run.
LISTEN = (
    "import socket, sys, time\n"
    "s = socket.socket()\n"
    "s.bind((sys.argv[1], int(sys.argv[2])))\n"
    "s.listen(128)\n"
    "time.sleep(600)\n"
)
LISTEN_TRIO = (
    "import socket, sys, trio\n"
    "s = socket.socket()\n"
    "s.bind((sys.argv[1], int(sys.argv[2])))\n"
    "s.listen(128)\n"
    "trio.run(trio.sleep, 600)\n"
)
# The least an idle mesh can cost: N trio processes, fully connected on loopback, each sending a small frame to every
# peer at each tick of a shared grid (one timer) and reading what arrives (one task per peer), nothing else. Each
# prints its CPU (% of a core) over a window that begins once every process is linked; argv: index, size, interval,
# settle, seconds, the ports.
HEARTBEAT_MESH = (
    "import math, os, resource, sys, trio\n"
    "index, size = int(sys.argv[1]), int(sys.argv[2])\n"
    "interval, settle, seconds = (float(value) for value in sys.argv[3:6])\n"
    "ports = [int(port) for port in sys.argv[6].split(',')]\n"
    "def cpu():\n"
    "    usage = resource.getrusage(resource.RUSAGE_SELF)\n"
    "    return usage.ru_utime + usage.ru_stime\n"
    "async def main():\n"
    "    listener = trio.socket.socket()\n"
    "    await listener.bind(('127.0.0.1', ports[index]))\n"
    "    listener.listen(size)\n"
    "    peers = []\n"
    "    async def dial(port):\n"
    "        while True:\n"
    "            sock = trio.socket.socket()\n"
    "            try:\n"
    "                await sock.connect(('127.0.0.1', port))\n"
    "            except OSError:\n"
    "                sock.close()\n"
    "                await trio.sleep(0.01)\n"
    "                continue\n"
    "            peers.append(sock)\n"
    "            return\n"
    "    async with trio.open_nursery() as nursery:\n"
    "        for port in ports[index + 1:]:\n"
    "            nursery.start_soon(dial, port)\n"
    "        for _ in range(index):\n"
    "            peers.append((await listener.accept())[0])\n"
    "    async def read(sock):\n"
    "        while True:\n"
    "            await trio.lowlevel.wait_readable(sock)\n"
    "            if not os.read(sock.fileno(), 4096):\n"
    "                return\n"
    "    async def beat():\n"
    "        while True:\n"
    "            await trio.sleep_until((math.floor(trio.current_time() / interval) + 1) * interval)\n"
    "            for sock in peers:\n"
    "                os.write(sock.fileno(), b'h' * 8)\n"
    "    async with trio.open_nursery() as nursery:\n"
    "        for sock in peers:\n"
    "            nursery.start_soon(read, sock)\n"
    "        nursery.start_soon(beat)\n"
    "        await trio.sleep(settle)\n"
    "        began = cpu()\n"
    "        await trio.sleep(seconds)\n"
    "        print(100.0 * (cpu() - began) / seconds, flush=True)\n"
    "        await trio.sleep(settle)\n"
    "        nursery.cancel_scope.cancel()\n"
    "trio.run(main)\n"
)
MESH_SETTLE = 2.0  # seconds: every process of the heartbeat mesh is linked and past its start-up
PYTHON = [sys.executable, "-c", "pass"]
IMPORT_TRIO = [sys.executable, "-c", "import trio"]
IMPORT_WS = [sys.executable, "-c", "import trio, trio_websocket"]
MESHD_VERSION = meshd_argv(["--version"])


# ---------------------------------------------------------------------------------------------------------------
# Processes: spawn -> exit, spawn -> listening


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def to_exit(lab: Lab, command: Sequence[str], count: int) -> tuple[float, float]:
    """Spawn ``count`` copies of ``command`` at once (one after the other, as fast as the lab's fleet forks) and wait
    for all; (spawn of the first -> exit of the last, CPU per process). Blocking waits, so the exit time is exact;
    a timer kills the crowd when it outlives EXIT_TIMEOUT."""
    log = lab.workdir / "floors" / "floors.log"
    cpu_before = children_cpu()
    started = time.perf_counter()
    processes = [lab.fleet.start(command, log) for _ in range(count)]
    expired = threading.Event()

    def expire() -> None:
        expired.set()
        lab.fleet.kill(processes)

    watchdog = threading.Timer(EXIT_TIMEOUT, expire)
    watchdog.start()
    try:
        codes = [process.wait() for process in processes]
        ended = time.perf_counter()
    finally:
        watchdog.cancel()
        lab.fleet.kill(processes)
    if any(codes):
        why = f"killed after {EXIT_TIMEOUT:g} s" if expired.is_set() else f"exit codes {sorted(set(codes))}"
        raise BenchError(f"{' '.join(command)}: {why}", log_tail(log, LOG_TAIL))
    return ended - started, (children_cpu() - cpu_before) / count


async def listening_once(lab: Lab, script: str, rss: bool) -> tuple[float, float | None]:
    """Spawn a listener script and poll its port as the start part polls meshd's mesh port: spawn -> accepting."""
    (port,) = lab.ports.take(1)
    address = Address(HOST, port)
    log = lab.workdir / "floors" / "listen.log"
    command = [sys.executable, "-c", script, HOST, str(port)]
    spawned = time.perf_counter()
    process = await trio.to_thread.run_sync(lab.fleet.start, command, log)
    try:
        deadline = spawned + LISTEN_TIMEOUT
        while not await accepts(address):
            if process.poll() is not None:
                raise BenchError(f"the listener exited with {process.poll()}", log_tail(log, LOG_TAIL))
            if time.perf_counter() > deadline:
                raise BenchError(f"the listener did not accept within {LISTEN_TIMEOUT:g} s", log_tail(log, LOG_TAIL))
            await trio.sleep(POLL_INTERVAL)
        listening = time.perf_counter() - spawned
        size = None
        if rss:
            await trio.sleep(RSS_SETTLE)
            size = rss_mib(process.pid)
        return listening, size
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(lab.fleet.kill, [process])


def heartbeat_mesh(lab: Lab, size: int, interval: float, seconds: float) -> list[float]:
    """Spawn the HEARTBEAT_MESH of ``size`` processes at once; each one's CPU (% of a core) over ``seconds``."""
    ports = lab.ports.take(size)
    logs = [lab.workdir / "floors" / f"heartbeat-mesh-{index}.log" for index in range(size)]
    settings = [str(size), str(interval), str(MESH_SETTLE), str(seconds), ",".join(map(str, ports))]
    processes = [
        lab.fleet.start([sys.executable, "-c", HEARTBEAT_MESH, str(index), *settings], log)
        for index, log in enumerate(logs)
    ]
    bound = EXIT_TIMEOUT + seconds + 2 * MESH_SETTLE
    try:
        codes = [process.wait(timeout=bound) for process in processes]
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"the heartbeat mesh did not end within {bound:g} s", log_tail(logs[0], LOG_TAIL)) from exc
    finally:
        lab.fleet.kill(processes)
    if any(codes):
        failed = codes.index(next(code for code in codes if code))
        raise BenchError(f"a heartbeat mesh process exited {codes[failed]}", log_tail(logs[failed], LOG_TAIL))
    try:
        return [float(log.read_text().split()[-1]) for log in logs]
    except (IndexError, ValueError) as exc:
        raise BenchError("a heartbeat mesh process printed no CPU figure", log_tail(logs[0], LOG_TAIL)) from exc


# ---------------------------------------------------------------------------------------------------------------
# Loopback links in one process

LINGER_NOW = struct.pack("ii", 1, 0)  # close with a reset: no TIME_WAIT left behind by thousands of links


def raise_fd_limit(size: int) -> bool:
    """Room for every socket of a ``size`` mesh in one process; False when the hard limit is too low."""
    needed = size * (size - 1) + size + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return True
    if hard != resource.RLIM_INFINITY and hard < needed:
        return False
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    return True


def raw_links(size: int) -> tuple[float, float]:
    """N listening sockets, one connection per pair (the lower index dials), HELLO out and REPLY back on each, all
    in flight at once under one selector; (wall, CPU) from the first connect to the last reply."""
    listeners: list[socket.socket] = []
    sockets: list[socket.socket] = []
    selector = selectors.DefaultSelector()
    try:
        for _ in range(size):
            listener = socket.socket()
            listeners.append(listener)
            listener.bind((HOST, 0))
            listener.listen(size)
            listener.setblocking(False)
        addresses = [listener.getsockname() for listener in listeners]
        wall, cpu = time.perf_counter(), time.process_time()
        for listener in listeners:
            selector.register(listener, selectors.EVENT_READ, "accept")
        for low in range(size):
            for high in range(low + 1, size):
                client = socket.socket()
                sockets.append(client)
                client.setblocking(False)
                code = client.connect_ex(addresses[high])
                if code not in (0, errno.EINPROGRESS):
                    raise BenchError(f"loopback connect failed: {errno.errorcode.get(code, code)}")
                selector.register(client, selectors.EVENT_WRITE, "dial")
        links, done = size * (size - 1) // 2, 0
        received: dict[socket.socket, bytes] = {}
        while done < links:
            events = selector.select(timeout=LINKS_TIMEOUT)
            if not events:
                raise BenchError(f"loopback links of N={size}: no progress for {LINKS_TIMEOUT:g} s ({done}/{links})")
            for key, _ in events:
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if key.data == "accept":
                    while True:
                        try:
                            server, _ = sock.accept()
                        except BlockingIOError:
                            break
                        sockets.append(server)
                        server.setblocking(False)
                        selector.register(server, selectors.EVENT_READ, "serve")
                elif key.data == "dial":
                    code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if code:
                        raise BenchError(f"loopback connect failed: {errno.errorcode.get(code, code)}")
                    if sock.send(HELLO) != len(HELLO):
                        raise BenchError("short send on loopback")
                    selector.modify(sock, selectors.EVENT_READ, "await")
                else:  # "serve" (HELLO expected) or "await" (REPLY expected)
                    chunk = sock.recv(len(HELLO))
                    if not chunk:
                        raise BenchError("a loopback link closed during its round trip")
                    got = received[sock] = received.get(sock, b"") + chunk
                    if len(got) < len(HELLO):
                        continue
                    selector.unregister(sock)
                    if key.data == "serve":
                        if sock.send(REPLY) != len(REPLY):
                            raise BenchError("short send on loopback")
                    else:
                        done += 1
        return time.perf_counter() - wall, time.process_time() - cpu
    finally:
        selector.close()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_NOW)
            sock.close()
        for listener in listeners:
            listener.close()


async def _receive_exactly(stream: trio.SocketStream, size: int) -> None:
    got = 0
    while got < size:
        chunk = await stream.receive_some(size - got)
        if not chunk:
            raise BenchError("a loopback link closed during its round trip")
        got += len(chunk)


async def trio_links(size: int) -> tuple[float, float]:
    """The same links with trio: ``trio.open_tcp_stream`` per link (as meshd dials), a task per accepted stream."""
    listeners: list[trio.SocketListener] = []
    streams: list[trio.SocketStream] = []

    async def serve(stream: trio.SocketStream) -> None:
        streams.append(stream)
        await _receive_exactly(stream, len(HELLO))
        await stream.send_all(REPLY)

    async def accept(listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        while True:
            nursery.start_soon(serve, await listener.accept())

    async def dial(port: int) -> None:
        stream = await trio.open_tcp_stream(HOST, port)
        streams.append(stream)
        await stream.send_all(HELLO)
        await _receive_exactly(stream, len(REPLY))

    try:
        for _ in range(size):
            sock = trio.socket.socket()
            await sock.bind((HOST, 0))
            sock.listen(size)
            listeners.append(trio.SocketListener(sock))
        ports = [listener.socket.getsockname()[1] for listener in listeners]
        with trio.fail_after(LINKS_TIMEOUT):
            async with trio.open_nursery() as nursery:
                for listener in listeners:
                    nursery.start_soon(accept, listener, nursery)
                wall, cpu = time.perf_counter(), time.process_time()
                async with trio.open_nursery() as dials:
                    for low in range(size):
                        for high in range(low + 1, size):
                            dials.start_soon(dial, ports[high])
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                nursery.cancel_scope.cancel()
        return wall, cpu
    except trio.TooSlowError as exc:
        raise BenchError(f"trio loopback links of N={size} not done within {LINKS_TIMEOUT:g} s") from exc
    finally:
        for stream in streams:
            with contextlib.suppress(OSError):
                stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_NOW)
            stream.socket.close()
        for listener in listeners:
            listener.socket.close()
