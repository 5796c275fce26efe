"""An in-memory Network for running real daemons in trio's virtual time (``MockClock``), with simple faults.

Connections are ``trio.testing.memory_stream_pair`` streams. A node can be paused, as SIGSTOP would: its
connections stay open, but nothing it sends is delivered and nothing sent to it is read, so peers see silence,
not a reset. Connecting to an address with no listener is refused at once, as on a live host.
"""

from __future__ import annotations

import errno
from collections.abc import Sequence

import trio
import trio.testing

from meshd.core.address import Address

# Connections that may wait for accept(), as the kernel's listen backlog allows; beyond it, connects are refused.
LISTEN_BACKLOG = 128


class MemoryListener(trio.abc.Listener[trio.abc.Stream]):
    def __init__(self, network: MemoryNetwork, address: Address) -> None:
        self._network = network
        self.address = address
        self._send, self._receive = trio.open_memory_channel[trio.abc.Stream](LISTEN_BACKLOG)

    def offer(self, stream: trio.abc.Stream) -> None:
        try:
            self._send.send_nowait(stream)
        except (trio.WouldBlock, trio.ClosedResourceError) as exc:
            raise ConnectionRefusedError(errno.ECONNREFUSED, "connection refused") from exc

    async def accept(self) -> trio.abc.Stream:
        return await self._receive.receive()

    async def aclose(self) -> None:
        self._network.unbind(self)
        self._send.close()
        self._receive.close()
        await trio.lowlevel.checkpoint()


class GatedStream(trio.abc.Stream):
    """One end of an in-memory connection whose traffic stops while its owner (or the far end's owner) is paused."""

    def __init__(self, inner: trio.abc.Stream, network: MemoryNetwork, owner: Address, far: Address) -> None:
        self._inner = inner
        self._network = network
        self._owner = owner
        self._far = far

    async def _gate(self) -> None:
        await self._network.wait_running(self._owner)
        await self._network.wait_running(self._far)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._gate()
        await self._inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        data = await self._inner.receive_some(max_bytes)
        await self._gate()
        return data

    async def send_eof(self) -> None:
        await self._inner.send_eof()  # type: ignore[attr-defined]

    async def aclose(self) -> None:
        await self._inner.aclose()


class MemoryNetwork:
    """Addresses map to listeners; each daemon gets a view bound to its own address (``for_node``)."""

    def __init__(self) -> None:
        self._listeners: dict[Address, MemoryListener] = {}
        self._paused: dict[Address, trio.Event] = {}

    def for_node(self, address: Address) -> NodeNetwork:
        return NodeNetwork(self, address)

    def unbind(self, listener: MemoryListener) -> None:
        if self._listeners.get(listener.address) is listener:
            del self._listeners[listener.address]

    def pause(self, node: Address) -> None:
        self._paused.setdefault(node, trio.Event())

    def resume(self, node: Address) -> None:
        event = self._paused.pop(node, None)
        if event is not None:
            event.set()

    async def wait_running(self, node: Address) -> None:
        event = self._paused.get(node)
        if event is not None:
            await event.wait()

    async def connect(self, source: Address, address: Address) -> trio.abc.Stream:
        await trio.lowlevel.checkpoint()
        listener = self._listeners.get(address)
        if listener is None:
            raise ConnectionRefusedError(errno.ECONNREFUSED, "connection refused")
        near, far = trio.testing.memory_stream_pair()
        listener.offer(GatedStream(far, self, address, source))
        return GatedStream(near, self, source, address)

    async def listen(self, address: Address) -> Sequence[MemoryListener]:
        await trio.lowlevel.checkpoint()
        if address in self._listeners:
            raise OSError(errno.EADDRINUSE, "address already in use")
        listener = MemoryListener(self, address)
        self._listeners[address] = listener
        return [listener]


class NodeNetwork:
    """The Network one daemon sees: connections it opens are tagged with its own address (for pauses)."""

    def __init__(self, network: MemoryNetwork, address: Address) -> None:
        self._network = network
        self._address = address

    async def connect(self, address: Address) -> trio.abc.Stream:
        return await self._network.connect(self._address, address)

    async def listen(self, address: Address) -> Sequence[trio.abc.Listener[trio.abc.Stream]]:
        return await self._network.listen(address)
