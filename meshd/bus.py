"""Fan-out of mesh events to admin watchers and in-process observers."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager

import trio

from meshd.core.status import MeshEvent

# Events a slow watcher may lag behind before it is cut off (it can reconnect and ask for status).
WATCH_BUFFER = 256
# How often ``drained`` looks whether every watcher has taken its events.
DRAIN_POLL = 0.01


class Watcher:
    """One watcher's events, in order. An event counts as delivered once the watcher asks for the next one (its
    loop body, e.g. sending it over the websocket, is done): ``EventBus.drained`` waits for that."""

    def __init__(self, receive: trio.MemoryReceiveChannel[MeshEvent]) -> None:
        self._receive = receive
        self.busy = False  # an event is taken and not yet handled

    @property
    def pending(self) -> bool:
        return self.busy or self._receive.statistics().current_buffer_used > 0

    async def __aiter__(self) -> AsyncIterator[MeshEvent]:
        async for event in self._receive:
            self.busy = True
            yield event
            self.busy = False


class EventBus:
    """Publishes each event to every watcher (a bounded channel) and every observer (a synchronous callback)."""

    def __init__(self) -> None:
        self._watchers: dict[trio.MemorySendChannel[MeshEvent], Watcher] = {}
        self.closed = False
        self._left = trio.Event()  # set (and replaced) whenever a watcher leaves
        self._observers: list[Callable[[MeshEvent], None]] = []

    @property
    def watching(self) -> bool:
        """Whether any watcher is subscribed."""
        return bool(self._watchers)

    def observe(self, observer: Callable[[MeshEvent], None]) -> None:
        """Call ``observer`` synchronously with every event, in order (the simulation's trace and checks)."""
        self._observers.append(observer)

    def publish(self, event: MeshEvent) -> None:
        for observer in self._observers:
            observer(event)
        if self.closed:
            return  # the watchers' streams have ended
        for channel in list(self._watchers):
            try:
                channel.send_nowait(event)
            except (trio.WouldBlock, trio.BrokenResourceError):
                self._watchers.pop(channel, None)
                channel.close()

    def close(self) -> None:
        """The last event is out: every watcher's stream ends once it has taken what is queued."""
        self.closed = True
        for channel in self._watchers:
            channel.close()

    async def finished(self) -> None:
        """Return once every watcher is gone (after ``close``: each one closed its connection)."""
        while self._watchers:
            await self._left.wait()

    async def drained(self) -> None:
        """Return once every watcher has handled every event published so far (see ``Watcher``)."""
        while any(watcher.pending for watcher in self._watchers.values()):
            await trio.sleep(DRAIN_POLL)

    @contextmanager
    def subscribe(self) -> Iterator[Watcher]:
        send, receive = trio.open_memory_channel[MeshEvent](WATCH_BUFFER)
        watcher = Watcher(receive)
        self._watchers[send] = watcher
        if self.closed:
            send.close()
        try:
            with receive:
                yield watcher
        finally:
            self._watchers.pop(send, None)
            send.close()
            self._left.set()
            self._left = trio.Event()
