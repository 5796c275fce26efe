"""The deciding rules as tables, read off the code, for models that cannot call it (the Promela model).

``judge_table`` runs the real ``MeshModel.judge`` on one model per abstract situation (how the peer's epoch compares
with ours, what our generation holds in the peer's slot, whether our ready mesh links that slot, whether our own
hello on the connection still says our epoch) and records the answer and the action; ``conclusion_table`` and
``move_table`` are ``meshd.core.hello.CONCLUSIONS`` and ``MOVES`` over the answers that occur. ``promela`` renders
the three as Promela inline code: docs/model/rules.pml is that output, and a test fails when the two differ, so the
spin model cannot drift from the code.
"""

from __future__ import annotations

import itertools
import sys

from attrs import frozen

from meshd.core.address import Address
from meshd.core.generation import EpochMode
from meshd.core.hello import Action, Identity, Move, Outcome, Standing, answer_name, conclude, move
from meshd.core.mesh import MeshModel
from meshd.core.status import MeshState, PeerState
from meshd.core.wire import Accept, Answer, Epoch, Goodbye, Refuse, RefuseReason

# What our generation holds in the peer's slot: nothing yet, the peer's own incarnation, or another incarnation.
HOLDS = ("NONE", "SAME", "OTHER")
# How the peer's epoch compares with ours.
RELATIONS = ("OLDER", "EQUAL", "NEWER")
# The answers an exchange between meshd processes of one cluster can carry ("NONE": it never came).
ANSWERS = ("ACCEPT", "STALE_EPOCH", "SEALED", "RETIRED", "BEHIND", "GOODBYE", "NONE")

OURS = Epoch(10)
PEER_EPOCH = {"OLDER": Epoch(5), "EQUAL": OURS, "NEWER": Epoch(20)}
ME, PEER, OTHER = 0xA, 0xB, 0xC


@frozen
class Situation:
    mode: str  # "auto" or "fixed"
    relation: str
    member: str  # auto: HOLDS
    ready: bool  # auto: our mesh is ready (then every slot holds a member, linked)
    fresh: bool  # our hello on this connection still says our epoch


def situations() -> list[Situation]:
    found = []
    for relation, fresh in itertools.product(RELATIONS, (True, False)):
        found.append(Situation("fixed", relation, "NONE", False, fresh))
        for member, ready in itertools.product(HOLDS, (False, True)):
            if not (ready and member == "NONE"):
                found.append(Situation("auto", relation, member, ready, fresh))
    return found


def _model(situation: Situation) -> MeshModel:
    auto = situation.mode == "auto"
    me = Identity("x", 0, 2, OURS, ME, auto)
    addresses = [Address("10.0.0.1", 7000), Address("10.0.0.2", 7000)]
    model = MeshModel(
        me, addresses, EpochMode.AUTO if auto else EpochMode.FIXED, 0.0, (lambda _: OURS) if auto else None
    )
    if auto:
        held = {"NONE": 0, "SAME": PEER, "OTHER": OTHER}[situation.member]
        model.members = (ME, held)
        if situation.ready:
            row = model.rows[1]
            row.state, row.incarnation = PeerState.UP, held
            model.state, model.sealed = MeshState.READY, True
    return model


def judge_table() -> dict[Situation, tuple[str, str]]:
    """Situation -> (answer, action), as the real ``MeshModel.judge`` decides it."""
    table = {}
    for situation in situations():
        model = _model(situation)
        hello = Identity("x", 1, 2, PEER_EPOCH[situation.relation], PEER, situation.mode == "auto").hello(None)
        sent = OURS if situation.fresh else Epoch(1)
        exchange = model.judge(hello, None, sent)
        table[situation] = (answer_name(exchange.answer), exchange.judgement.action.name)
    return table


def _answer(name: str) -> Answer | None:
    if name == "ACCEPT":
        return Accept()
    if name == "GOODBYE":
        return Goodbye("")
    if name == "NONE":
        return None
    return Refuse(RefuseReason[name], OURS, "")


def conclusion_table() -> dict[tuple[str, str], str]:
    return {
        (action.name, answer): conclude(action, _answer(answer)).name
        for action, answer in itertools.product(Action, ANSWERS)
    }


def move_table() -> dict[tuple[str, str], str]:
    return {
        (outcome.name, standing.name): move(outcome, standing).name
        for outcome, standing in itertools.product(Outcome, Standing)
    }


def promela() -> str:
    """The three tables as Promela: constants and three inline functions (docs/model/rules.pml)."""
    lines = [
        "/* The deciding rules of meshd, read off the code by meshd.explore.tables (python -m meshd.explore.tables).",
        " * Generated: do not edit. tests/test_model.py fails when this file differs from what the code decides. */",
        "",
    ]
    for prefix, names in (
        ("REL", RELATIONS),
        ("HOLD", HOLDS),
        ("ANS", ANSWERS),
        ("ACT", [action.name for action in Action]),
        ("OUT", [outcome.name for outcome in Outcome]),
        ("STAND", [standing.name for standing in Standing]),
        ("MOVE", [what.name for what in Move]),
    ):
        lines += [f"#define {prefix}_{name} {number}" for number, name in enumerate(names)]
        lines.append("")
    lines += [
        "/* judge(mode auto?, relation, member held, ready?, our hello fresh?) -> answer, action (MeshModel.judge) */",
        "inline judge(auto, rel, hold, rdy, fresh, answer, action) {",
        "    if",
    ]
    for situation, (answer, action) in judge_table().items():
        auto = int(situation.mode == "auto")
        guard = f"auto == {auto} && rel == REL_{situation.relation} && fresh == {int(situation.fresh)}"
        if auto:
            guard += f" && hold == HOLD_{situation.member} && rdy == {int(situation.ready)}"
        lines.append(f"    :: {guard} -> answer = ANS_{answer}; action = ACT_{action}")
    lines += ["    fi", "}", "", "/* conclude(action, peer's answer) -> outcome (CONCLUSIONS) */"]
    lines += ["inline conclude(action, answer, outcome) {", "    if"]
    for (action, answer), outcome in conclusion_table().items():
        lines.append(f"    :: action == ACT_{action} && answer == ANS_{answer} -> outcome = OUT_{outcome}")
    lines += [
        "    fi",
        "}",
        "",
        "/* move(outcome, standing) -> move (MOVES) */",
        "inline move(outcome, standing, what) {",
    ]
    lines.append("    if")
    for (outcome, standing), what in move_table().items():
        lines.append(f"    :: outcome == OUT_{outcome} && standing == STAND_{standing} -> what = MOVE_{what}")
    lines += ["    fi", "}", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(promela())
