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

from meshd import link
from meshd.core import hello as hello_rules
from meshd.core import mesh
from meshd.core.hello import Action, Identity, Judgement, Outcome, Standing
from meshd.core.wire import Hello, RefuseReason


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
    """Hellos are judged as if the peer's epoch were ours: old and new incarnations mesh."""

    def judge(original: Callable[..., Judgement]) -> Callable[..., Judgement]:
        def blind(me: Identity, hello: Hello, *args: Any) -> Judgement:
            return original(evolve(me, epoch=hello.epoch), hello, *args)

        return blind

    with _patched(hello_rules, "judge", judge):
        yield


@contextlib.contextmanager
def classic_no_redial() -> Iterator[None]:
    """The classic bootstrap: dial each peer until connected once, then never again (wait for all, no re-monitoring).

    A link lost after that (a reset, a timed-out partition) is never re-established by either end.
    """

    def start(original: Callable[..., None]) -> Callable[..., None]:
        def once(self: link.PeerLink, session: link.Session, replaced: link.Session | None) -> None:
            original(self, session, replaced)
            self._dialing.cancel()

        return once

    def dial_loop(original: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
        async def then_idle(self: link.PeerLink) -> None:
            await original(self)
            await trio.sleep_forever()  # the process lives on, its link task just never dials again

        return then_idle

    with _patched(link.PeerLink, "start", start), _patched(link.PeerLink, "_dial_loop", dial_loop):
        yield


@contextlib.contextmanager
def no_view_agreement() -> Iterator[None]:
    """Ready as soon as every link is up, without comparing views (the R3 mutation of the spin model)."""

    def agreed(original: Callable[..., bool]) -> Callable[..., bool]:
        def connected(self: mesh.MeshModel) -> bool:
            return self.full()

        return connected

    with _patched(mesh.MeshModel, "agreed", agreed):
        yield


@contextlib.contextmanager
def _entries(table: dict[Any, Any], changes: dict[Any, Any]) -> Iterator[None]:
    """Change some entries of a rule table (None removes one) for the duration of a run."""
    saved = {key: table.get(key) for key in changes}
    for key, value in changes.items():
        table.pop(key, None) if value is None else table.__setitem__(key, value)
    try:
        yield
    finally:
        for key, value in saved.items():
            table.pop(key, None) if value is None else table.__setitem__(key, value)


@contextlib.contextmanager
def no_leave() -> Iterator[None]:
    """The first design's rule: only the refused end of a SEALED exchange acts (it mints, unless it is sealed); the
    refusing end keeps its generation, and a sealed process never leaves one that can no longer be complete."""
    answers = ("ACCEPT", "GOODBYE", *RefuseReason.__members__)
    changes: dict[Any, Any] = {(Action.LEAVE, answer): None for answer in answers}
    with (
        _entries(hello_rules.CONCLUSIONS, changes),
        _entries(hello_rules.MOVES, {(Outcome.LEAVE, Standing.SEALED): None}),
    ):
        yield


@contextlib.contextmanager
def no_consent() -> Iterator[None]:
    """The first design's rule: a newer generation is adopted even when it already holds our slot."""
    with _entries(hello_rules.CONCLUSIONS, {(Action.FOLLOW, "SEALED"): Outcome.ADOPT}):
        yield


@contextlib.contextmanager
def full_views_only() -> Iterator[None]:
    """The first design's rule: views travel only when full, so a link down leaves the peers ready."""

    def announce(original: Callable[..., list[Any]]) -> Callable[..., list[Any]]:
        def only_full(self: mesh.MeshModel) -> list[Any]:
            self.sent_full = False
            return original(self) if self.full() else []

        return only_full

    with _patched(mesh.MeshModel, "_announce", announce):
        yield


@contextlib.contextmanager
def hello_alone() -> Iterator[None]:
    """A hello takes effect without the peer's answer, so a ghost hello (its sender dead) decides as a live one."""

    def conclude(original: Callable[..., Outcome]) -> Callable[..., Outcome]:
        def unanswered(action: Action, answer: Any) -> Outcome:
            if answer is None and action in (Action.FOLLOW, Action.LEAVE):
                return Outcome.ADOPT if action is Action.FOLLOW else Outcome.LEAVE
            return original(action, answer)

        return unanswered

    with _patched(hello_rules, "conclude", conclude):
        yield


@contextlib.contextmanager
def first_design() -> Iterator[None]:
    """Every rule of the fix reverted at once: the rules the first proof was written for."""
    with no_leave(), no_consent(), full_views_only(), hello_alone():
        yield


VARIANTS: dict[str, Callable[[], contextlib.AbstractContextManager[None]]] = {
    "no-epoch-check": no_epoch_check,
    "classic-no-redial": classic_no_redial,
    "no-view-agreement": no_view_agreement,
    "no-leave": no_leave,
    "no-consent": no_consent,
    "full-views-only": full_views_only,
    "hello-alone": hello_alone,
    "first-design": first_design,
}
# The variants that each revert one rule of the fix of the first design's wedge (docs/design.md, §8).
FIX_REVERTED = ("no-leave", "no-consent", "full-views-only", "hello-alone")
