"""The admin API's fuzz target: any message reads as a typed value, an ErrorAnswer, or MalformedMessage.

The admin port takes JSON from anyone who reaches it, and the admin client reads whatever answers; inputs are valid
admin messages with JSON or byte edits, random JSON, and JSON that strains the parser.
"""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Callable
from functools import cache
from typing import Any

from meshd.admin.messages import (
    ErrorAnswer,
    MalformedMessage,
    Snapshot,
    StartRequest,
    StatusRequest,
    WatchRequest,
    parse_object,
    parse_request,
    start_answer_from_json,
    status_from_json,
    watch_message_from_json,
)
from meshd.core.address import Address
from meshd.core.status import (
    EndCause,
    Fenced,
    GenerationMoved,
    LinkDown,
    LinkUp,
    MeshEvent,
    MeshState,
    PeerRestarted,
    PeerRow,
    PeerState,
    StartAnswer,
    StateChanged,
    Status,
    WorkerExited,
    WorkerStarted,
    WorkerState,
    WorkerStatus,
)
from meshd.core.wire import U64_MAX, Epoch, RefuseReason
from tools.fuzz.common import MAX_EDITS, Violation, mutate

# The readers of a JSON object the admin client calls, by name, and what each returns.
READERS: tuple[tuple[str, Callable[[dict[str, Any]], object], type | tuple[type, ...]], ...] = (
    ("status_from_json", status_from_json, Status),
    ("start_answer_from_json", start_answer_from_json, StartAnswer),
    ("watch_message_from_json", watch_message_from_json, (Snapshot, MeshEvent)),
)
REQUESTS = (StatusRequest, WatchRequest, StartRequest, ErrorAnswer)
# The largest admin message a daemon reads by default (``admin_message_bytes`` of meshd.config.Limits).
MAX_MESSAGE = 64 * 1024


def sample_messages() -> list[dict[str, Any]]:
    """A valid message of every kind the admin API sends either way, from the types' own ``to_json``."""
    epoch = Epoch(7, 0xABC)
    peers = (
        PeerRow(1, Address("127.0.0.1", 7001), PeerState.UP, Epoch(3), 0xBEEF, 1.5, 2, 1, "gone", None),
        PeerRow(2, Address("::1", 7002), last_cause=EndCause.REFUSED, last_refused=RefuseReason.STALE_EPOCH),
    )
    worker = WorkerStatus(1234, WorkerState.RUNNING, 2.0, None, Epoch(3))
    status = Status("demo", 0, 3, Epoch(3), "fixed", False, 0, 0xFEED, MeshState.READY, 1.0, 0.5, peers, worker)
    common = {"time": 1.25, "index": 0}
    events: list[MeshEvent] = [
        LinkUp(**common, peer=1, epoch=Epoch(3), direction="dialed"),
        LinkDown(**common, peer=1, reason="refused", cause=EndCause.REFUSED, refused=RefuseReason.BEHIND),
        PeerRestarted(**common, peer=2, incarnation=0xABC),
        GenerationMoved(**common, epoch=epoch, reason="joined"),
        StateChanged(**common, state=MeshState.DEGRADED, epoch=None, reason="link down"),
        Fenced(**common, epoch=Epoch(3), reason="newer", newer=epoch, source="peer 2", cause="newer_epoch"),
        WorkerStarted(**common, pid=None, epoch=epoch),
        WorkerExited(**common, pid=5, epoch=epoch, exit=-9, reason="killed"),
    ]
    return [
        StatusRequest().to_json(),
        WatchRequest().to_json(),
        StartRequest(Epoch(U64_MAX)).to_json(),
        ErrorAnswer("unknown op").to_json(),
        status.to_json(),
        Snapshot(status).to_json(),
        *(event.to_json() for event in events),
        StartAnswer(Epoch(9)).to_json(),
        StartAnswer(epoch, fenced=True).to_json(),
        StartAnswer(error="not awaiting").to_json(),
    ]


@cache
def message_pool() -> tuple[bytes, ...]:
    return tuple(json.dumps(message).encode() for message in sample_messages())


@cache
def message_keys() -> tuple[str, ...]:
    """Every key the admin messages use (plausible keys for random objects)."""
    keys = set()
    for message in sample_messages():
        for container in _containers(message):
            keys.update(container if isinstance(container, dict) else ())
    return tuple(sorted(keys))


# JSON values on the edges of what the readers take: out-of-range and mistyped epochs, counts and indices, text
# that is almost an epoch, an address, an incarnation, a state or an event name.
JSON_EDGES = (
    None,
    True,
    False,
    0,
    -1,
    U64_MAX,
    U64_MAX + 1,
    2**100,
    0.5,
    -0.0,
    1e308,
    float("inf"),
    float("nan"),
    "",
    "x",
    "1.zz",
    "1.",
    ".1",
    "-1",
    "ffffffffffffffffff",
    "127.0.0.1:99999",
    "[::1]:7000",
    ":",
    "ready",
    "fenced",
    "link_up",
    "snapshot",
    "stale_epoch",
    "é\x00",
    [],
    {},
    [1],
    {"event": "ready"},
)
# How deep random JSON nests.
JSON_DEPTH = 3


def json_edge(rng: random.Random) -> Any:
    """One of JSON_EDGES, a copy of its own (later edits change lists and objects in place)."""
    return copy.deepcopy(rng.choice(JSON_EDGES))


def random_json(rng: random.Random, depth: int = JSON_DEPTH) -> Any:
    """A random JSON value: scalars of every type (edge values among them), lists and objects with plausible keys."""
    roll = rng.randrange(10 if depth else 6)
    if roll == 0:
        return json_edge(rng)
    if roll == 1:
        return rng.choice((rng.randint(-10, 10), rng.getrandbits(rng.randrange(1, 80)) - (1 << 40)))
    if roll == 2:
        return rng.uniform(-1e6, 1e6)
    if roll == 3:
        return rng.choice(message_keys())
    if roll == 4:  # ASCII and any code point of the BMP, lone surrogates included
        codes = (rng.choice((rng.randrange(32, 127), rng.randrange(0x10000))) for _ in range(rng.randrange(8)))
        return "".join(map(chr, codes))
    if roll == 5:
        return rng.random() < 0.5
    if roll < 8:
        return [random_json(rng, depth - 1) for _ in range(rng.randrange(4))]
    return {rng.choice(message_keys()): random_json(rng, depth - 1) for _ in range(rng.randrange(5))}


def _containers(value: Any) -> list[Any]:
    """Every object and list in ``value``, itself included."""
    found, stack = [], [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            found.append(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            found.append(item)
            stack.extend(item)
    return found


def mutate_json(rng: random.Random, message: Any) -> Any:
    """``message`` (changed in place) with one to three edits, each in a random object or list of it: a key dropped,
    renamed or added, a value replaced by an edge value or random JSON; an item dropped, replaced or added."""
    for _ in range(rng.randint(1, MAX_EDITS)):
        container = rng.choice(_containers(message) or [[]])
        value = json_edge(rng) if rng.random() < 0.5 else random_json(rng)
        if isinstance(container, dict):
            key = rng.choice(list(container) or [rng.choice(message_keys())])
            edit = rng.randrange(3)
            if edit == 0:
                container.pop(key, None)
            elif edit == 1:
                container[rng.choice(message_keys())] = container.pop(key, value)
            else:
                container[key] = value
        elif container and rng.random() < 0.5:
            container[rng.randrange(len(container))] = value
        else:
            container.append(value)
    return message


def pathological(rng: random.Random) -> str:
    """Valid JSON that strains the parser rather than the readers: deep nesting, an integer of thousands of
    digits."""
    depth = rng.randint(100, 20_000)
    return rng.choice(
        (
            "[" * depth + "]" * depth,
            '{"op": ' * depth + "1" + "}" * depth,
            '{"op": "start", "epoch": ' + "9" * rng.randint(1_000, 10_000) + "}",
        )
    )


def admin_input(rng: random.Random) -> bytes:
    """A message: random bytes (1 in 20), a valid admin message (1 in 20), random JSON (1 in 10), an admin message
    with JSON edits (most), a valid message with byte edits (1 in 10), or pathological JSON (1 in 50); UTF-8, at
    most MAX_MESSAGE bytes."""
    roll = rng.random()
    if roll < 0.05:
        return rng.randbytes(rng.randrange(48))
    if roll < 0.1:
        return rng.choice(message_pool())
    if roll < 0.2:
        text = json.dumps(random_json(rng), ensure_ascii=rng.random() < 0.5)
    elif roll < 0.88:
        message = mutate_json(rng, json.loads(rng.choice(message_pool())))
        text = json.dumps(message, ensure_ascii=rng.random() < 0.5)
    elif roll < 0.98:
        return mutate(rng, rng.choice(message_pool()), message_pool())[:MAX_MESSAGE]
    else:
        text = pathological(rng)
    return text.encode("utf-8", "surrogatepass")[:MAX_MESSAGE]


def run_admin(data: bytes) -> list[str]:
    """Read ``data`` as both ends of the admin websocket do, as a binary and as a text message, and check each
    reader's contract: ``parse_request`` returns a request or an ErrorAnswer (it never raises: the server answers
    every message); ``parse_object`` returns an object or raises MalformedMessage; the status, start-answer and
    watch readers return their type or raise MalformedMessage (the client's NotAdmin)."""
    outcomes = []
    found = None
    for message in (data, data.decode("utf-8", "replace")):
        request = parse_request(message)
        if not isinstance(request, REQUESTS):
            raise Violation(f"parse_request returned {request!r}")
        try:
            found = parse_object(message)
        except MalformedMessage:
            found = None
    outcomes.append(f"parse_request: {type(request).__name__}")
    if found is None:
        return [*outcomes, "parse_object: MalformedMessage"]
    if not isinstance(found, dict):
        raise Violation(f"parse_object returned {found!r}")
    for name, reader, kinds in READERS:
        try:
            value = reader(found)
        except MalformedMessage:
            outcomes.append(f"{name}: MalformedMessage")
            continue
        if not isinstance(value, kinds):
            raise Violation(f"{name} returned {value!r}")
        outcomes.append(f"{name}: {type(value).__name__}")
    return outcomes
