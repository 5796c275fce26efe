"""The admin websocket's messages as typed values: requests in; status, start answers, snapshots, events out.

The JSON is the contract (README, "Admin API"); these types are its only writers and readers, so the server, the
client and the command line agree on it without reading each other's dictionaries. The status, the events and the
start answer are the core's own types (``meshd.core.status``); what the core has no use for lives here: the
requests, the watch snapshot, error answers, and reading events and start answers back from their JSON.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from attrs import frozen

from meshd.core.status import (
    EndCause,
    Fenced,
    GenerationMoved,
    LinkDown,
    LinkUp,
    MeshEvent,
    MeshState,
    PeerRestarted,
    StartAnswer,
    StateChanged,
    Status,
    WorkerExited,
    WorkerStarted,
    epoch_from_json,
    refused_from_json,
)
from meshd.core.wire import U64_MAX, Epoch
from meshd.errors import LocalProtocolError, MeshdError

JsonObject = dict[str, Any]

# The ``event`` of the first message of a watch, which carries the status instead of an event.
SNAPSHOT = "snapshot"
# Events named after the mesh state they report (StateChanged); ``fenced`` has a class of its own.
STATE_EVENTS = frozenset(state.value for state in MeshState) - {MeshState.FENCED.value}


class MalformedMessage(MeshdError):
    """A message that is not what the admin API sends: not JSON, not an object, or a field missing or mistyped."""


@frozen
class StatusRequest:
    op: ClassVar[str] = "status"

    def to_json(self) -> JsonObject:
        return {"op": self.op}


@frozen
class WatchRequest:
    op: ClassVar[str] = "watch"

    def to_json(self) -> JsonObject:
        return {"op": self.op}


@frozen
class StartRequest:
    """The controller's epoch for an ``--epoch await`` daemon (an integer epoch: a controller's)."""

    op: ClassVar[str] = "start"
    epoch: Epoch

    def to_json(self) -> JsonObject:
        return {"op": self.op, "epoch": self.epoch.to_json()}


Request = StatusRequest | WatchRequest | StartRequest
# Every op, as the unknown-op error lists them.
OPS = tuple(sorted(kind.op for kind in (StatusRequest, WatchRequest, StartRequest)))


@frozen
class ErrorAnswer:
    """The answer to a request the daemon cannot serve; the connection stays open."""

    error: str

    def to_json(self) -> JsonObject:
        return {"error": self.error}


@frozen
class Snapshot:
    """The first message of a watch: the status at the moment the watcher was subscribed."""

    status: Status

    def to_json(self) -> JsonObject:
        return snapshot_json(self.status.to_json())


WatchMessage = Snapshot | MeshEvent


def snapshot_json(status: JsonObject) -> JsonObject:
    """The snapshot around a status already in its JSON form (the form the daemon serves it in)."""
    return {"event": SNAPSHOT, "status": status}


def parse_request(text: str | bytes) -> Request | ErrorAnswer:
    """The request a client sent, or the error to answer it with (bad JSON, an unknown op, a bad epoch)."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:  # bad JSON, bad UTF-8, too deep, an integer of too many digits
        return ErrorAnswer(f"bad JSON: {exc}")
    op = data.get("op") if isinstance(data, dict) else None
    if op == StatusRequest.op:
        return StatusRequest()
    if op == WatchRequest.op:
        return WatchRequest()
    if op == StartRequest.op:
        epoch = data.get("epoch")
        if isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 <= epoch <= U64_MAX:
            return ErrorAnswer(f"start needs an integer epoch in 0..2**64-1, got {epoch!r}")
        return StartRequest(Epoch(epoch))
    return ErrorAnswer(f"unknown op {op!r}; known ops: {', '.join(OPS)}")


def parse_object(text: str | bytes) -> JsonObject:
    """One admin message: a JSON object, or MalformedMessage."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:  # bad JSON, bad UTF-8, too deep, an integer of too many digits
        raise MalformedMessage(f"it sent something that is not JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise MalformedMessage(f"it sent JSON that is not an object: {text[:80]!r}")
    return data


def status_from_json(data: JsonObject) -> Status:
    """The status answer, typed; an error answer or a mistyped field is a MalformedMessage."""
    if "error" in data:
        raise MalformedMessage(f"it answered the status request with an error: {data['error']}")
    try:
        return Status.from_json(data)
    except (KeyError, TypeError, ValueError, AttributeError, LocalProtocolError) as exc:
        raise MalformedMessage(f"its answer is not a meshd status ({_why(exc)})") from exc


def start_answer_from_json(data: JsonObject) -> StartAnswer:
    """The inverse of ``StartAnswer.to_json``: ``{"ok": true, "epoch": E[, "fenced": true]}`` or an error."""
    if isinstance(data.get("error"), str):
        return StartAnswer(error=data["error"])
    if data.get("ok") is not True:
        raise MalformedMessage(f"its answer is not a start answer: {data!r}")
    try:
        return StartAnswer(epoch=epoch_from_json(data["epoch"]), fenced=data.get("fenced") is True)
    except (KeyError, TypeError, ValueError, AttributeError, LocalProtocolError) as exc:
        raise MalformedMessage(f"its answer is not a start answer ({_why(exc)})") from exc


def event_from_json(data: JsonObject) -> MeshEvent:
    """The inverse of ``MeshEvent.to_json``: the typed event a watch message reports."""
    try:
        return _event(data)
    except (KeyError, TypeError, ValueError, AttributeError, LocalProtocolError) as exc:
        raise MalformedMessage(f"it sent an event that is not a meshd event ({_why(exc)})") from exc


def watch_message_from_json(data: JsonObject) -> WatchMessage:
    """A watch message, typed: the snapshot that opens the stream, or an event."""
    if data.get("event") == SNAPSHOT:
        status = data.get("status")
        if not isinstance(status, dict):
            raise MalformedMessage("it sent a snapshot without a status")
        return Snapshot(status_from_json(status))
    return event_from_json(data)


def _field(data: JsonObject, key: str, kind: type | tuple[type, ...]) -> Any:
    """``data[key]``, which must be of ``kind`` (never a boolean for a number): TypeError otherwise."""
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        raise TypeError(f"{key!r} is {type(value).__name__} {value!r}")
    return value


def _event(data: JsonObject) -> MeshEvent:
    name = data["event"]
    common = {"time": _field(data, "time", (int, float)), "index": _field(data, "index", int)}
    if "peer" in data:
        _field(data, "peer", int)
    if name == LinkUp.name:
        return LinkUp(**common, peer=data["peer"], epoch=_epoch(data["epoch"]), direction=data["direction"])
    if name == LinkDown.name:
        return LinkDown(
            **common,
            peer=data["peer"],
            reason=data["reason"],
            cause=EndCause(data["cause"]),
            refused=refused_from_json(data["refused"]),
        )
    if name == PeerRestarted.name:
        return PeerRestarted(**common, peer=data["peer"], incarnation=int(data["incarnation"], 16))
    if name == WorkerStarted.name:
        return WorkerStarted(**common, pid=data["pid"], epoch=_epoch(data["epoch"]))
    if name == WorkerExited.name:
        return WorkerExited(
            **common, pid=data["pid"], epoch=_epoch(data["epoch"]), exit=data["exit"], reason=data["reason"]
        )
    if name == GenerationMoved.name:
        return GenerationMoved(**common, epoch=_epoch(data["epoch"]), reason=data["reason"])
    if name == Fenced.name:
        return Fenced(
            **common,
            epoch=_epoch(data["epoch"]),
            reason=data["reason"],
            newer=epoch_from_json(data["newer"]),
            source=data["source"],
            cause=data["cause"],
        )
    if name in STATE_EVENTS:
        state = MeshState(name)
        return StateChanged(**common, state=state, epoch=epoch_from_json(data["epoch"]), reason=data["reason"])
    raise ValueError(f"unknown event {name!r}")


def _epoch(value: int | str | None) -> Epoch:
    epoch = epoch_from_json(value)
    if epoch is None:
        raise ValueError("epoch is null")
    return epoch


def _why(exc: Exception) -> str:
    return f"no {exc.args[0]!r}" if isinstance(exc, KeyError) else str(exc)
