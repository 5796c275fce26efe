"""A hand-driven peer: one connection to a daemon's mesh port that speaks meshd's handshake with the real sans-I/O
machines (``meshd.core.hello``, ``meshd.core.auth``) and the real data dialer (``meshd.data.dial_data``), holding
the cluster's key, another key, or none. Tests play strangers, replays and forged peers with it.

Every call is bounded by its ``timeout`` and records the bytes each way, so that a test can replay them.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

import trio

from meshd.core.address import Address
from meshd.core.auth import Authenticator, Keyring
from meshd.core.hello import Handshake, HandshakeEvent, PeerHello
from meshd.core.wire import NONCE_SIZE, Accept, Answer, DataHello, Frame, Hello, decode_all
from meshd.data import dial_data

# Bound of one exchange with a daemon (a busy 2-core machine).
EXCHANGE_TIMEOUT = 5.0


def authenticator(keyring: Keyring | None, *, data: bool = False) -> Authenticator | None:
    """A dialer's authenticator under ``keyring`` (None: no secret at all)."""
    if keyring is None:
        return None
    return Authenticator(keyring, dialer=True, data=data, nonce=secrets.token_bytes(NONCE_SIZE))


@dataclass
class Exchanged:
    """What one handshake with a daemon gave: the machine's events, and every byte each way."""

    events: list[HandshakeEvent] = field(default_factory=list)
    sent: bytes = b""
    received: bytes = b""
    closed: bool = False  # the daemon closed the connection

    @property
    def daemon_hello(self) -> Hello | None:
        return next((event.hello for event in self.events if isinstance(event, PeerHello)), None)

    def frames(self) -> list[Frame]:
        """Every frame the daemon sent, decoded."""
        return decode_all(self.received)


async def exchange(
    address: Address,
    hello: Hello,
    keyring: Keyring | None,
    *,
    answer: Answer | None = None,
    timeout: float = EXCHANGE_TIMEOUT,
) -> Exchanged:
    """Dial ``address`` and run the handshake as the dialer with ``hello``; answer the daemon's hello with ``answer``
    (default ACCEPT); return once the daemon answered, refused or closed. The connection is then closed."""
    machine = Handshake(hello, authenticator(keyring))
    result = Exchanged()
    with trio.fail_after(timeout):
        stream = await trio.open_tcp_stream(address.host, address.port)
        async with stream:
            while True:
                event = machine.next_event()
                outgoing = machine.data_to_send()  # what the machine queued: our challenge, proof, hello, answer
                if outgoing:
                    result.sent += outgoing
                    await stream.send_all(outgoing)
                if event is None:
                    try:
                        data = await stream.receive_some(65536)
                    except trio.BrokenResourceError:
                        data = b""
                    result.received += data
                    if data:
                        machine.receive_data(data)
                    else:
                        result.closed = True
                        machine.receive_eof()
                    continue
                result.events.append(event)
                if isinstance(event, PeerHello):
                    machine.answer(answer or Accept())
                    continue
                outgoing = machine.data_to_send()  # a refusal of ours goes out before the close
                if outgoing:
                    result.sent += outgoing
                    await stream.send_all(outgoing)
                return result


async def send_raw(address: Address, data: bytes, *, timeout: float = EXCHANGE_TIMEOUT) -> Exchanged:
    """Connect, send ``data`` as it is (a replay, a forgery), and read until the daemon closes."""
    result = Exchanged(sent=data)
    with trio.fail_after(timeout):
        stream = await trio.open_tcp_stream(address.host, address.port)
        async with stream:
            await stream.send_all(data)
            try:
                while chunk := await stream.receive_some(65536):
                    result.received += chunk
            except trio.BrokenResourceError:
                pass
    result.closed = True
    return result


async def data_exchange(
    address: Address, hello: DataHello, keyring: Keyring | None, *, timeout: float = EXCHANGE_TIMEOUT
) -> tuple[Frame, bytes]:
    """Dial a data connection with ``hello`` as the real dialer does; the daemon's answer, and whatever the daemon
    sent after it until it closed (b"" after a refusal: nothing of meshd's follows an answer)."""
    with trio.fail_after(timeout):
        stream = await trio.open_tcp_stream(address.host, address.port)
        async with stream:
            answer = await dial_data(stream, hello, authenticator(keyring, data=True))
            rest = b""
            if not isinstance(answer, Accept):
                while chunk := await stream.receive_some(65536):
                    rest += chunk
    return answer, rest
