"""An all-to-all worker over the sockets meshd hands it: every round, every worker sends every peer one block and
verifies every block it receives, byte for byte.

    meshd run --config FILE --index I --epoch E --exec -- python examples/alltoall.py --rounds 1000
    python examples/alltoall.py --attach /run/meshd/worker.sock      # meshd's [worker] socket = "..."

Block r from sender s to receiver d is ``shake_256(f"{epoch}|{r}|{s}|{d}")`` stretched to ``--block`` bytes, after
a 20-byte header (magic, round, sender, length). One sender and one receiver thread per peer, so nobody deadlocks
on full socket buffers; the main thread starts each round once the previous one was sent and verified everywhere.

Exit codes: 0 the rounds are done (or the generation ended: SIGTERM / fenced, stopping at the next round boundary,
within a second); 2 no mesh (bad environment, attach refused); 3 a peer sent a wrong block or header; 4 a peer's
socket ended or broke mid-run (its generation ended: shared fate, so this worker fails too and meshd restarts it).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import queue
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass

from meshd.worker import Mesh, MeshError

MAGIC = b"A2A1"
HEADER = struct.Struct("!4sQII")  # magic, round, sender index, payload length
CORRUPT = 3
PEER_GONE = 4
NO_MESH = 2
POLL = 0.05  # seconds between looks at mesh.ended while a round runs
STOP_WITHIN = 0.5  # seconds a round may still take once the generation ended, before we stop anyway
# Seconds to wait for our own end after a peer's socket ended: the peer's replacement soon fences our daemon,
# which then ends us (SIGTERM, exit 0: a shared end, not a failure); only if that does not come do we fail (exit 4).
EOF_GRACE = 3.0
DRAIN_TIMEOUT = 10.0  # seconds to wait for every peer's orderly close after the last round


def block(epoch: str, round_: int, sender: int, receiver: int, length: int) -> bytes:
    """The payload ``sender`` sends ``receiver`` in ``round_`` of generation ``epoch``."""
    return hashlib.shake_256(f"{epoch}|{round_}|{sender}|{receiver}".encode()).digest(length)


def frame(epoch: str, round_: int, sender: int, receiver: int, length: int) -> bytes:
    return HEADER.pack(MAGIC, round_, sender, length) + block(epoch, round_, sender, receiver, length)


class Corrupt(Exception):
    """A peer sent a header or a block that is not the expected one."""


class Gone(Exception):
    """A peer's socket ended (EOF) or broke."""


@dataclass(frozen=True)
class Result:
    kind: str  # "sent", "received", "closed", "corrupt", "gone"
    peer: int
    round: int
    detail: str = ""


def recv_exactly(sock: socket.socket, view: memoryview, peer: int, what: str) -> None:
    got = 0
    while got < len(view):
        try:
            n = sock.recv_into(view[got:])
        except OSError as exc:
            raise Gone(f"peer {peer}: {what}: {exc}") from None
        if n == 0:
            raise Gone(f"peer {peer}: EOF in {what} after {got} of {len(view)} bytes")
        got += n


class PeerThreads:
    """The sender and the receiver of one peer; each takes round numbers from its inbox (None: stop)."""

    def __init__(self, mesh: Mesh, peer: int, sock: socket.socket, length: int, results: queue.Queue[Result]) -> None:
        self.mesh, self.peer, self.sock, self.length, self.results = mesh, peer, sock, length, results
        self.to_send: queue.Queue[int | None] = queue.Queue()
        self.to_receive: queue.Queue[int | str | None] = queue.Queue()
        self.threads = [
            threading.Thread(target=self._send, name=f"send-{peer}", daemon=True),
            threading.Thread(target=self._receive, name=f"receive-{peer}", daemon=True),
        ]
        for thread in self.threads:
            thread.start()

    def start_round(self, round_: int) -> None:
        self.to_send.put(round_)
        self.to_receive.put(round_)

    def stop(self) -> None:
        self.to_send.put(None)
        self.to_receive.put(None)

    def _send(self) -> None:
        mesh = self.mesh
        while (round_ := self.to_send.get()) is not None:
            try:
                self.sock.sendall(frame(mesh.epoch, round_, mesh.index, self.peer, self.length))
            except OSError as exc:
                self.results.put(Result("gone", self.peer, round_, f"peer {self.peer}: send: {exc}"))
                return
            self.results.put(Result("sent", self.peer, round_))

    def _receive(self) -> None:
        mesh = self.mesh
        header = bytearray(HEADER.size)
        payload = bytearray(self.length)
        while (order := self.to_receive.get()) is not None:
            try:
                if order == "drain":
                    self._drain()
                    self.results.put(Result("closed", self.peer, 0))
                    return
                assert isinstance(order, int)
                recv_exactly(self.sock, memoryview(header), self.peer, f"the header of round {order}")
                magic, round_, sender, length = HEADER.unpack(header)
                if magic != MAGIC:
                    raise Corrupt(
                        f"peer {self.peer}: round {order}: bad magic {bytes(magic)!r} (header {header.hex()})"
                    )
                if round_ != order or sender != self.peer or length != self.length:
                    raise Corrupt(
                        f"peer {self.peer}: expected round {order} from {self.peer}, {self.length} bytes; the header "
                        f"says round {round_} from {sender}, {length} bytes"
                    )
                recv_exactly(self.sock, memoryview(payload), self.peer, f"the block of round {order}")
                expected = block(mesh.epoch, order, self.peer, mesh.index, self.length)
                if payload != expected:
                    at = next(i for i, (a, b) in enumerate(zip(payload, expected, strict=True)) if a != b)
                    raise Corrupt(
                        f"peer {self.peer}: round {order}: the block differs at byte {at} of {self.length} "
                        f"(got {payload[at : at + 8].hex()}, expected {expected[at : at + 8].hex()})"
                    )
            except Corrupt as exc:
                self.results.put(Result("corrupt", self.peer, order if isinstance(order, int) else 0, str(exc)))
                return
            except Gone as exc:
                self.results.put(Result("gone", self.peer, order if isinstance(order, int) else 0, str(exc)))
                return
            self.results.put(Result("received", self.peer, order))

    def _drain(self) -> None:
        """After the last round: the peer closes its sending side once it has everything from us; nothing more."""
        try:
            extra = self.sock.recv(64)
        except OSError:
            return  # it is gone after its last round: nothing of ours is missing
        if extra:
            raise Corrupt(f"peer {self.peer}: {len(extra)} bytes after the last round: {extra[:16].hex()}")


class Run:
    def __init__(self, mesh: Mesh, length: int, rounds: int, every: int) -> None:
        self.mesh, self.length, self.rounds, self.every = mesh, length, rounds, every
        self.results: queue.Queue[Result] = queue.Queue()
        self.peers = [PeerThreads(mesh, peer, sock, length, self.results) for peer, sock in mesh.peers_except_me()]

    def say(self, text: str, error: bool = False) -> None:
        print(f"worker {self.mesh.index} epoch {self.mesh.epoch}: {text}", file=sys.stderr if error else sys.stdout)
        (sys.stderr if error else sys.stdout).flush()

    def main(self) -> int:
        code = 1  # an unexpected exception
        try:
            code = self._rounds()
        finally:
            self._shut(code)
        return code

    def _rounds(self) -> int:
        mesh, moved, since = self.mesh, 0, time.monotonic()
        round_ = 0
        while not self.rounds or round_ < self.rounds:
            if mesh.ended.is_set():
                self.say(f"generation ended ({mesh.end_reason}) after round {round_}: stopping")
                return 0
            round_ += 1
            for peer in self.peers:
                peer.start_round(round_)
            code = self._wait(round_, 2 * len(self.peers), {"sent", "received"})
            if code is not None:
                return code
            moved += 2 * len(self.peers) * self.length
            if round_ % self.every == 0 or round_ == self.rounds:
                now = time.monotonic()
                rate = moved / max(now - since, 1e-9) / 1e6
                print(f"worker {mesh.index} epoch {mesh.epoch} round {round_} ok, {rate:.1f} MB/s", flush=True)
                moved, since = 0, now
        # Done: close our sending sides; each peer closes its own once it has verified our last block.
        for peer in self.peers:
            with contextlib.suppress(OSError):
                peer.sock.shutdown(socket.SHUT_WR)
            peer.to_receive.put("drain")
        code = self._wait(round_, len(self.peers), {"closed"}, DRAIN_TIMEOUT)
        if code is None or code == 0:
            return 0
        return code

    def _wait(self, round_: int, count: int, kinds: set[str], limit: float | None = None) -> int | None:
        """Until ``count`` results of ``kinds``: None, or the exit code when the run must end."""
        mesh = self.mesh
        ended_at: float | None = None
        deadline = None if limit is None else time.monotonic() + limit
        while count:
            try:
                result = self.results.get(timeout=POLL)
            except queue.Empty:
                now = time.monotonic()
                if deadline is not None and now > deadline:
                    self.say(f"{count} peers did not close within {limit} s after the last round", error=True)
                    return 0  # our rounds are all verified
                if mesh.ended.is_set():
                    ended_at = ended_at or now
                    if now - ended_at > STOP_WITHIN:
                        self.say(f"generation ended ({mesh.end_reason}) in round {round_}: stopping", error=True)
                        return 0
                continue
            if result.kind in kinds:
                count -= 1
            elif result.kind == "corrupt":
                self.say(result.detail, error=True)
                return CORRUPT
            elif result.kind == "gone":
                if mesh.wait_ended(EOF_GRACE):
                    self.say(f"generation ended ({mesh.end_reason}); {result.detail}")
                    return 0
                self.say(f"{result.detail}: the peer's generation ended (shared fate)", error=True)
                return PEER_GONE
        return None

    def _shut(self, code: int) -> None:
        for peer in self.peers:
            peer.stop()
            with contextlib.suppress(OSError):
                peer.sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked on it
        for peer in self.peers:
            for thread in peer.threads:
                thread.join(timeout=1.0)
        self.mesh.close(code)  # attached: tells meshd how we ended (with --exec our exit code does)


def positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--block", type=positive, default=64 * 1024, help="bytes per block (default 65536)")
    parser.add_argument("--rounds", type=int, default=0, help="rounds to run, then exit 0 (default 0: forever)")
    parser.add_argument("--every", type=positive, default=100, help="print one line every N rounds (default 100)")
    parser.add_argument("--attach", metavar="PATH", help="attach to meshd's worker socket instead of --exec's MESHD_*")
    parser.add_argument("--timeout", type=float, default=None, help="with --attach: seconds to wait for the mesh")
    args = parser.parse_args(argv)
    if args.rounds < 0:
        parser.error("--rounds must be 0 (forever) or positive")
    try:
        mesh = Mesh.attach(args.attach, timeout=args.timeout) if args.attach else Mesh.from_env()
    except (ValueError, MeshError, OSError) as exc:
        print(f"alltoall: no mesh: {exc}", file=sys.stderr, flush=True)
        return NO_MESH
    return Run(mesh, args.block, args.rounds, args.every).main()


if __name__ == "__main__":
    sys.exit(main())
