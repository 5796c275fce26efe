"""What a mesh reports: its states, its peer rows, the status object and the events, as typed values.

The admin websocket, the CLI, the cluster harness and the safety checker all read these types (``to_json`` gives
the documented JSON, ``from_json`` reads it back), so no tool parses a sentence to learn a fact.
"""

from __future__ import annotations

import enum
from typing import Any, ClassVar

import attrs
from attrs import define, frozen

from meshd.core.address import Address
from meshd.core.wire import Epoch, RefuseReason


class MeshState(enum.StrEnum):
    AWAITING = "awaiting"  # ``--epoch await``: no epoch yet, waiting for a controller's start op
    FORMING = "forming"  # not every link has been up with agreeing views yet
    READY = "ready"  # every link is up and every peer reported the same view of the mesh
    DEGRADED = "degraded"  # the mesh was ready and a link is down (here, or at a peer that told us)
    STOPPING = "stopping"  # a stop was requested; links are closing
    FENCED = "fenced"  # this process's generation is over; it is exiting with 75


class PeerState(enum.StrEnum):
    DOWN = "down"  # no link; the dial loop is retrying and inbound connections are welcome
    UP = "up"  # linked, with heartbeats flowing


def epoch_json(epoch: Epoch | None) -> int | str | None:
    return None if epoch is None else epoch.to_json()


def epoch_from_json(value: int | str | None) -> Epoch | None:
    """The inverse of ``Epoch.to_json``: an integer epoch, or ``"<major>.<minor hex>"``."""
    if value is None:
        return None
    if isinstance(value, int):
        return Epoch(value)
    major, _, minor = value.partition(".")
    return Epoch(int(major), int(minor, 16))


def _json(value: Any) -> Any:
    if isinstance(value, Epoch):
        return value.to_json()
    if isinstance(value, RefuseReason):
        return refused_json(value)
    if isinstance(value, enum.Enum):
        return value.value
    return value


class EndCause(enum.StrEnum):
    """Why a link, or an attempt at one, ended: the fact behind the text of ``last_error`` and ``link_down``."""

    GOODBYE = "goodbye"  # the peer stopped in order (its GOODBYE)
    REFUSED = "refused"  # a REFUSE, either way (``refused`` names the RefuseReason)
    SILENCE = "silence"  # no frame for heartbeat_timeout
    CLOSED = "closed"  # the connection closed or broke
    PROTOCOL = "protocol"  # a frame that breaks the protocol, or no hello within the handshake timeout
    UNREACHABLE = "unreachable"  # the connect failed or timed out
    NO_ANSWER = "no_answer"  # the peer never answered our hello
    LOCAL = "local"  # this process ended it: a newer connection, a tie-break, a generation move
    UNAUTHENTICATED = "unauthenticated"  # the peer proved no key of the cluster's secret: we refused it AUTH_FAILED


@frozen
class LinkEnd:
    """How a link or an attempt ended, typed: ``detail`` is the sentence for people, the rest are the facts."""

    cause: EndCause
    detail: str
    refused: RefuseReason | None = None

    def __str__(self) -> str:
        return self.detail


def refused_json(reason: RefuseReason | None) -> str | None:
    """A RefuseReason as the JSON names it (``stale_epoch``); None stays None."""
    return None if reason is None else reason.name.lower()


def refused_from_json(text: str | None) -> RefuseReason | None:
    return None if text is None else RefuseReason[text.upper()]


@define
class PeerRow:
    """One peer as this process sees it (a row of ``meshd status``)."""

    index: int
    address: Address
    state: PeerState = PeerState.DOWN
    epoch: Epoch | None = None
    incarnation: int | None = None
    since: float = 0.0
    connects: int = 0
    failures: int = 0
    last_error: str | None = None
    last_attempt_error: str | None = None
    last_cause: EndCause | None = None  # the cause of ``last_error``
    last_refused: RefuseReason | None = None  # and its RefuseReason, when a REFUSE ended it

    def record(self, end: LinkEnd) -> None:
        """``end`` is why the link went down: the row's ``last_error`` and its facts."""
        self.last_error = end.detail
        self.last_cause = end.cause
        self.last_refused = end.refused

    def copy(self) -> PeerRow:
        return PeerRow(
            self.index,
            self.address,
            self.state,
            self.epoch,
            self.incarnation,
            self.since,
            self.connects,
            self.failures,
            self.last_error,
            self.last_attempt_error,
            self.last_cause,
            self.last_refused,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "address": str(self.address),
            "state": str(self.state),
            "epoch": epoch_json(self.epoch),
            "incarnation": None if self.incarnation is None else f"{self.incarnation:016x}",
            "since": self.since,
            "connects": self.connects,
            "failures": self.failures,
            "last_error": self.last_error,
            "last_attempt_error": self.last_attempt_error,
            "last_cause": _json(self.last_cause),
            "last_refused": refused_json(self.last_refused),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PeerRow:
        incarnation = data["incarnation"]
        return cls(
            index=data["index"],
            address=Address.parse(data["address"]),
            state=PeerState(data["state"]),
            epoch=epoch_from_json(data["epoch"]),
            incarnation=None if incarnation is None else int(incarnation, 16),
            since=data["since"],
            connects=data["connects"],
            failures=data["failures"],
            last_error=data["last_error"],
            last_attempt_error=data["last_attempt_error"],
            last_cause=None if data.get("last_cause") is None else EndCause(data["last_cause"]),
            last_refused=refused_from_json(data.get("last_refused")),
        )


class WorkerState(enum.StrEnum):
    """Where the supervised worker (``--exec`` or an attached one) is in its life."""

    STARTING = "starting"  # the mesh is ready: its data sockets are being handed over
    RUNNING = "running"
    STOPPING = "stopping"  # SIGTERM sent (or, attached, the generation's end written): waiting for it to exit
    EXITED = "exited"


@frozen
class WorkerStatus:
    """The ``worker`` object of the status: every field null until a worker starts (or when none is configured)."""

    pid: int | None = None  # None for an attached worker in another container (or none yet)
    state: WorkerState | None = None
    started: float | None = None
    exit: int | None = None  # its exit code; minus the signal number when a signal ended it
    epoch: Epoch | None = None  # the generation whose sockets it holds

    def to_json(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "state": None if self.state is None else str(self.state),
            "started": self.started,
            "exit": self.exit,
            "epoch": epoch_json(self.epoch),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> WorkerStatus:
        state = data["state"]
        return cls(
            data["pid"],
            None if state is None else WorkerState(state),
            data["started"],
            data["exit"],
            epoch_from_json(data["epoch"]),
        )


@frozen
class Status:
    """The object ``meshd status --json`` prints and the admin ``status`` op answers."""

    cluster: str
    index: int
    size: int
    epoch: Epoch | None  # None while awaiting the controller's start op
    mode: str
    sealed: bool
    generation_changes: int
    incarnation: int
    state: MeshState
    state_since: float
    started: float
    peers: tuple[PeerRow, ...]
    worker: WorkerStatus = WorkerStatus()
    auth_failures: int = 0  # connections refused AUTH_FAILED: their peer proved no key of the cluster's secret
    handshakes_shed: int = 0  # mesh connections closed unheard: limits.pending_handshakes were in progress
    admin_rejected: int = 0  # admin websocket connections refused: no or a wrong token, or too many clients

    def to_json(self) -> dict[str, Any]:
        return {
            "cluster": self.cluster,
            "index": self.index,
            "size": self.size,
            "epoch": epoch_json(self.epoch),
            "mode": self.mode,
            "sealed": self.sealed,
            "generation_changes": self.generation_changes,
            "incarnation": f"{self.incarnation:016x}",
            "state": str(self.state),
            "state_since": self.state_since,
            "started": self.started,
            "peers": [peer.to_json() for peer in self.peers],
            "worker": self.worker.to_json(),
            "auth_failures": self.auth_failures,
            "handshakes_shed": self.handshakes_shed,
            "admin_rejected": self.admin_rejected,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Status:
        return cls(
            cluster=data["cluster"],
            index=data["index"],
            size=data["size"],
            epoch=epoch_from_json(data["epoch"]),
            mode=data["mode"],
            sealed=data["sealed"],
            generation_changes=data["generation_changes"],
            incarnation=int(data["incarnation"], 16),
            state=MeshState(data["state"]),
            state_since=data["state_since"],
            started=data["started"],
            peers=tuple(PeerRow.from_json(peer) for peer in data["peers"]),
            worker=WorkerStatus() if data.get("worker") is None else WorkerStatus.from_json(data["worker"]),
            auth_failures=data.get("auth_failures", 0),
            handshakes_shed=data.get("handshakes_shed", 0),
            admin_rejected=data.get("admin_rejected", 0),
        )


@frozen(kw_only=True)
class MeshEvent:
    """Something that happened to the mesh of one process; ``to_json`` is the admin ``watch`` message."""

    name: ClassVar[str]
    time: float
    index: int

    def to_json(self) -> dict[str, Any]:
        fields = {field.name: _json(getattr(self, field.name)) for field in attrs.fields(type(self))}
        return {"event": self.event_name, **fields}

    @property
    def event_name(self) -> str:
        return self.name


@frozen(kw_only=True)
class LinkUp(MeshEvent):
    name: ClassVar[str] = "link_up"
    peer: int
    epoch: Epoch
    direction: str  # "dialed" or "accepted"


@frozen(kw_only=True)
class LinkDown(MeshEvent):
    name: ClassVar[str] = "link_down"
    peer: int
    reason: str
    cause: EndCause
    refused: RefuseReason | None = None


@frozen(kw_only=True)
class PeerRestarted(MeshEvent):
    name: ClassVar[str] = "peer_restarted"
    peer: int
    incarnation: int

    def to_json(self) -> dict[str, Any]:
        return super().to_json() | {"incarnation": f"{self.incarnation:016x}"}


@frozen(kw_only=True)
class GenerationMoved(MeshEvent):
    """Auto mode: this process moved to another generation in place (it had never been ready in its own)."""

    name: ClassVar[str] = "generation"
    epoch: Epoch
    reason: str


@frozen(kw_only=True)
class StateChanged(MeshEvent):
    """The mesh state changed; the event is named after the new state (``ready``, ``degraded``, ...)."""

    name: ClassVar[str] = "state"
    state: MeshState
    epoch: Epoch | None
    reason: str

    @property
    def event_name(self) -> str:
        return self.state.value

    def to_json(self) -> dict[str, Any]:
        data = super().to_json()
        del data["state"]
        return data


@frozen(kw_only=True)
class Fenced(MeshEvent):
    """This process's generation is over: a newer epoch exists (``newer``), or it lost a member for good."""

    name: ClassVar[str] = "fenced"
    epoch: Epoch
    reason: str
    newer: Epoch | None  # the newer epoch that ended ours, when one did
    source: str  # who proved it: "peer 2", "the controller"
    cause: str  # "newer_epoch", or "member_replaced" (our generation can never again hold that slot's process)


@frozen(kw_only=True)
class WorkerStarted(MeshEvent):
    """The worker got the generation's data sockets and runs (``pid`` None: an attached worker)."""

    name: ClassVar[str] = "worker_started"
    pid: int | None
    epoch: Epoch


@frozen(kw_only=True)
class WorkerExited(MeshEvent):
    """The worker ended: by itself (``exit`` 0: its job is done; else the process failed, exit 70), or stopped."""

    name: ClassVar[str] = "worker_exited"
    pid: int | None
    epoch: Epoch
    exit: int | None  # its exit code, minus the signal number when a signal ended it; None: an attached one left
    reason: str


@frozen
class StartAnswer:
    """The answer to the admin ``start`` op (``--epoch await``)."""

    epoch: Epoch | None = None
    fenced: bool = False
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        if self.error is not None:
            return {"error": self.error}
        answer: dict[str, Any] = {"ok": True, "epoch": epoch_json(self.epoch)}
        if self.fenced:
            answer["fenced"] = True
        return answer
