"""The daemon: binds the mesh port, runs the accept loop, one PeerLink per peer and the admin server.

Task tree (every failure stays inside the smallest box that can hold it)::

    daemon scope (cancelled only by the supervisor: fence or stop)
    ├── accept loop ── one task per inbound connection, each under the handshake timeout
    ├── admin websocket server (optional)
    └── PeerLink nursery, one per peer ── dial loop, current session (reader + heartbeat sender)
"""

from __future__ import annotations

import random
import secrets
import signal
import time
from collections.abc import Callable, Sequence

import trio
from attrs import evolve, frozen
from loguru import logger

from meshd.admin import serve_admin
from meshd.config import Config
from meshd.connection import handshake
from meshd.core import generation
from meshd.core.address import Address
from meshd.core.wire import Epoch
from meshd.errors import BindError, Fenced, LinkFailure, NewerGeneration
from meshd.handshake import Identity
from meshd.link import PeerLink
from meshd.net import Network, TcpNetwork, bind_with_retry
from meshd.supervisor import Supervisor

# The epoch an ``--epoch await`` daemon holds until the controller's start op replaces it; never sent on the wire.
AWAITED_PLACEHOLDER = Epoch(0)
# How long an orderly stop waits for goodbyes to go out before cancelling everything.
STOP_GRACE = 1.0
# How long the accept loop pauses after the kernel refuses to hand over a connection (e.g. EMFILE).
ACCEPT_ERROR_PAUSE = 0.1


@frozen
class Settings:
    """Everything one daemon needs, after the config file and the command line are merged."""

    config: Config
    index: int
    epoch: Epoch | None  # None with mode "auto" (minted) or "await" (given by the controller's start op)
    admin: Address | None
    mode: str = "fixed"  # "fixed" (--epoch E), "auto" or "await"


def new_incarnation() -> int:
    """A random id minted at process start: tells a restarted peer from a reconnect of the same process."""
    return secrets.randbits(64)


class Daemon:
    def __init__(
        self,
        settings: Settings,
        net: Network | None = None,
        incarnation: int | None = None,
        rng: random.Random | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        config = settings.config
        self.settings = settings
        self.net: Network = net or TcpNetwork()
        rng = rng or random.Random()

        def mint_generation(above: Epoch | None) -> Epoch:
            return generation.mint(int(wall_clock() * 1000), rng.randrange(1, 2**64), above)

        auto = settings.mode == "auto"
        epoch = mint_generation(None) if auto else settings.epoch or AWAITED_PLACEHOLDER
        me = Identity(
            cluster=config.cluster.name,
            index=settings.index,
            size=config.size,
            epoch=epoch,
            incarnation=new_incarnation() if incarnation is None else incarnation,
            auto=auto,
        )
        if auto:
            me = evolve(me, members=tuple(me.incarnation if slot == me.index else 0 for slot in range(me.size)))
        self.supervisor = Supervisor(
            me, config.cluster.peers, wall_clock, mint_generation if auto else None, settings.mode
        )
        self.links = {
            peer: PeerLink(peer, address, self.net, config.timeouts, self.supervisor, rng)
            for peer, address in enumerate(config.cluster.peers)
            if peer != settings.index
        }
        self.supervisor.on_view_change = self._send_views
        self.supervisor.on_view_needed = lambda peer: self.links[peer].send_view()
        self.supervisor.on_generation_change = self._drop_links
        self.mesh_address = config.cluster.peers[settings.index]
        self._listeners: Sequence[trio.abc.Listener[trio.abc.Stream]] = ()
        self._admin_listeners: Sequence[trio.abc.Listener[trio.abc.Stream]] = ()
        self._accepting = trio.CancelScope()

    @property
    def me(self) -> Identity:
        return self.supervisor.me

    def _send_views(self) -> None:
        for link in self.links.values():
            link.send_view()

    def _drop_links(self, reason: str) -> None:
        for link in self.links.values():
            link.drop(reason)

    async def bind(self) -> None:
        """Bind the mesh port, then the admin port, each retried for ``timeouts.bind``; BindError if one stays busy."""
        timeouts = self.settings.config.timeouts
        listeners = await bind_with_retry(self.net, self.mesh_address, timeouts.bind, "mesh port")
        logger.bind(index=self.me.index, epoch=str(self.me.epoch)).info(
            "listening on {} as index {} of {} in cluster {!r}, epoch {}, incarnation {:016x}",
            self.mesh_address,
            self.me.index,
            self.me.size,
            self.me.cluster,
            self.me.epoch,
            self.me.incarnation,
        )
        if self.settings.admin is not None:
            try:
                self._admin_listeners = await bind_with_retry(
                    self.net, self.settings.admin, timeouts.bind, "admin websocket"
                )
            except BindError:
                for listener in listeners:
                    await listener.aclose()
                raise
        self._listeners = listeners

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> int:
        """Run until fenced (returns 75) or stopped (returns 0); ``task_status`` reports when the mesh port listens."""
        if not self._listeners:
            await self.bind()
        with trio.CancelScope() as scope:
            self.supervisor.attach(scope)
            async with trio.open_nursery() as nursery:
                self.supervisor.on_fence = lambda: nursery.start_soon(self.supervisor.exit_after_watchers_drained)
                if self._admin_listeners:
                    await nursery.start(serve_admin, self._admin_listeners, self.supervisor)
                task_status.started()
                await self.supervisor.began.wait()
                for link in self.links.values():
                    await nursery.start(link.run)
                nursery.start_soon(self._accept_all, self._listeners)
        return self.supervisor.exit_code

    async def stop(self, reason: str) -> None:
        """Orderly stop: accept and dial no more, tell every peer goodbye (bounded by STOP_GRACE), cancel the rest."""
        self.supervisor.stop(reason)
        self._accepting.cancel()
        with trio.move_on_after(STOP_GRACE):
            async with trio.open_nursery() as nursery:
                for link in self.links.values():
                    nursery.start_soon(link.close, reason)
        self.supervisor.cancel()

    async def _accept_all(self, listeners: Sequence[trio.abc.Listener[trio.abc.Stream]]) -> None:
        with self._accepting:
            async with trio.open_nursery() as nursery:
                for listener in listeners:
                    nursery.start_soon(self._accept_loop, listener)

    async def _accept_loop(self, listener: trio.abc.Listener[trio.abc.Stream]) -> None:
        async with listener, trio.open_nursery() as nursery:
            while True:
                try:
                    stream = await listener.accept()
                except OSError as exc:  # out of file descriptors and the like: pause, keep serving
                    self.supervisor.inbound_refused(f"accept failed: {exc.strerror or exc}")
                    await trio.sleep(ACCEPT_ERROR_PAUSE)
                    continue
                nursery.start_soon(self._handle_inbound, stream)

    async def _handle_inbound(self, stream: trio.abc.Stream) -> None:
        """Handshake one inbound connection and hand it to its peer's link; garbage is closed and disturbs nothing."""
        try:
            timeout = self.settings.config.timeouts.handshake
            conn, hello = await handshake(stream, self.me, None, timeout, self.supervisor.holders())
        except LinkFailure as exc:
            self.supervisor.inbound_refused(exc.reason)
            return
        except (Fenced, NewerGeneration) as exc:
            self.supervisor.newer_epoch_seen(exc)
            return
        refusal = self.links[hello.sender].offer(conn, hello, dialer=hello.sender)
        if refusal is not None:
            await conn.part(refusal)


async def serve(settings: Settings) -> int:
    """Run a daemon as a process: SIGTERM and SIGINT stop it in order. Returns the exit code."""
    daemon = Daemon(settings)

    async def stop_on_signal(signals: trio.abc.ReceiveChannel[int]) -> None:
        async for signum in signals:
            await daemon.stop(f"received {signal.Signals(signum).name}")
            return

    await daemon.bind()
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stop_on_signal, signals)
            code = await daemon.run()
            nursery.cancel_scope.cancel()
    return code
