"""The flood's clients: strangers that connect to a daemon's mesh or admin port and misbehave in one way each, and
``Flood``, which runs many of them with at most ``concurrency`` open at once and tallies how each one ended.

Mesh port kinds (MESH_KINDS):
- ``silent``: connects and says nothing; holds until the daemon closes (its handshake timeout, or at once: shed);
- ``slow``: dribbles a well-formed CHALLENGE frame one byte every DRIBBLE_INTERVAL (the daemon must give up first);
- ``garbage``: random bytes, an oversize length prefix, a frame of an unknown type, or an HTTP request;
- ``hello``: a plain unauthenticated HELLO with the cluster's name from a peer's slot and a huge epoch, and its
  answer to the daemon's hello (STALE_EPOCH), a forged fence: a daemon with a cluster secret refuses it
  AUTH_FAILED (counted in ``auth_failures``); a daemon without a secret is fenced by it (exit 75).

Admin port kinds (ADMIN_KINDS):
- ``silent``: connects and says nothing (the daemon's HTTP upgrade timeout, ADMIN_HANDSHAKE_TIMEOUT, or shed);
- ``slow``: dribbles a valid websocket upgrade request one byte every DRIBBLE_INTERVAL;
- ``garbage``: random bytes, a request line that is no HTTP, or a request with a header far over h11's buffer;
- ``oversize``: a valid upgrade, then one request bigger than ``limits.admin_message_bytes`` (every other client
  just one byte over, so that the daemon read all of it and its close frame arrives; the others a MiB);
- ``idle``: a valid upgrade, then nothing for ``idle_seconds`` (or until ``Flood.release`` is set).

Every client waits at most ``Target.bound`` for the daemon to close; one that is still open then ended ``HELD``: a
stranger held a connection longer than the daemon's bounds allow. How the daemon ended each connection is what the
client saw: ``UNHEARD`` (closed before the daemon said a byte: shed by a limit, or a silent one timed out by the
admin port, which says nothing either), the daemon's frames or HTTP status, the websocket close code.
"""

from __future__ import annotations

import json
import random
import secrets
import string
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import trio
from trio_websocket import ConnectionClosed, ConnectionRejected, WebSocketConnection

from meshd.admin import client as admin
from meshd.admin.server import ADMIN_HANDSHAKE_TIMEOUT
from meshd.core.address import Address
from meshd.core.wire import (
    MAX_FRAME_SIZE,
    NONCE_SIZE,
    Challenge,
    Epoch,
    FrameDecoder,
    Hello,
    Refuse,
    RefuseReason,
    encode,
)
from meshd.errors import MeshdError

MESH_KINDS = ("silent", "slow", "garbage", "hello")
ADMIN_KINDS = ("silent", "slow", "garbage", "oversize", "idle")
KINDS = {"mesh": MESH_KINDS, "admin": ADMIN_KINDS}
# A slow client sends one byte per this many seconds.
DRIBBLE_INTERVAL = 0.1
# Bound on one TCP connect (a full listen backlog makes the kernel retry the SYN for seconds).
CONNECT_TIMEOUT = 10.0
# Beyond the daemon's own bound on a stranger (its handshake timeout), how long a client waits for the close before
# it calls the connection held: generous, the flood and the daemons share a busy machine.
BOUND_SLACK = 5.0
# The epoch of the forged hello: far above any a controller hands out, below the ceiling of self-minted generations.
FORGED_EPOCH = Epoch(2**62)
# The big oversize request (the others are one byte over the daemon's limit).
HUGE_MESSAGE = 1024 * 1024
# A header far over h11's incomplete-event limit (16 KiB).
HUGE_HEADER = 100 * 1024
RECEIVE_CHUNK = 65536

# How a connection ended, as the client saw it (some endings carry a detail after these words).
CONNECT_FAILED = "connect failed"
UNHEARD = "closed unheard"
HELD = "held past the bound"
SPOKE = "challenge, then closed"
REFUSED = "challenge, refused"
HTTP = "http"
UPGRADED_CLOSED = "upgraded, closed"
IDLE = "upgraded, held idle (closed by us)"
# Suffix of an ending that came at the daemon's handshake timeout (not before 90% of it).
AT_TIMEOUT = " at the handshake timeout"


@dataclass(frozen=True)
class Target:
    """The port a flood aims at, and what the clients need to know of the daemon behind it."""

    port: str  # "mesh" or "admin"
    address: Address
    cluster: str  # the cluster's name (the forged hello carries it)
    index: int  # the daemon's slot
    size: int
    handshake: float  # the daemon's bound on a stranger's handshake (mesh: timeouts.handshake; admin: the upgrade)
    message_bytes: int = 64 * 1024  # admin: limits.admin_message_bytes

    @property
    def bound(self) -> float:
        return self.handshake + BOUND_SLACK


def mesh_target(address: Address, cluster: str, index: int, size: int, handshake: float) -> Target:
    return Target("mesh", address, cluster, index, size, handshake)


def admin_target(address: Address, cluster: str, index: int, size: int, message_bytes: int) -> Target:
    return Target("admin", address, cluster, index, size, ADMIN_HANDSHAKE_TIMEOUT, message_bytes)


@dataclass
class Outcome:
    kind: str
    ending: str
    seconds: float  # connected -> closed (for a failed connect: how long it took)
    received: int = 0  # bytes from the daemon
    reset: bool = False  # the daemon's close came as a reset (RST), not an EOF


@dataclass
class Tally:
    """How many connections of one kind ended one way, and the longest any of them stayed open."""

    count: int = 0
    resets: int = 0
    longest: float = 0.0


@dataclass
class FloodResult:
    target: Target
    connections: int
    concurrency: int
    kinds: tuple[str, ...]
    seconds: float
    outcomes: list[Outcome]

    def tallies(self) -> dict[tuple[str, str], Tally]:
        tallies: dict[tuple[str, str], Tally] = {}
        for outcome in self.outcomes:
            tally = tallies.setdefault((outcome.kind, outcome.ending), Tally())
            tally.count += 1
            tally.resets += outcome.reset
            tally.longest = max(tally.longest, outcome.seconds)
        return dict(sorted(tallies.items()))

    def endings(self) -> Counter[str]:
        return Counter(outcome.ending for outcome in self.outcomes)

    def count(self, *prefixes: str) -> int:
        """Connections whose ending starts with one of ``prefixes``."""
        return sum(1 for outcome in self.outcomes if outcome.ending.startswith(prefixes))

    @property
    def connected(self) -> int:
        return len(self.outcomes) - self.count(CONNECT_FAILED)

    @property
    def held(self) -> int:
        return self.count(HELD)

    @property
    def shed(self) -> int:
        """Connections the daemon closed at once without a word (before its handshake timeout): shed by a limit."""
        return sum(1 for outcome in self.outcomes if outcome.ending == UNHEARD)

    @property
    def taken(self) -> int:
        """Connections the daemon took on (it spoke first, or held them until its handshake timeout), then closed
        (idle admin clients: closed by us)."""
        return self.connected - self.shed - self.held

    def to_json(self) -> dict[str, object]:
        return {
            "port": self.target.port,
            "address": str(self.target.address),
            "connections": self.connections,
            "concurrency": self.concurrency,
            "kinds": list(self.kinds),
            "seconds": round(self.seconds, 3),
            "connected": self.connected,
            "taken_on": self.taken,
            "shed": self.shed,
            "held": self.held,
            "endings": [
                {"kind": kind, "ending": ending, "count": t.count, "resets": t.resets, "longest": round(t.longest, 3)}
                for (kind, ending), t in self.tallies().items()
            ],
        }


# ----- what the clients send


def slow_challenge(rng: random.Random) -> bytes:
    """A well-formed CHALLENGE frame (the first frame a keyholder sends), to dribble."""
    return encode(Challenge(rng.randbytes(NONCE_SIZE), dialer=True))


def mesh_garbage(rng: random.Random) -> bytes:
    match rng.randrange(4):
        case 0:
            return rng.randbytes(rng.randrange(1, 512))
        case 1:  # a length prefix over the largest frame, and a little of the promised body
            return rng.randrange(MAX_FRAME_SIZE + 1, 2**32).to_bytes(4, "big") + rng.randbytes(rng.randrange(64))
        case 2:  # a well-formed frame of a type meshd does not know
            body = bytes([rng.randrange(11, 256)]) + rng.randbytes(rng.randrange(64))
            return len(body).to_bytes(4, "big") + body
        case _:
            return b"GET / HTTP/1.1\r\nHost: meshd\r\n\r\n"


def forged_hello(target: Target, rng: random.Random) -> bytes:
    """A plain HELLO from a peer's slot with a huge epoch, and at once the answer a newer peer gives the daemon's
    hello (STALE_EPOCH; an answer is what makes a hello count): the whole handshake of a peer without the secret.
    Without a cluster secret it fences the daemon; with one, the daemon refuses the hello AUTH_FAILED, as it would any
    first frame but a CHALLENGE."""
    sender = (target.index + 1) % target.size
    hello = Hello(target.cluster, sender, target.index, FORGED_EPOCH, rng.getrandbits(64))
    return encode(hello) + encode(Refuse(RefuseReason.STALE_EPOCH, FORGED_EPOCH, "your epoch is older"))


def upgrade_request(target: Target) -> bytes:
    key = secrets.token_urlsafe(16)
    return (
        f"GET / HTTP/1.1\r\nHost: {target.address}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def admin_garbage(rng: random.Random) -> bytes:
    match rng.randrange(3):
        case 0:
            return rng.randbytes(rng.randrange(1, 512))
        case 1:
            return "".join(rng.choices(string.ascii_letters + " /", k=rng.randrange(8, 80))).encode() + b"\r\n\r\n"
        case _:
            return b"GET / HTTP/1.1\r\nHost: meshd\r\nX-Flood: " + b"a" * HUGE_HEADER + b"\r\n\r\n"


# ----- the clients


class Flood:
    """``connections`` strangers against ``target``, of ``kinds`` in turn, at most ``concurrency`` open at once.

    ``decided`` counts the clients whose fate is known (closed, or admitted and holding idle); ``all_decided`` is set
    once every one's is. Idle clients hold for ``idle_seconds``, or, when ``release`` is given, until it is set."""

    def __init__(
        self,
        target: Target,
        connections: int,
        *,
        kinds: Sequence[str] | None = None,
        concurrency: int = 500,
        seed: int = 0,
        idle_seconds: float = 1.0,
        release: trio.Event | None = None,
    ) -> None:
        self.target = target
        self.connections = connections
        self.kinds = tuple(kinds or KINDS[target.port])
        unknown = set(self.kinds) - set(KINDS[target.port])
        if unknown:
            raise ValueError(f"no such {target.port} kind: {', '.join(sorted(unknown))}")
        self.concurrency = concurrency
        self.rng = random.Random(seed)
        self.idle_seconds = idle_seconds
        self.release = release
        self.outcomes: list[Outcome] = []
        self.decided = 0
        self.holding = 0  # idle clients admitted and holding now
        self.all_decided = trio.Event()

    def _decide(self) -> None:
        self.decided += 1
        if self.decided >= self.connections:
            self.all_decided.set()

    async def run(self) -> FloodResult:
        began = trio.current_time()
        limiter = trio.CapacityLimiter(self.concurrency)
        if self.connections == 0:
            self.all_decided.set()
        async with trio.open_nursery() as nursery:
            for number in range(self.connections):
                await limiter.acquire_on_behalf_of(number)
                kind = self.kinds[number % len(self.kinds)]
                rng = random.Random(self.rng.getrandbits(64))
                nursery.start_soon(self._one, number, kind, rng, limiter)
        return FloodResult(
            self.target, self.connections, self.concurrency, self.kinds, trio.current_time() - began, self.outcomes
        )

    async def _one(self, number: int, kind: str, rng: random.Random, limiter: trio.CapacityLimiter) -> None:
        decided = False

        def decide() -> None:  # once per client: when its fate is known, at the latest when it ends
            nonlocal decided
            if not decided:
                decided = True
                self._decide()

        try:
            if self.target.port == "admin" and kind in ("oversize", "idle"):
                outcome = await self._websocket(number // len(self.kinds), kind, decide)
            else:
                outcome = await self._raw(kind, rng)
            self.outcomes.append(outcome)
        finally:
            decide()
            limiter.release_on_behalf_of(number)

    def _payload(self, kind: str, rng: random.Random) -> bytes:
        mesh = self.target.port == "mesh"
        match kind:
            case "silent":
                return b""
            case "slow":
                return slow_challenge(rng) if mesh else upgrade_request(self.target)
            case "garbage":
                return mesh_garbage(rng) if mesh else admin_garbage(rng)
            case "hello":
                return forged_hello(self.target, rng)
        raise ValueError(kind)

    async def _raw(self, kind: str, rng: random.Random) -> Outcome:
        """A client over plain TCP: connect, send its bytes (or dribble them), read until the daemon closes."""
        address = self.target.address
        payload = self._payload(kind, rng)
        began = trio.current_time()
        try:
            with trio.fail_after(CONNECT_TIMEOUT):
                stream = await trio.open_tcp_stream(address.host, address.port)
        except (OSError, trio.TooSlowError) as exc:
            return Outcome(kind, f"{CONNECT_FAILED} ({_why(exc)})", trio.current_time() - began)
        connected = trio.current_time()
        received = bytearray()
        closed = reset = False
        async with stream, trio.open_nursery() as nursery:
            nursery.start_soon(_speak, stream, payload, kind == "slow")
            with trio.move_on_after(self.target.bound):
                try:
                    while chunk := await stream.receive_some(RECEIVE_CHUNK):
                        received += chunk
                except trio.BrokenResourceError:
                    reset = True
                closed = True
            nursery.cancel_scope.cancel()
        seconds = trio.current_time() - connected
        if not closed:
            return Outcome(kind, HELD, seconds, len(received))
        ending = _mesh_ending(bytes(received)) if self.target.port == "mesh" else _admin_ending(bytes(received))
        if seconds >= 0.9 * self.target.handshake:
            ending += AT_TIMEOUT
        return Outcome(kind, ending, seconds, len(received), reset)

    async def _websocket(self, nth: int, kind: str, decide: Callable[[], None]) -> Outcome:
        """A client that upgrades first (``meshd.admin.client.connect``), the ``nth`` of its kind: an oversize request
        (every second one just one byte over the limit), or an idle one."""
        target = self.target
        began = trio.current_time()
        connected = began
        ending = ""
        try:
            async with admin.connect(target.address, timeout=target.bound) as ws:
                connected = trio.current_time()
                if kind == "idle":
                    ending = await self._idle(ws, decide)
                else:
                    size = target.message_bytes + 1 if nth % 2 else HUGE_MESSAGE
                    ending = await _oversize(ws, size, target.bound)
        except admin.AdminTimeout:
            ending = HELD
        except admin.NotAdmin as exc:
            rejected = exc.__cause__
            ending = f"{HTTP} {rejected.status_code}" if isinstance(rejected, ConnectionRejected) else UNHEARD
        except admin.AdminUnreachable as exc:
            ending = f"{CONNECT_FAILED} ({exc})"
        except ConnectionClosed as exc:  # the daemon closed while we spoke (the huge request's send)
            ending = f"{UPGRADED_CLOSED} {exc.reason.code}"
        return Outcome(kind, ending, trio.current_time() - connected)

    async def _idle(self, ws: WebSocketConnection, decide: Callable[[], None]) -> str:
        """Hold an admitted connection without a word; the daemon must not close it (nothing bounds an idle one)."""
        self.holding += 1
        decide()
        ending = IDLE
        try:
            async with trio.open_nursery() as nursery:
                if self.release is None:
                    nursery.cancel_scope.deadline = trio.current_time() + self.idle_seconds
                else:
                    nursery.start_soon(_cancel_when_set, self.release, nursery.cancel_scope)
                try:
                    await ws.get_message()
                    ending = "upgraded, answered unasked"
                except ConnectionClosed as exc:
                    ending = f"{UPGRADED_CLOSED} {exc.reason.code}"
                nursery.cancel_scope.cancel()
        finally:
            self.holding -= 1
        return ending


async def _cancel_when_set(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


async def _oversize(ws: WebSocketConnection, size: int, bound: float) -> str:
    """Send one request of exactly ``size`` bytes; the daemon must close the connection (1009: message too big)."""
    envelope = len(json.dumps({"op": "status", "pad": ""}))
    request = json.dumps({"op": "status", "pad": "x" * max(0, size - envelope)})
    with trio.move_on_after(bound):
        try:
            await ws.send_message(request)
            answer = await ws.get_message()
        except ConnectionClosed as exc:
            return f"{UPGRADED_CLOSED} {exc.reason.code}"
        return f"upgraded, answered ({len(answer)} bytes)"
    return HELD


async def _speak(stream: trio.SocketStream, payload: bytes, slow: bool) -> None:
    try:
        if not slow:
            if payload:
                await stream.send_all(payload)
            return
        for offset in range(len(payload)):
            await stream.send_all(payload[offset : offset + 1])
            await trio.sleep(DRIBBLE_INTERVAL)
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass  # the daemon closed it: the reader sees that too


def _mesh_ending(received: bytes) -> str:
    if not received:
        return UNHEARD
    decoder = FrameDecoder()
    frames = []
    try:
        decoder.receive_data(received)
        while (frame := decoder.next_frame()) is not None:
            frames.append(frame)
    except MeshdError as exc:
        return f"unreadable frames from the daemon ({exc})"
    challenged = bool(frames) and isinstance(frames[0], Challenge)
    refusals = [frame for frame in frames if isinstance(frame, Refuse)]
    if refusals:
        reason = refusals[0].reason.name.lower()
        return f"{REFUSED} {reason}" if challenged else f"{', '.join(_names(frames[:-1]))}, refused {reason}"
    if challenged and len(frames) == 1:
        return SPOKE
    return "spoke " + ", ".join(_names(frames))


def _names(frames: Sequence[object]) -> list[str]:
    return [type(frame).__name__.lower() for frame in frames]


def _admin_ending(received: bytes) -> str:
    if not received:
        return UNHEARD
    line = received.split(b"\r\n", 1)[0].decode(errors="replace")
    parts = line.split()
    if len(parts) >= 2 and parts[0].startswith("HTTP/"):
        return f"{HTTP} {parts[1]}"
    return f"answered {line[:40]!r}"


def _why(exc: BaseException) -> str:
    if isinstance(exc, trio.TooSlowError):
        return f"no connection within {CONNECT_TIMEOUT:g} s"
    return type(exc).__name__ if not isinstance(exc, OSError) or not exc.strerror else exc.strerror
