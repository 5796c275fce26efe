"""Data connections: the sockets a worker gets, one per pair of processes and generation. Pure rules, no I/O.

The control link carries hellos, heartbeats and views; a data connection carries nothing of meshd's after its
first frame. Once the control link to a peer is up in a generation, the process with the lower index dials the
other's mesh port and sends one DATA hello naming the generation and both incarnations; the acceptor answers ACCEPT
only when the hello names its own generation and incarnation and the incarnation its control link holds in the
dialer's slot, else REFUSE (the dialer retries while the link stays up). Both frames have a fixed size, so each end
reads exactly them: the first byte a worker reads is the first byte the peer's worker wrote.
"""

from __future__ import annotations

from meshd.core.hello import Identity
from meshd.core.wire import Accept, DataHello, Refuse, RefuseReason


def dials_data(me: int, peer: int) -> bool:
    """Whether ``me`` dials the data connection of the pair (the lower index does: one connection per pair)."""
    return me < peer


def data_hello(me: Identity, peer: int, peer_incarnation: int) -> DataHello:
    return DataHello(me.index, peer, me.epoch, me.incarnation, peer_incarnation)


def judge_data(hello: DataHello, me: Identity, holder: int | None) -> Accept | Refuse:
    """The acceptor's answer to a DATA hello; ``holder`` is the incarnation our up control link holds in the
    sender's slot (None while that link is down). Never across generations, never from another incarnation."""
    if hello.target != me.index or not 0 <= hello.sender < me.size or not dials_data(hello.sender, me.index):
        return Refuse(RefuseReason.WRONG_INDEX, me.epoch, f"data hello from {hello.sender} to {hello.target}")
    if hello.epoch < me.epoch:
        return Refuse(RefuseReason.STALE_EPOCH, me.epoch, f"data hello of generation {hello.epoch}, ours is newer")
    if hello.epoch > me.epoch:
        return Refuse(RefuseReason.BEHIND, me.epoch, f"data hello of generation {hello.epoch}, ours is older")
    if hello.target_incarnation != me.incarnation:
        detail = f"the data hello is for incarnation {hello.target_incarnation:016x}"
        return Refuse(RefuseReason.RETIRED, me.epoch, detail)
    if holder != hello.incarnation:
        held = "no link" if holder is None else f"incarnation {holder:016x}"
        return Refuse(RefuseReason.RETIRED, me.epoch, f"our link to slot {hello.sender} holds {held}")
    return Accept()
