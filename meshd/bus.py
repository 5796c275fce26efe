"""Fan-out of mesh events to admin watchers and in-process observers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import trio

from meshd.core.status import MeshEvent

# Events a slow watcher may lag behind before it is cut off (it can reconnect and ask for status).
WATCH_BUFFER = 256
# How often ``drained`` looks whether every watcher has taken its events.
DRAIN_POLL = 0.01


class EventBus:
    """Publishes each event to every watcher (a bounded channel) and every observer (a synchronous callback)."""

    def __init__(self) -> None:
        self._watchers: set[trio.MemorySendChannel[MeshEvent]] = set()
        self._observers: list[Callable[[MeshEvent], None]] = []

    def observe(self, observer: Callable[[MeshEvent], None]) -> None:
        """Call ``observer`` synchronously with every event, in order (the simulation's trace and checks)."""
        self._observers.append(observer)

    def publish(self, event: MeshEvent) -> None:
        for observer in self._observers:
            observer(event)
        for channel in list(self._watchers):
            try:
                channel.send_nowait(event)
            except (trio.WouldBlock, trio.BrokenResourceError):
                self._watchers.discard(channel)
                channel.close()

    async def drained(self) -> None:
        """Return once every watcher has taken every event published so far."""
        while any(channel.statistics().current_buffer_used for channel in self._watchers):
            await trio.sleep(DRAIN_POLL)

    @contextmanager
    def subscribe(self) -> Iterator[trio.MemoryReceiveChannel[MeshEvent]]:
        send, receive = trio.open_memory_channel[MeshEvent](WATCH_BUFFER)
        self._watchers.add(send)
        try:
            with receive:
                yield receive
        finally:
            self._watchers.discard(send)
            send.close()
