"""Deliberately broken protocol variants. A harness that cannot catch a wedge proves nothing, so the simulation is
run against each of these and must find a failing seed (tests/test_sim.py asserts it).

Each variant patches one rule of the real daemon code for the duration of a run; nothing else changes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import trio
from attrs import evolve

from meshd import handshake, link, supervisor
from meshd.connection import FramedConnection
from meshd.core.wire import Goodbye, Hello, Refuse
from meshd.handshake import Identity, Judgement


@contextlib.contextmanager
def _patched(owner: Any, name: str, replacement: Callable[..., Any]) -> Iterator[None]:
    original = getattr(owner, name)
    setattr(owner, name, replacement(original))
    try:
        yield
    finally:
        setattr(owner, name, original)


@contextlib.contextmanager
def no_epoch_check() -> Iterator[None]:
    """Hellos are judged, and links installed, as if the peer's epoch were ours: old and new incarnations mesh."""

    def judge(original: Callable[..., Judgement]) -> Callable[..., Judgement]:
        def blind(
            me: Identity, hello: Hello, expected_peer: int | None, holders: tuple[int, ...] | None = None
        ) -> Judgement:
            return original(evolve(me, epoch=hello.epoch), hello, expected_peer, holders)

        return blind

    def offer(original: Callable[..., Refuse | Goodbye | None]) -> Callable[..., Refuse | Goodbye | None]:
        def blind(self: link.PeerLink, conn: FramedConnection, hello: Hello, dialer: int) -> Refuse | Goodbye | None:
            return original(self, conn, evolve(hello, epoch=self.me.epoch), dialer)

        return blind

    with _patched(handshake, "judge", judge), _patched(link.PeerLink, "offer", offer):
        yield


@contextlib.contextmanager
def classic_no_redial() -> Iterator[None]:
    """The classic bootstrap: dial each peer until connected once, then never again (wait for all, no re-monitoring).

    A link lost after that (a reset, a timed-out partition) is never re-established by either end.
    """

    def offer(original: Callable[..., Refuse | Goodbye | None]) -> Callable[..., Refuse | Goodbye | None]:
        def once(self: link.PeerLink, conn: FramedConnection, hello: Hello, dialer: int) -> Refuse | Goodbye | None:
            refusal = original(self, conn, hello, dialer)
            if refusal is None:
                self._dialing.cancel()
            return refusal

        return once

    def dial_loop(original: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
        async def then_idle(self: link.PeerLink) -> None:
            await original(self)
            await trio.sleep_forever()  # the process lives on, its link task just never dials again

        return then_idle

    with _patched(link.PeerLink, "offer", offer), _patched(link.PeerLink, "_dial_loop", dial_loop):
        yield


@contextlib.contextmanager
def no_view_agreement() -> Iterator[None]:
    """Ready as soon as every link is up, without comparing views (the R3 mutation of the spin model)."""

    def agreed(original: Callable[..., bool]) -> Callable[..., bool]:
        def connected(self: supervisor.Supervisor) -> bool:
            return all(peer.state is supervisor.PeerState.UP for peer in self.peers.values())

        return connected

    with _patched(supervisor.Supervisor, "_agreed", agreed):
        yield


VARIANTS: dict[str, Callable[[], contextlib.AbstractContextManager[None]]] = {
    "no-epoch-check": no_epoch_check,
    "classic-no-redial": classic_no_redial,
    "no-view-agreement": no_view_agreement,
}
