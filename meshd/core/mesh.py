"""The mesh state machine of one process: epoch, membership, peer rows, views, readiness. Pure, no I/O.

It takes events (a hello to judge, an exchange to conclude, a link that ended, a VIEW received, a start or stop
request) and returns effects for the I/O shell to apply (send our view, drop links, publish an event, exit), in
the manner of h11. Everything that decides what the mesh is lives here; ``meshd.daemon`` only applies effects.

Rules, stated where they are implemented (docs/design.md names them R1-R6):
- R1 hello verdicts: ``meshd.core.hello.judge``; an ACCEPT records the peer as our generation's member in its slot
  at once, write-once (auto);
- R2 one link per pair: ``meshd.core.slot``; an exchange concluded in a generation we have left is void;
- R3 readiness is agreement: ready iff every link is up and every peer's last VIEW equals our view; the view goes
  to every peer when it becomes full, and when it stops being full after it was sent full, so that a link down
  anywhere in a ready mesh takes every member out of ``ready`` within one message delay;
- R4 sealing: the first time a process is ready in a generation it is sealed there: it leaves it only by exiting;
- R5 moving (auto, unsealed): ADOPT moves to the peer's generation, SURPASS mints above the peer's, LEAVE mints
  above our own; every link of the old generation is dropped in the same step;
- R6 fixed epochs: a newer epoch fences (exit 75); the controller's rule for restarts is in the cluster harness.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

from attrs import evolve, frozen

from meshd.core import hello as rules
from meshd.core.address import Address
from meshd.core.generation import EpochMode
from meshd.core.hello import Action, Identity, Judgement, Move, Outcome, Standing
from meshd.core.slot import LinkOrigin, Slot, SlotDecision
from meshd.core.status import (
    EndCause,
    Fenced,
    GenerationMoved,
    LinkDown,
    LinkEnd,
    LinkUp,
    MeshEvent,
    MeshState,
    PeerRestarted,
    PeerRow,
    PeerState,
    StartAnswer,
    StateChanged,
    Status,
)
from meshd.core.wire import Answer, Epoch, Goodbye, Hello, Refuse, RefuseReason, View, encode
from meshd.errors import ExitCode, LocalProtocolError

# A minter: a fresh generation strictly newer than the given one (None at birth); the shell binds clock and nonce.
Minter = Callable[[Epoch | None], Epoch]

# The mesh states each state may move to; anything else is a bug and raises, changing nothing.
TRANSITIONS: dict[MeshState, frozenset[MeshState]] = {
    MeshState.AWAITING: frozenset({MeshState.FORMING, MeshState.STOPPING, MeshState.FENCED}),
    MeshState.FORMING: frozenset({MeshState.READY, MeshState.STOPPING, MeshState.FENCED}),
    # READY/DEGRADED -> FORMING: a process not yet sealed (its peers' ready flags not all in) moves generation.
    MeshState.READY: frozenset({MeshState.DEGRADED, MeshState.FORMING, MeshState.STOPPING, MeshState.FENCED}),
    MeshState.DEGRADED: frozenset({MeshState.READY, MeshState.FORMING, MeshState.STOPPING, MeshState.FENCED}),
    MeshState.STOPPING: frozenset(),
    MeshState.FENCED: frozenset(),
}


@frozen
class SendView:
    """Send our view on the links to ``peers`` (the frame is built when it goes out: the latest view wins)."""

    peers: tuple[int, ...]


@frozen
class DropLinks:
    """Our generation changed: close these links quietly (the model has taken them down) and redial every peer."""

    tokens: tuple[Hashable, ...]
    reason: str


@frozen
class StartLinks:
    """The epoch is known (``--epoch await`` got its start op): start dialing and accepting."""


@frozen
class Publish:
    event: MeshEvent


@frozen
class Exit:
    """End the process with ``code``: 75 once watchers have the fenced event, 0 after goodbyes."""

    code: ExitCode
    reason: str


Effect = SendView | DropLinks | StartLinks | Publish | Exit


@frozen
class Exchange:
    """A peer's hello, judged: what we answered and what we will do once the peer answers ours."""

    peer: int
    hello: Hello
    judgement: Judgement
    epoch: Epoch  # ours when we judged; an exchange concluded in another generation is void

    @property
    def answer(self) -> Answer:
        return self.judgement.answer


@frozen
class Concluded:
    """What an exchange decided at our end, and for a link, what to do with the connection."""

    outcome: Outcome
    decision: SlotDecision | None
    effects: list[Effect]

    @property
    def linked(self) -> bool:
        return self.decision is not None and self.decision.install


class MeshModel:
    """One process's view of the mesh. Every method that changes something returns the effects to apply."""

    def __init__(
        self,
        me: Identity,
        addresses: Sequence[Address],
        mode: EpochMode,
        now: float,
        mint: Minter | None = None,
    ) -> None:
        if (mode is EpochMode.AUTO) != me.auto or (mode is EpochMode.AUTO and mint is None):
            raise LocalProtocolError("auto mode needs an auto identity and a minter, and only auto mode has them")
        self.me = me
        self.mode = mode
        self._mint = mint
        self.started = now
        self.state = MeshState.AWAITING if mode is EpochMode.AWAIT else MeshState.FORMING
        self.state_since = now
        self.sealed = False  # auto: this process was ready in its generation, so it exits rather than moves
        self.members: tuple[int, ...] | None = self._fresh_members() if me.auto else None
        self.generation_changes = 0
        self.exit: ExitCode | None = None
        self.exit_reason: str | None = None
        self.rows = {
            index: PeerRow(index, address, since=now) for index, address in enumerate(addresses) if index != me.index
        }
        self.slots = {peer: Slot(me.index, peer) for peer in self.rows}
        self.views: dict[int, View | None] = dict.fromkeys(self.rows)
        self._view: View | None = None
        self._view_frame: bytes | None = None
        self.sent_full = False  # our last VIEW sent was full: a link going down must tell the peers

    def copy(self) -> MeshModel:
        """An independent copy, for explorers that branch: the mutable parts are copied, the rest is immutable."""
        twin = object.__new__(MeshModel)
        twin.__dict__.update(self.__dict__)
        twin.rows = {peer: row.copy() for peer, row in self.rows.items()}
        twin.slots = {peer: slot.copy() for peer, slot in self.slots.items()}
        twin.views = dict(self.views)
        return twin

    # ----- queries -----

    @property
    def began(self) -> bool:
        return self.state is not MeshState.AWAITING

    def hello(self, target: int | None) -> Hello:
        return self.me.hello(target)

    def view(self) -> View:
        """Our view of the current generation: the incarnation we are linked to in every slot (0 while down).

        Kept until a link or the generation changes: it is read for every VIEW received and sent.
        """
        if self._view is None:
            incarnations = tuple(
                self.me.incarnation if slot == self.me.index else self._linked(slot) for slot in range(self.me.size)
            )
            self._view = View(self.me.epoch, incarnations, self.state is MeshState.READY)
        return self._view

    def view_frame(self) -> bytes:
        """Our view, encoded as a VIEW frame (kept as long as the view)."""
        if self._view_frame is None:
            self._view_frame = encode(self.view())
        return self._view_frame

    @property
    def standing(self) -> Standing:
        if not self.me.auto:
            return Standing.FIXED
        return Standing.SEALED if self.sealed else Standing.OPEN

    @property
    def final(self) -> bool:
        """Whether this process's generation is final for it: it would exit rather than move (fixed epochs, or
        sealed). A worker gets the generation's data sockets only when the mesh is ready and final."""
        return not self.me.auto or self.sealed

    def holder(self, slot: int) -> int | None:
        """Auto mode, while our mesh is ready: the incarnation it links in ``slot``, which a duplicate of that slot
        may not displace (``judge`` answers it RETIRED). None otherwise."""
        if not self.me.auto or self.state is not MeshState.READY or slot not in self.rows:
            return None
        return self.rows[slot].incarnation

    def full(self) -> bool:
        return all(row.state is PeerState.UP for row in self.rows.values())

    def agreed(self) -> bool:
        """R3: every link is up and every peer's last VIEW names the same processes as ours."""
        mine = self.view()
        return self.full() and all(mine.same_mesh(view) for view in self.views.values())

    def status(self) -> Status:
        return Status(
            cluster=self.me.cluster,
            index=self.me.index,
            size=self.me.size,
            epoch=None if self.state is MeshState.AWAITING else self.me.epoch,
            mode=self.mode.value,
            sealed=self.sealed,
            generation_changes=self.generation_changes,
            incarnation=self.me.incarnation,
            state=self.state,
            state_since=self.state_since,
            started=self.started,
            peers=tuple(evolve(row) for row in self.rows.values()),
        )

    # ----- the hello exchange -----

    def judge(self, hello: Hello, expected_peer: int | None, sent: Epoch) -> Exchange:
        """R1: our answer to a peer's hello; an ACCEPT makes the peer our member in its slot at once (auto).

        ``sent`` is the epoch of the hello we sent on this connection: if we have changed epoch since, the peer
        judges a hello that no longer says who we are, and the exchange decides nothing at either end. A process
        that is stopping says goodbye; an incarnation that a newer process in its slot replaced on our link is
        refused (RETIRED) while the replacement holds it (R2, ``meshd.core.slot``).
        """
        slot = self.slots.get(hello.sender)
        if self.state in (MeshState.STOPPING, MeshState.FENCED, MeshState.AWAITING):
            judgement = Judgement(Goodbye(f"this process is {self.state}"), Action.NONE)
        elif sent != self.me.epoch:
            judgement = Judgement(Goodbye(f"our epoch moved from {sent} to {self.me.epoch}"), Action.NONE)
        elif slot is not None and hello.incarnation in slot.retired:
            detail = f"incarnation {hello.incarnation:016x} was replaced by a newer process"
            judgement = Judgement(Refuse(RefuseReason.RETIRED, self.me.epoch, detail), Action.NONE)
        else:
            holder = self.holder(hello.sender)
            judgement = rules.judge(self.me, hello, expected_peer, self.members, holder)
            if judgement.action is Action.LINK and self.members is not None:
                self.members = _with(self.members, hello.sender, hello.incarnation)
        return Exchange(hello.sender, hello, judgement, self.me.epoch)

    def conclude(
        self, exchange: Exchange, answer: Answer | None, token: Hashable, dialer: int, now: float
    ) -> Concluded:
        """The peer's answer is in (None: it never came): apply what the exchange decided at our end."""
        outcome = rules.conclude(exchange.judgement.action, answer)
        live = self.state in (MeshState.FORMING, MeshState.READY, MeshState.DEGRADED)
        if outcome is Outcome.NOTHING or exchange.epoch != self.me.epoch or not live:
            return Concluded(Outcome.NOTHING, None, [])
        peer, hello = exchange.peer, exchange.hello
        if outcome is not Outcome.LINK and self.holder(peer) not in (None, hello.incarnation):
            # R1's exception, again at the conclusion: our mesh became ready while the peer answered, and it links
            # the peer's slot with another incarnation; a duplicate does not break up a ready mesh.
            return Concluded(Outcome.NOTHING, None, [])
        if outcome is Outcome.LINK:
            decision, effects = self._offer(peer, token, hello, dialer, now)
            return Concluded(outcome, decision, effects)
        source = f"peer {peer}"
        match rules.move(outcome, self.standing):
            case Move.EXIT:
                newer = hello.epoch if hello.epoch > self.me.epoch else None
                if newer is not None:
                    reason = f"{source} runs epoch {newer}, newer than ours ({self.me.epoch})"
                else:
                    reason = (
                        f"generation {self.me.epoch} can no longer be complete: {source} "
                        f"(incarnation {hello.incarnation:016x}) is not the member it holds in slot {peer}"
                    )
                effects = self._fence(newer, source, reason, now)
            case Move.JOIN:
                effects = self._move(hello.epoch, f"{source} runs it", now)
            case Move.MINT_ABOVE_PEER:
                above = self._minted(hello.epoch)
                effects = self._move(above, f"{source}'s generation {hello.epoch} already has our slot", now)
            case Move.MINT_ABOVE_OURS:
                above = self._minted(self.me.epoch)
                effects = self._move(above, f"our generation {exchange.epoch} cannot hold {source}'s live process", now)
            case _:
                return Concluded(Outcome.NOTHING, None, [])
        return Concluded(outcome, None, effects)

    def _offer(
        self, peer: int, token: Hashable, hello: Hello, dialer: int, now: float
    ) -> tuple[SlotDecision, list[Effect]]:
        """R2: an exchange both ends accepted becomes the link, unless the slot rules say how to close it."""
        decision = self.slots[peer].offer(token, LinkOrigin(dialer, hello.incarnation), self.me.epoch)
        if not decision.install:
            return decision, []
        row = self.rows[peer]
        direction = "dialed" if dialer == self.me.index else "accepted"
        if row.state is PeerState.UP and row.incarnation == hello.incarnation:
            # The link moved to another connection (tie-break or reconnect): the peer sends its view again on it,
            # and so do we, to this peer only (our view is unchanged). The mesh stays ready: the link is up at both
            # ends, and the peer concludes this connection within one message (our answer is on its way).
            self.views[peer] = None
            return decision, [SendView((peer,))] if self.full() else []
        effects: list[Effect] = []
        if row.incarnation is not None and row.incarnation != hello.incarnation:
            effects.append(self._event(PeerRestarted, now, peer=peer, incarnation=hello.incarnation))
        row.state = PeerState.UP
        row.epoch = hello.epoch
        row.incarnation = hello.incarnation
        row.since = now
        row.connects += 1
        self.views[peer] = None
        self._view_changed()
        effects.append(self._event(LinkUp, now, peer=peer, epoch=hello.epoch, direction=direction))
        effects += self._announce()
        effects += self._reevaluate(f"link {peer} up", now)
        return decision, effects

    # ----- links and views -----

    def link_ended(self, peer: int, token: Hashable, end: LinkEnd, now: float) -> list[Effect]:
        """The connection ``token`` to ``peer`` failed or closed; if it was the link, the link is down."""
        if not self.slots[peer].release(token):
            return []  # a lingering tie-break loser, or a link the model already took down
        effects = self._row_down(peer, end, now)
        effects += self._announce()
        effects += self._reevaluate(f"link {peer} down: {end}", now)
        return effects

    def view_received(self, peer: int, token: Hashable, view: View, now: float) -> list[Effect]:
        if token != self.slots[peer].current or view.epoch != self.me.epoch:
            return []  # a lingering loser's view, or one in flight across a generation change
        self.views[peer] = view
        return self._reevaluate(f"peer {peer} reported its view", now)

    def attempt_failed(self, peer: int, end: LinkEnd) -> bool:
        """A dial or exchange toward ``peer`` made no link; only its row changes. Whether the reason is new.

        ``last_error`` keeps why the link went down (the more useful fact) once there has been a link.
        """
        row = self.rows[peer]
        row.failures += 1
        changed = row.last_attempt_error != end.detail
        row.last_attempt_error = end.detail
        if row.connects == 0:
            row.record(end)
        return changed

    # ----- the controller and the process -----

    def request_start(self, epoch: Epoch, now: float) -> tuple[StartAnswer, list[Effect]]:
        """The controller's ``start`` op (``--epoch await``): the first start gives the epoch; a newer one fences
        this process (exit 75); the same one is a no-op; an older one is refused and changes nothing."""
        if self.mode is not EpochMode.AWAIT:
            shown = "auto" if self.me.auto else str(self.me.epoch)
            return StartAnswer(error=f"this daemon runs with --epoch {shown}, not await"), []
        if self.state is MeshState.AWAITING:
            return StartAnswer(epoch), self._begin(epoch, now)
        if self.state in (MeshState.STOPPING, MeshState.FENCED):
            return StartAnswer(error=f"this daemon is {self.state}; nothing changed"), []
        if epoch > self.me.epoch:
            reason = f"the controller runs epoch {epoch}, newer than ours ({self.me.epoch})"
            return StartAnswer(epoch, fenced=True), self._fence(epoch, "the controller", reason, now)
        if epoch == self.me.epoch:
            return StartAnswer(epoch), []
        return StartAnswer(error=f"epoch {epoch} is older than the running epoch {self.me.epoch}; nothing changed"), []

    def stop(self, reason: str, now: float, code: ExitCode = ExitCode.OK) -> list[Effect]:
        """An orderly stop: links say goodbye, the process exits ``code`` (0; 70 when its worker failed)."""
        if self.state in (MeshState.STOPPING, MeshState.FENCED):
            return []
        for slot in self.slots.values():
            slot.closing = True
        self.exit, self.exit_reason = code, reason
        return [*self._set_state(MeshState.STOPPING, reason, now), Exit(code, reason)]

    # ----- internals -----

    def _begin(self, epoch: Epoch, now: float) -> list[Effect]:
        self.me = evolve(self.me, epoch=epoch)
        self._view_changed()
        return [*self._set_state(MeshState.FORMING, f"controller started epoch {epoch}", now), StartLinks()]

    def _fence(self, newer: Epoch | None, source: str, reason: str, now: float) -> list[Effect]:
        if self.state is MeshState.FENCED:
            return []
        self.exit, self.exit_reason = ExitCode.FENCED, reason
        self.state, self.state_since = MeshState.FENCED, now
        cause = "member_replaced" if newer is None else "newer_epoch"
        event = self._event(Fenced, now, epoch=self.me.epoch, reason=reason, newer=newer, source=source, cause=cause)
        return [event, Exit(ExitCode.FENCED, reason)]

    def _move(self, epoch: Epoch, reason: str, now: float) -> list[Effect]:
        """R5: join ``epoch`` in place (auto, unsealed): a fresh membership, every old link dropped at once."""
        assert self.me.auto and not self.sealed and epoch > self.me.epoch, "only unsealed auto processes move, up"
        self.generation_changes += 1
        self.me = evolve(self.me, epoch=epoch)
        self.members = self._fresh_members()
        effects: list[Effect] = [self._event(GenerationMoved, now, epoch=epoch, reason=reason)]
        tokens = []
        for peer, slot in self.slots.items():
            token = slot.current
            if slot.release(token):
                tokens.append(token)
                effects += self._row_down(peer, LinkEnd(EndCause.LOCAL, f"moved to generation {epoch}"), now)
        self.views = dict.fromkeys(self.rows)
        self._view_changed()
        self.sent_full = False
        effects.append(DropLinks(tuple(tokens), f"moved to generation {epoch}"))
        return effects + self._set_state(MeshState.FORMING, f"moved to generation {epoch}", now)

    def _minted(self, above: Epoch) -> Epoch:
        assert self._mint is not None
        fresh = self._mint(above)
        if not fresh > above:
            raise LocalProtocolError(f"the minter returned {fresh}, not newer than {above}")
        return fresh

    def _row_down(self, peer: int, end: LinkEnd, now: float) -> list[Effect]:
        row = self.rows[peer]
        row.state = PeerState.DOWN
        row.epoch = None
        row.since = now
        row.failures += 1
        row.record(end)
        self.views[peer] = None
        self._view_changed()
        return [self._event(LinkDown, now, peer=peer, reason=end.detail, cause=end.cause, refused=end.refused)]

    def _announce(self) -> list[Effect]:
        """R3: our view goes to every up link when it is full (or its ready flag changed), and once more when it
        stops being full.

        A partial view can never equal a ready peer's full one, so views need not travel while a mesh forms (O(N)
        frames per process instead of one per link change); but a peer that got our full view must learn that it
        no longer holds, or it could stay ready on a mesh with a link down.
        """
        up = tuple(peer for peer, row in self.rows.items() if row.state is PeerState.UP)
        if self.full():  # (also when only our ready flag changed)
            self.sent_full = True
            return [SendView(up)] if up else []
        if self.sent_full:
            self.sent_full = False
            return [SendView(up)] if up else []
        return []

    def _reevaluate(self, reason: str, now: float) -> list[Effect]:
        """R3 and R4: ready on agreement; sealed once every peer has said it is ready with the same view.

        Readiness changes the ready flag of our view, so the view goes out again: that is how the peers learn that
        everybody is ready, and only then does a process seal. A process sealed on a view its sender had already
        left behind would exit for nothing; a process whose every peer reported ready in this mesh knows that each
        of them was ready, and a ready process is not drawn away by a duplicate (R1's exception).
        """
        if self.state not in (MeshState.FORMING, MeshState.READY, MeshState.DEGRADED):
            return []
        if self.agreed():
            effects = self._set_state(MeshState.READY, reason, now)
            if self.me.auto and not self.sealed and all(view and view.ready for view in self.views.values()):
                self.sealed = True
            return effects + self._announce() if effects else effects
        if self.state is MeshState.READY:
            return self._set_state(MeshState.DEGRADED, reason, now) + self._announce()
        return []

    def _set_state(self, state: MeshState, reason: str, now: float) -> list[Effect]:
        if state is self.state:
            return []
        if state not in TRANSITIONS[self.state]:
            raise LocalProtocolError(f"mesh state {self.state} cannot become {state}")
        self.state, self.state_since = state, now
        self._view_changed()  # its ready flag
        epoch = None if state is MeshState.AWAITING else self.me.epoch
        return [self._event(StateChanged, now, state=state, epoch=epoch, reason=reason)]

    def _event(self, kind: type[MeshEvent], now: float, **fields: object) -> Publish:
        return Publish(kind(time=now, index=self.me.index, **fields))

    def _linked(self, slot: int) -> int:
        row = self.rows[slot]
        return row.incarnation or 0 if row.state is PeerState.UP else 0

    def _view_changed(self) -> None:
        self._view = None
        self._view_frame = None

    def _fresh_members(self) -> tuple[int, ...]:
        return tuple(self.me.incarnation if slot == self.me.index else 0 for slot in range(self.me.size))


def _with(members: tuple[int, ...], slot: int, incarnation: int) -> tuple[int, ...]:
    """Write-once: a slot's member is set only while it is 0 (or to the incarnation it already holds)."""
    assert members[slot] in (0, incarnation), "a generation's member is written once"
    return (*members[:slot], incarnation, *members[slot + 1 :])
