"""The Prometheus metrics of one daemon, in a registry of its own (never prometheus_client's global one).

Two sources, no I/O of its own:
- the mesh events, fed one by one to ``observe`` (an observer of the daemon's bus: synchronous, in order, never cut
  off like a slow watcher) and the failed dial attempts to ``attempt_failed``: the counters and the recovery
  histogram;
- the daemon's status, read at each scrape: the state, the epoch, the links, and the counters the status already
  holds (auth failures, shed handshakes, rejected admin clients, generation changes).

Labelled counters show every label value of their enum from the start (at 0), so that a rate is defined before the
first failure. ``render`` is the text format, ``exposition`` what a scraper asks for; ``meshd.http`` serves it.

Recovery (``meshd_recovery_seconds``): a clock starts at the process's start (``--epoch await``: at the controller's
start op) or at the first disturbance of a ready mesh (a link lost while ready, the ready state left, a generation
move), and stops at the next ``ready``: one observation per episode of unavailability, labelled ``after="start"`` or
``after="fault"``. A further fault before the mesh is ready again belongs to the same episode.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from attrs import define, field
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from meshd import __version__
from meshd.core.status import (
    EndCause,
    Fenced,
    GenerationMoved,
    LinkDown,
    LinkEnd,
    MeshEvent,
    MeshState,
    PeerRestarted,
    PeerState,
    StateChanged,
    Status,
    WorkerExited,
    WorkerStarted,
    WorkerState,
    refused_json,
)
from meshd.core.wire import RefuseReason

# Upper bounds (seconds) of the recovery histogram's buckets: a loopback mesh forms in milliseconds, a kill -9 with
# fenced survivors takes a second or two, a mesh waiting for a slow restart much longer.
RECOVERY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class After(enum.StrEnum):
    """What a recovery observation is measured from (its ``after`` label)."""

    START = "start"  # the process's start (``--epoch await``: the controller's start op): formation
    FAULT = "fault"  # the first disturbance of a ready mesh: recovery


class WorkerOutcome(enum.StrEnum):
    """How a worker ended (the ``outcome`` label of ``meshd_worker_exits_total``)."""

    DONE = "done"  # it exited 0 by itself: its job is done
    FAILED = "failed"  # it exited otherwise by itself (a code, a signal, an attached one that left without a code)
    STOPPED = "stopped"  # the daemon stopped it: its generation ended, or the daemon stops


@define
class Histogram:
    """Plain bucket counts (not cumulative) over fixed upper bounds, the overflow in the last slot."""

    bounds: tuple[float, ...]
    counts: list[int] = field()
    total: float = 0.0

    @counts.default
    def _zeros(self) -> list[int]:
        return [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        slot = next((i for i, bound in enumerate(self.bounds) if value <= bound), len(self.bounds))
        self.counts[slot] += 1
        self.total += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def buckets(self) -> list[tuple[str, float]]:
        """Cumulative ``(le, count)`` pairs, ``+Inf`` last, as the text format has them."""
        pairs, running = [], 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            pairs.append((floatToGoString(bound), float(running)))
        return pairs


class MeshMetrics:
    """One daemon's metrics. ``status`` returns the daemon's status object (its JSON form, as the admin ``status``
    op answers); ``worker`` tells whether a worker is configured (``/readyz`` then waits for it to run)."""

    def __init__(
        self, status: Callable[[], dict[str, Any]], *, worker: bool, restarts: int = 0, version: str = __version__
    ) -> None:
        self._status = status
        self.worker = worker
        self.restarts = restarts  # in-place restarts of this process before this image (``--on-fence restart``)
        self.version = version
        first = self.status()
        self._state = first.state
        # (since, after) while the mesh is not ready; None while it is (or, awaiting, before the start op).
        self._clock: tuple[float, After] | None = None
        if first.state is not MeshState.AWAITING:
            self._clock = (first.started, After.START)
        self.link_failures: Counter[EndCause] = Counter()
        self.attempt_failures: Counter[EndCause] = Counter()
        self.refusals: Counter[RefuseReason] = Counter()
        self.fences = 0
        self.peer_restarts = 0
        self.worker_starts = 0
        self.worker_exits: Counter[WorkerOutcome] = Counter()
        self._http_rejected = 0
        self.recovery = {after: Histogram(RECOVERY_BUCKETS) for after in After}
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def status(self) -> Status:
        return Status.from_json(self._status())

    # ----- what happens

    def observe(self, event: MeshEvent) -> None:
        """One mesh event, in the order the daemon published them."""
        match event:
            case LinkDown(cause=cause, refused=refused, time=now):
                self.link_failures[cause] += 1
                if refused is not None:
                    self.refusals[refused] += 1
                if self._state is MeshState.READY:
                    self._disturbed(now)
            case StateChanged(state=state, time=now):
                previous, self._state = self._state, state
                if state is MeshState.READY:
                    self._recovered(now)
                elif previous is MeshState.READY and state in (MeshState.DEGRADED, MeshState.FORMING):
                    self._disturbed(now)
                elif previous is MeshState.AWAITING and state is MeshState.FORMING:
                    self._clock = (now, After.START)
            case GenerationMoved(time=now):
                self._disturbed(now)
            case Fenced():
                self._state = MeshState.FENCED
                self.fences += 1
            case PeerRestarted():
                self.peer_restarts += 1
            case WorkerStarted():
                self.worker_starts += 1
            case WorkerExited(exit=code):
                self.worker_exits[self._outcome(code)] += 1

    def attempt_failed(self, end: LinkEnd) -> None:
        """A dial (and its handshake) toward a peer that made no link."""
        self.attempt_failures[end.cause] += 1
        if end.refused is not None:
            self.refusals[end.refused] += 1

    def http_rejected(self) -> None:
        """An HTTP connection closed unheard: the endpoint held its limit of clients."""
        self._http_rejected += 1

    def _disturbed(self, now: float) -> None:
        if self._clock is None:
            self._clock = (now, After.FAULT)

    def _recovered(self, now: float) -> None:
        if self._clock is not None:
            since, after = self._clock
            self.recovery[after].observe(max(0.0, now - since))
        self._clock = None

    def _outcome(self, code: int | None) -> WorkerOutcome:
        if self._state in (MeshState.STOPPING, MeshState.FENCED):
            return WorkerOutcome.STOPPED
        return WorkerOutcome.DONE if code == 0 else WorkerOutcome.FAILED

    # ----- the text format

    def render(self) -> bytes:
        """The text format (version 0.0.4, what every Prometheus reads)."""
        return generate_latest(self.registry)

    def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """The body and its content type for a scraper's ``Accept`` header, negotiated as prometheus_client's own
        servers do: OpenMetrics when it is asked for, else the text format."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type

    def collect(self) -> Iterator[Metric]:
        """The metric families (prometheus_client's collector interface): the status now, the counts so far."""
        status = self.status()
        yield _gauge(
            "meshd_info",
            "Always 1: who this daemon is (cluster, slot index, epoch mode, meshd version).",
            {(status.cluster, str(status.index), status.mode, self.version): 1},
            ("cluster", "index", "mode", "version"),
        )
        yield _gauge(
            "meshd_mesh_state",
            "1 for the mesh state this daemon is in, 0 for the others.",
            {(state.value,): float(state is status.state) for state in MeshState},
            ("state",),
        )
        epoch = GaugeMetricFamily(
            "meshd_epoch", "The major part of the epoch: fixed epochs the integer, auto mode its milliseconds."
        )
        if status.epoch is not None:  # none while awaiting the controller's start op
            epoch.add_metric((), float(status.epoch.major))
        yield epoch
        yield GaugeMetricFamily("meshd_peers", "Peers in the cluster (its size minus this daemon).", len(status.peers))
        up = sum(peer.state is PeerState.UP for peer in status.peers)
        yield GaugeMetricFamily("meshd_links_up", "Links to peers that are up now.", up)
        yield _counter(
            "meshd_link_failures",
            "Links that went down, by cause (link_down events).",
            {(cause.value,): self.link_failures[cause] for cause in EndCause},
            ("cause",),
        )
        yield _counter(
            "meshd_link_attempt_failures",
            "Dials toward a peer (with their handshake) that made no link, by cause.",
            {(cause.value,): self.attempt_failures[cause] for cause in EndCause},
            ("cause",),
        )
        yield _counter(
            "meshd_refusals",
            "REFUSEs, either way, that ended a link or an attempt at one, by reason.",
            {(refused_json(reason) or "",): self.refusals[reason] for reason in RefuseReason},
            ("reason",),
        )
        yield CounterMetricFamily(
            "meshd_generation_changes", "Generations joined in place (auto mode).", status.generation_changes
        )
        yield CounterMetricFamily(
            "meshd_fences", "Fences of this process (its generation is over: it exits).", self.fences
        )
        yield CounterMetricFamily("meshd_peer_restarts", "Peers seen with a new incarnation.", self.peer_restarts)
        yield CounterMetricFamily(
            "meshd_auth_failures", "Connections refused: their peer proved no key of the secret.", status.auth_failures
        )
        yield CounterMetricFamily(
            "meshd_handshakes_shed",
            "Mesh connections closed unheard: limits.pending_handshakes were in progress.",
            status.handshakes_shed,
        )
        yield CounterMetricFamily(
            "meshd_admin_rejected",
            "Admin websocket connections refused: no or a wrong token, or too many clients.",
            status.admin_rejected,
        )
        yield CounterMetricFamily(
            "meshd_http_rejected", "HTTP connections closed unheard: too many clients at once.", self._http_rejected
        )
        yield from self._worker_families(status)
        recovery = HistogramMetricFamily(
            "meshd_recovery_seconds",
            "Seconds from the start (after=start) or a ready mesh's first disturbance (after=fault) to ready.",
            labels=("after",),
        )
        for after, histogram in self.recovery.items():
            recovery.add_metric((after.value,), histogram.buckets(), histogram.total)
        yield recovery

    def _worker_families(self, status: Status) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "meshd_restarts_in_place",
            "Times this process restarted its daemon in place after a fence (--on-fence restart; same PID, a new "
            "incarnation).",
            self.restarts,
        )
        if not self.worker:
            return
        yield CounterMetricFamily(
            "meshd_worker_restarts",
            "Workers started again by this process's in-place restarts (under --on-fence exit a restart is a new "
            "process: the orchestrator counts it).",
            self.restarts,
        )
        yield _gauge(
            "meshd_worker_state",
            "1 for the worker's state, 0 for the others (all 0 before it starts).",
            {(state.value,): float(state is status.worker.state) for state in WorkerState},
            ("state",),
        )
        yield CounterMetricFamily(
            "meshd_worker_starts",
            "Workers started (at most one per daemon: the next generation's worker runs under a new daemon).",
            self.worker_starts,
        )
        yield _counter(
            "meshd_worker_exits",
            "Workers that ended, by outcome: done (exit 0), failed, stopped (by the daemon).",
            {(outcome.value,): self.worker_exits[outcome] for outcome in WorkerOutcome},
            ("outcome",),
        )


def _gauge(name: str, text: str, values: dict[tuple[str, ...], float], labels: tuple[str, ...]) -> Metric:
    family = GaugeMetricFamily(name, text, labels=labels)
    for key, value in values.items():
        family.add_metric(key, value)
    return family


def _counter(name: str, text: str, values: dict[tuple[str, ...], int], labels: tuple[str, ...]) -> Metric:
    family = CounterMetricFamily(name, text, labels=labels)
    for key, value in values.items():
        family.add_metric(key, value)
    return family
