"""The mesh port's accept side: each inbound connection gets its handshake (with a worker, a data connection its
own), within the bound on strangers' handshakes in progress.

The connections already waiting in the accept queue when the daemon begins to serve (peers that dialed its early
listening port: ``meshd run`` listens before it loads) are served before the links first dial, so that a peer that
dialed first is not dialed back: one handshake per such pair, not two crossed ones (docs/design.md R3).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import trio

from meshd.connection import ExchangeResult, LinkFailure, exchange_hellos
from meshd.core.address import Address
from meshd.core.hello import Outcome
from meshd.core.mesh import Concluded, MeshModel
from meshd.core.status import EndCause
from meshd.data import DataPlane, FirstFrame, receive_first_frame
from meshd.gate import Gate
from meshd.link import why_no_link
from meshd.net import queued

# How long the accept loop pauses after the kernel refuses to hand over a connection (e.g. EMFILE).
ACCEPT_ERROR_PAUSE = 0.1

Listeners = Sequence[trio.abc.Listener[trio.abc.Stream]]


class Inbound(Protocol):
    """What the accept side asks of its daemon: the model that judges hellos, the keys and bounds on strangers, the
    data plane (with a worker), and the settling of a finished exchange."""

    model: MeshModel
    gate: Gate
    data: DataPlane | None

    async def settle(self, result: ExchangeResult, dialer: int) -> Concluded: ...


class Acceptor:
    def __init__(self, daemon: Inbound, handshake_timeout: float) -> None:
        self._daemon = daemon
        self._timeout = handshake_timeout
        self._scope = trio.CancelScope()
        self._unclaimed = 0  # connections that waited in the queue at the start, not accepted yet
        self._unserved = 0  # the same, not concluded yet (accepted or not)
        self._backlog_served = trio.Event()

    def count_backlog(self, listeners: Listeners) -> None:
        """Note the connections waiting in the accept queue now, as the daemon begins to serve."""
        self._unclaimed = self._unserved = sum(queued(listener) for listener in listeners)
        if not self._unserved:
            self._backlog_served.set()

    async def first_dial(self) -> None:
        """Until the links may dial: the connections that waited in the accept queue are served (each within a
        handshake timeout, and the wait is bounded by one too), so a peer that dialed first is not dialed back."""
        if not self._backlog_served.is_set():
            with trio.move_on_after(self._timeout):
                await self._backlog_served.wait()

    def stop(self) -> None:
        """Accept no more (an orderly stop)."""
        self._scope.cancel()

    async def run(self, listeners: Listeners) -> None:
        with self._scope:
            async with trio.open_nursery() as nursery:
                for listener in listeners:
                    nursery.start_soon(self._accept_loop, listener)

    async def _accept_loop(self, listener: trio.abc.Listener[trio.abc.Stream]) -> None:
        """Accept connections; beyond ``limits.pending_handshakes`` in progress, close new ones unheard (a flood of
        strangers holds a bounded share of the daemon, and the links that are up never wait for it)."""
        gate = self._daemon.gate
        async with listener, trio.open_nursery() as nursery:
            while True:
                try:
                    stream = await listener.accept()
                except OSError as exc:  # out of file descriptors and the like: pause, keep serving
                    gate.inbound_refused(f"accept failed: {exc.strerror or exc}")
                    await trio.sleep(ACCEPT_ERROR_PAUSE)
                    continue
                waiting = self._unclaimed > 0  # accepted in order: the queue's first are those that waited
                if waiting:
                    self._unclaimed -= 1
                if not gate.admit():
                    await trio.aclose_forcefully(stream)
                    self._served(waiting)
                    continue
                nursery.start_soon(self._serve, stream, waiting)

    def _served(self, waiting: bool) -> None:
        if waiting:
            self._unserved -= 1
            if not self._unserved:
                self._backlog_served.set()

    async def _serve(self, stream: trio.abc.Stream, waiting: bool) -> None:
        try:
            await self._handshake(stream)
        finally:
            self._served(waiting)

    async def _handshake(self, stream: trio.abc.Stream) -> None:
        """Run the handshake on one inbound connection and settle it; garbage is closed and disturbs nothing.

        With a worker, the first frame is read first, exactly: a DATA hello (or, with a secret, a data connection's
        CHALLENGE) makes it a data connection, whose bytes after its handshake belong to the worker."""
        daemon, gate, timeout = self._daemon, self._daemon.gate, self._timeout
        remote = _remote(stream)
        first = FirstFrame(b"", None)
        try:
            if daemon.data is not None:
                with trio.fail_after(timeout):
                    first = await receive_first_frame(stream)
            if daemon.data is not None and first.data:
                await daemon.data.accept(stream, first.frame, remote)
                return
            auth = gate.authenticator(dialer=False, data=False)
            result = await exchange_hellos(stream, daemon.model, None, timeout, first.read, auth)
        except trio.TooSlowError:
            await stream.aclose()
            gate.inbound_refused(f"no frame within {timeout}s", remote)
            return
        except LinkFailure as exc:
            await stream.aclose()
            if exc.end.cause is EndCause.UNAUTHENTICATED:
                gate.auth_failed(remote, exc.end.detail)
            else:
                gate.inbound_refused(exc.end, remote)
            return
        finally:
            gate.done()
        concluded = await daemon.settle(result, dialer=result.exchange.peer)
        if concluded.outcome is Outcome.NOTHING:
            gate.inbound_refused(why_no_link(result), remote)


def _remote(stream: trio.abc.Stream) -> str:
    """The peer's address of an accepted connection, for logs ("?" over a transport without one)."""
    try:
        host, port = stream.socket.getpeername()[:2]  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError, TypeError):
        return "?"
    return str(Address(host, port))
