"""The daemon: the trio shell around the mesh model. It binds the mesh port, runs the accept loop, one PeerLink per
peer and the admin server, feeds every event to the model and applies the effects the model returns.

Task tree (every failure stays inside the smallest box that can hold it)::

    daemon scope (cancelled only here: after a fence, or at the end of an orderly stop)
    ├── accept loop ── one task per inbound connection, each under the handshake timeout (those that were already
    │                  queued at the start are served before the links first dial)
    ├── admin websocket server (optional)
    ├── HTTP endpoint: probes and metrics (optional, ``[http] listen``)
    ├── heartbeat clock: one timer, waking every session's heartbeat sender at each tick
    ├── PeerLink nursery, one per peer ── dial loop, current session (reader + heartbeat sender)
    └── with a worker: the data plane (data connections of the generation) and the worker's supervisor

Supervision: a link failure ends that link's session only; the model decides what it means. The process ends
only on the model's Exit effect: 75 when its generation is over (after watchers took the fenced event, bounded),
0 after an orderly stop (goodbyes bounded by STOP_GRACE), 70 when its worker failed; a worker is stopped (SIGTERM,
``worker.stop_grace``, SIGKILL) and reaped before the process ends.
"""

from __future__ import annotations

import os
import random
import secrets
import signal
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any

import trio
from attrs import evolve, field, frozen
from loguru import logger

from meshd.accept import Acceptor
from meshd.admin.server import serve_admin
from meshd.bus import EventBus
from meshd.config import Config
from meshd.connection import ExchangeResult
from meshd.core import generation
from meshd.core.address import Address
from meshd.core.generation import EpochMode
from meshd.core.hello import Identity
from meshd.core.mesh import Concluded, DropLinks, Effect, Exit, MeshModel, Publish, SendView, StartLinks
from meshd.core.slot import LinkOrigin
from meshd.core.status import (
    EndCause,
    Fenced,
    GenerationMoved,
    LinkDown,
    LinkEnd,
    LinkUp,
    MeshEvent,
    MeshState,
    PeerRestarted,
    PeerState,
    StateChanged,
    WorkerExited,
    WorkerStarted,
)
from meshd.core.wire import Epoch, Goodbye, View
from meshd.data import DataPlane
from meshd.errors import BindError, ExitCode
from meshd.gate import Gate
from meshd.heartbeat import HeartbeatClock
from meshd.link import PeerLink, Session
from meshd.net import Network, TcpNetwork, bind_with_retry
from meshd.notify import Notifier, status_line
from meshd.secret import SecretFile
from meshd.worker.attach import AttachedWorker
from meshd.worker.contract import Facts
from meshd.worker.supervisor import WorkerProcess

if TYPE_CHECKING:
    from loguru import Logger

    from meshd.metrics import MeshMetrics

# The epoch an ``--epoch await`` daemon holds until the controller's start op replaces it; never sent on the wire.
AWAITED_PLACEHOLDER = Epoch(0)
# How long an orderly stop waits for goodbyes to go out before cancelling everything.
STOP_GRACE = 1.0
# After a fence, once every watcher has taken its queued events, how long the process lingers so that the last
# replies and events are written out (only if an admin client or a watcher is there). Nothing can undo a fence in
# that time: the mesh state is final and no link changes it.
FENCE_LINGER = 0.05
# How long a fenced process waits at most for its watchers to take the fenced event.
DRAIN_LIMIT = 1.0


@frozen
class Settings:
    """Everything one daemon needs, after the config file and the command line are merged."""

    config: Config
    index: int
    epoch: Epoch | None  # None with mode "auto" (minted) or "await" (given by the controller's start op)
    admin: Address | None
    mode: EpochMode = field(default=EpochMode.FIXED, converter=EpochMode)
    secret: SecretFile | None = None  # the cluster's keys: every connection authenticates with them
    admin_token: str | None = None  # every admin client presents it
    restarts: int = 0  # in-place restarts of this process before this daemon (``--on-fence restart``)


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
        self._wall_clock = wall_clock
        rng = rng or random.Random()

        def mint(above: Epoch | None) -> Epoch:
            return generation.mint(int(wall_clock() * 1000), rng.randrange(1, 2**64), above)

        auto = settings.mode is EpochMode.AUTO
        me = Identity(
            cluster=config.cluster.name,
            index=settings.index,
            size=config.size,
            epoch=mint(None) if auto else settings.epoch or AWAITED_PLACEHOLDER,
            incarnation=new_incarnation() if incarnation is None else incarnation,
            auto=auto,
        )
        self.model = MeshModel(me, config.cluster.peers, settings.mode, wall_clock(), mint if auto else None)
        self.bus = EventBus()
        self.notifier = Notifier.from_environ(os.environ)  # systemd's Type=notify, when it asked (NOTIFY_SOCKET)
        if self.notifier is not None:
            self.bus.observe(self._tell_systemd)
        self.gate = Gate(settings.secret, config.limits.pending_handshakes, config.cluster.peers, self._logger)
        self.heartbeats = HeartbeatClock(config.timeouts.heartbeat_interval)
        self.links = {
            peer: PeerLink(peer, address, self.net, config.timeouts, self, rng)
            for peer, address in enumerate(config.cluster.peers)
            if peer != settings.index
        }
        self.mesh_address = config.cluster.listen_address(settings.index)
        self.exit_code = ExitCode.OK
        self.fenced_by: Epoch | None = None  # the newer epoch that fenced this process, when one did
        self._began = trio.Event()
        if self.model.began:
            self._began.set()
        self._listeners: Sequence[trio.abc.Listener[trio.abc.Stream]] = ()
        self._admin_listeners: Sequence[trio.abc.Listener[trio.abc.Stream]] = ()
        self._http_listeners: Sequence[trio.abc.Listener[trio.abc.Stream]] = ()
        self.acceptor = Acceptor(self, config.timeouts.handshake)
        self._scope = trio.CancelScope()
        self._nursery: trio.Nursery | None = None
        self._changed = trio.Event()  # set (and replaced) whenever the model or the data plane changed
        self._worker_reported = trio.Event()  # its worker_exited event is published
        worker = config.worker
        self.data = (
            DataPlane(
                lambda: self.me,
                self._data_holder,
                config.cluster.peers,
                self.net,
                config.timeouts,
                rng,
                self._notify,
                self.gate,
            )
            if worker.configured
            else None
        )
        self.worker: WorkerProcess | AttachedWorker | None = None
        if worker.exec is not None:
            self.worker = WorkerProcess(worker.exec, worker.stop_grace)
        elif worker.socket is not None:
            self.worker = AttachedWorker(worker.socket, worker.stop_grace, self._notify)
        self.metrics: MeshMetrics | None = None  # with [http] listen: fed every event, read at each scrape
        if config.http.listen is not None:
            from meshd import metrics  # prometheus_client loads only when the endpoint is configured

            self.metrics = metrics.MeshMetrics(self.status, worker=self.worker is not None, restarts=settings.restarts)
            self.bus.observe(self.metrics.observe)

    @property
    def me(self) -> Identity:
        return self.model.me

    def status(self) -> dict[str, Any]:
        """The object ``meshd status --json`` prints and the admin ``status`` op answers."""
        status = evolve(self.model.status(), **self.gate.counters)
        if self.worker is not None:
            status = evolve(status, worker=self.worker.status)
        return status.to_json()

    def _logger(self) -> Logger:
        return logger.bind(index=self.me.index, epoch=str(self.me.epoch))

    # ----- applying the model's effects -----

    def apply(self, effects: list[Effect]) -> None:
        self._notify()
        for effect in effects:
            match effect:
                case SendView(peers=peers):
                    for peer in peers:
                        self.links[peer].send_view()
                case DropLinks(tokens=tokens, reason=reason):
                    for link in self.links.values():
                        link.generation_changed(tokens, reason)
                case StartLinks():
                    self._began.set()
                case Publish(event=event):
                    if isinstance(event, Fenced):
                        self.fenced_by = event.newer
                    self._log(event)
                    self._tell_data_plane(event)
                    self.bus.publish(event)
                case Exit(code=ExitCode.FENCED):
                    self._end_worker()
                    self.exit_code = ExitCode.FENCED
                    if self._nursery is not None:
                        self._nursery.start_soon(self._exit_after_watchers_drained)
                    else:
                        self._scope.cancel()
                case Exit(code=code):
                    self._end_worker()
                    self.exit_code = code

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _tell_data_plane(self, event: MeshEvent) -> None:
        match event:
            case LinkUp(peer=peer) if self.data is not None:
                incarnation = self.model.rows[peer].incarnation
                if incarnation is not None:
                    self.data.link_up(peer, incarnation)
            case GenerationMoved() if self.data is not None:
                self.data.generation_changed()

    def _data_holder(self, peer: int) -> int | None:
        """The incarnation our up control link holds in ``peer``'s slot: the only one a data connection may join."""
        row = self.model.rows.get(peer)
        return row.incarnation if row is not None and row.state is PeerState.UP else None

    def _end_worker(self) -> None:
        """The daemon leaves its generation: the worker is told at once (SIGTERM), and reaped before the exit."""
        if self.worker is not None:
            self.worker.terminate(self.model.exit_reason or "the daemon leaves its generation")

    async def _supervise_worker(self) -> None:
        """Start the worker once the mesh is ready, final and every data connection verified; follow its end."""
        assert self.worker is not None and self.data is not None
        while not (
            self.model.state is MeshState.READY and self.model.final and self.data.complete and self.worker.present
        ):
            await self._changed.wait()
        epoch, me = self.me.epoch, self.me
        facts = Facts(
            index=me.index,
            size=me.size,
            cluster=me.cluster,
            epoch=str(epoch),
            incarnation=me.incarnation,
            peers=tuple(str(address) for address in self.settings.config.cluster.peers),
            admin=None if self.settings.admin is None else str(self.settings.admin),
        )
        await self.worker.start(self.data.hand_over(), facts, epoch, self._now())
        self._publish(WorkerStarted(time=self._now(), index=me.index, pid=self.worker.pid, epoch=epoch))
        code = await self.worker.wait()
        if self.model.exit is not None:
            reason = f"stopped: {self.model.exit_reason}"
        elif code == 0:
            reason = "its job is done"
        elif code is None:
            reason = "it closed its connection without an exit code (it failed)"
        else:
            reason = f"it failed with exit {code}" if code > 0 else f"it was killed by signal {-code}"
        self._publish(
            WorkerExited(time=self._now(), index=me.index, pid=self.worker.pid, epoch=epoch, exit=code, reason=reason)
        )
        self._worker_reported.set()
        if self.model.exit is None:
            await self.stop(f"the worker exited: {reason}", ExitCode.OK if code == 0 else ExitCode.WORKER_FAILED)

    def _publish(self, event: MeshEvent) -> None:
        self._log(event)
        self.bus.publish(event)

    def _tell_systemd(self, _: MeshEvent | None = None) -> None:
        """``STATUS=`` for systemd: the mesh as it is after each event (an observer of the bus: in order, never cut
        off like a slow watcher; the notifier sends only a changed line)."""
        if self.notifier is not None:
            up = sum(row.state is PeerState.UP for row in self.model.rows.values())
            self.notifier.status(status_line(self.model.state, self.me.epoch, up, len(self.model.rows)))

    def _log(self, event: MeshEvent) -> None:
        log = logger.bind(index=self.me.index, epoch=str(self.me.epoch))
        match event:
            case LinkUp(peer=peer, direction=direction, epoch=epoch):
                log.info("link {} up ({}, epoch {})", peer, direction, epoch)
            case LinkDown(peer=peer, reason=reason):
                log.warning("link {} down: {}", peer, reason)
            case PeerRestarted(peer=peer, incarnation=incarnation):
                log.info("peer {} restarted (incarnation {:016x})", peer, incarnation)
            case GenerationMoved(epoch=epoch, reason=reason):
                log.info("moved to generation {}: {}", epoch, reason)
            case StateChanged(state=state, reason=reason):
                log.info("mesh {} ({})", state, reason)
            case WorkerStarted(pid=pid, epoch=epoch):
                log.info("{} started with the data sockets of generation {}", _worker_name(pid), epoch)
            case WorkerExited(pid=pid, exit=code, reason=reason):
                log.log("INFO" if code == 0 else "ERROR", "{} exited: {}", _worker_name(pid), reason)
            case Fenced(reason=reason, newer=newer, cause=cause):
                fields = {"newer": None if newer is None else newer.to_json(), "cause": cause}
                log.bind(**fields).error("fenced: {}; exiting with {}", reason, int(ExitCode.FENCED))

    def _now(self) -> float:
        return self._wall_clock()

    # ----- what the links and the admin server report -----

    async def settle(self, result: ExchangeResult, dialer: int) -> Concluded:
        """Conclude a finished exchange: install the connection as the link, or close it, and apply the effects."""
        peer = result.exchange.peer
        session = Session(result.conn, LinkOrigin(dialer, result.exchange.hello.incarnation))
        concluded = self.model.conclude(result.exchange, result.answer, session, dialer, self._now())
        decision = concluded.decision
        link = self.links.get(peer)
        if decision is not None and decision.install and link is not None:
            link.start(session, replaced=decision.fail)  # before the effects: they may send our view on it
            if isinstance(decision.linger, Session):
                link.linger(decision.linger)
        self.apply(concluded.effects)
        if decision is not None and not decision.install and link is not None:
            if decision.linger is session:
                link.linger(session)
            else:
                await result.conn.part(decision.part or Goodbye("not linked"))
        elif not concluded.linked:
            await result.conn.aclose()
        return concluded

    def link_ended(self, peer: int, session: Session, end: LinkEnd) -> None:
        self.apply(self.model.link_ended(peer, session, end, self._now()))

    def view_received(self, peer: int, session: Session, view: View) -> None:
        self.apply(self.model.view_received(peer, session, view, self._now()))

    def attempt_failed(self, peer: int, end: LinkEnd) -> None:
        if end.cause is EndCause.UNAUTHENTICATED:
            self.gate.auth_failed(str(self.settings.config.cluster.peers[peer]), end.detail)
        if self.metrics is not None:
            self.metrics.attempt_failed(end)
        if self.model.attempt_failed(peer, end):
            logger.bind(index=self.me.index, epoch=str(self.me.epoch)).debug("peer {}: {}", peer, end)

    def request_start(self, epoch: Epoch) -> dict[str, Any]:
        """The controller's ``start`` op (``--epoch await``): the answer to send back."""
        answer, effects = self.model.request_start(epoch, self._now())
        self.apply(effects)
        return answer.to_json()

    # ----- the process -----

    async def bind(self) -> None:
        """Bind the mesh port, then the admin port and the HTTP endpoint, each retried for ``timeouts.bind``;
        BindError if one stays busy."""
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
        http = self.settings.config.http.listen
        if http is not None:
            try:
                self._http_listeners = await bind_with_retry(self.net, http, timeouts.bind, "HTTP endpoint")
            except BindError:
                for listener in (*listeners, *self._admin_listeners):
                    await listener.aclose()
                raise
        self._listeners = listeners

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> int:
        """Run until fenced (returns 75) or stopped (returns 0); ``task_status`` reports when the mesh port listens."""
        if not self._listeners:
            await self.bind()
        with self._scope:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self.gate.warn_if_insecure()
                if self._admin_listeners:
                    await nursery.start(
                        serve_admin,
                        self._admin_listeners,
                        self,
                        self.settings.admin_token,
                        self.settings.config.limits,
                    )
                if self._http_listeners and self.metrics is not None:
                    from meshd.http import serve_http  # h11: only with [http] listen

                    await nursery.start(serve_http, self._http_listeners, self.metrics)
                if self.notifier is not None:  # the mesh port listens: the unit is started (the mesh forms next)
                    self.notifier.ready()
                    self._tell_systemd()
                    nursery.start_soon(self.notifier.keep_alive)
                task_status.started()
                await self._began.wait()
                if self.data is not None:
                    await nursery.start(self.data.run)
                if isinstance(self.worker, AttachedWorker):
                    await nursery.start(self.worker.serve)
                if self.worker is not None:
                    nursery.start_soon(self._supervise_worker)
                nursery.start_soon(self.heartbeats.run)
                self.acceptor.count_backlog(self._listeners)
                for link in self.links.values():
                    await nursery.start(link.run)
                nursery.start_soon(self.acceptor.run, self._listeners)
        with trio.CancelScope(shield=True):
            if self.worker is not None:
                await self.worker.stop(self.model.exit_reason or "the daemon ends")
            if self.data is not None:
                self.data.close()
        if self.notifier is not None:
            self.notifier.close()
        return int(self.exit_code)

    async def stop(self, reason: str, code: ExitCode = ExitCode.OK) -> None:
        """Orderly stop: accept and dial no more, tell every peer goodbye (bounded by STOP_GRACE), cancel the rest.
        ``code`` is the exit code: 0, or 70 when the worker failed."""
        if self.notifier is not None:
            self.notifier.stopping()
        self.apply(self.model.stop(reason, self._now(), code))
        self.acceptor.stop()
        with trio.move_on_after(STOP_GRACE):
            async with trio.open_nursery() as nursery:
                for link in self.links.values():
                    nursery.start_soon(link.close, reason)
        await self._leave()
        self._scope.cancel()

    async def _exit_after_watchers_drained(self) -> None:
        """The end of a fence: the worker stopped, watchers took the "fenced" event (bounded), and if an admin client
        or a watcher is there, a moment's linger for the last replies and events (else the restart is not kept
        waiting)."""
        heard = self.bus.watching or self.gate.admin_clients > 0
        await self._leave()
        if heard:
            await trio.sleep(FENCE_LINGER)
        self._scope.cancel()

    async def _leave(self) -> None:
        """Before the process ends: its worker stopped, reaped and reported, then the watchers drained (bounded)."""
        if self.worker is not None and self.worker.status.state is not None:
            await self.worker.stop(self.model.exit_reason or "the daemon ends")
            with trio.move_on_after(DRAIN_LIMIT):
                await self._worker_reported.wait()
        with trio.move_on_after(DRAIN_LIMIT):
            await self.bus.drained()
        self.bus.close()
        with trio.move_on_after(DRAIN_LIMIT):
            await self.bus.finished()

    async def first_dial(self) -> None:
        """Until the links may dial: the connections queued at the start are served first (``meshd.accept``)."""
        await self.acceptor.first_dial()


def _worker_name(pid: int | None) -> str:
    return "the attached worker" if pid is None else f"worker (pid {pid})"


@frozen
class Ending:
    """How a daemon ended: its exit code, and the newer epoch that fenced it (when one did), which an in-place
    restart (``daemon.on_fence = "restart"``) runs next with fixed epochs."""

    code: int
    fenced_by: Epoch | None = None


async def serve(settings: Settings, net: Network | None = None, early_signals: Sequence[int] = ()) -> Ending:
    """Run a daemon as a process: SIGTERM and SIGINT stop it in order, also while it still waits for a busy port
    (nothing is bound then and there is no mesh to leave). Returns how it ended: a port that stays busy is logged and
    ends it with 1.

    ``early_signals`` are those that arrived before trio ran (``meshd run`` notes them from its first instant, as it
    listens before it loads trio): the first of them stops the daemon as soon as it runs.
    """
    daemon = Daemon(settings, net)
    binding = trio.CancelScope()

    async def stop_on_signal(signals: AsyncIterator[int]) -> None:
        signum = early_signals[0] if early_signals else await anext(signals)
        binding.cancel()
        await daemon.stop(f"received {signal.Signals(signum).name}")

    async def bind_and_run() -> int:
        with binding:
            try:
                await daemon.bind()
            except BindError as exc:
                logger.bind(index=settings.index, epoch=str(settings.epoch or settings.mode)).error("{}", exc)
                return int(ExitCode.FAILURE)
        if binding.cancelled_caught:
            return int(daemon.exit_code)
        return await daemon.run()

    async def reload_on_hangup(signals: AsyncIterator[int]) -> None:
        async for _ in signals:
            daemon.gate.reload()

    with (
        trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals,
        trio.open_signal_receiver(signal.SIGHUP) as hangups,
    ):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stop_on_signal, signals)
            nursery.start_soon(reload_on_hangup, hangups)
            code = await bind_and_run()
            nursery.cancel_scope.cancel()
    return Ending(code, daemon.fenced_by if code == ExitCode.FENCED else None)
