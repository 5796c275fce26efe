"""Failure mode: strangers on the mesh port. A host that knows the cluster's name and even its processes'
incarnations, but not its key, tries to fence, join or replay its way in; a peer with the wrong key; an operator
rolls a new key onto a running cluster. All through real daemons with a cluster secret (the harness gives every
cluster one).

What must hold: no field of an unauthenticated hello has an effect (nobody is fenced, in either epoch mode, the
ready mesh sees no event), the stranger learns nothing of the daemon's state (no hello, refusals with epoch 0) and is
refused AUTH_FAILED and counted (``auth_failures``); a peer with the wrong key never links and sees AUTH_FAILED; a
recorded handshake replays nowhere; a key rotation (roll out, make first, remove) never takes a link down. The
control case shows that the same forged hello does fence when it comes from a keyholder: the tests can fail.

Floods of strangers are in test_flood.py; bad key files and the admin token in test_secrets_and_exposure.py and
test_admin_security.py; the handshake without sockets in test_auth.py.
"""

from __future__ import annotations

import os
import secrets
import signal
from pathlib import Path
from typing import Any

import pytest
import trio

from meshd.core.address import Address
from meshd.core.auth import Keyring, parse_keys
from meshd.core.generation import MAJOR_CEILING
from meshd.core.wire import NO_TARGET, Challenge, Epoch, Hello, Refuse, RefuseReason, encode
from meshd.errors import ExitCode
from meshd.secret import KEY_FILE_MODE, new_key_line
from tests.harness.peer import Exchanged, exchange, send_raw
from tests.harness.procs import (
    DISTURBANCES,
    HOST,
    Cluster,
    Daemon,
    Harness,
    free_ports,
    is_ready,
    watching,
    write_config,
)

# A key no process of the cluster holds.
STRANGER_KEY = Keyring((bytes(range(100, 132)),))


def _epoch_of(status: dict[str, Any]) -> Epoch:
    epoch = status["epoch"]
    if isinstance(epoch, int):
        return Epoch(epoch)
    major, _, minor = epoch.partition(".")
    return Epoch(int(major), int(minor, 16))


async def _ready_cluster(harness: Harness, mode: str, size: int = 3) -> tuple[Cluster, list[Daemon], list[dict]]:
    """A ready cluster of ``size`` daemons: fixed epoch 1, or self-minted generations (no orchestrator: nobody may
    exit in these tests, and an exit fails them)."""
    cluster = harness.cluster(size)
    if mode == "fixed":
        daemons = harness.start_all(cluster, epoch=1)
        return cluster, daemons, await harness.wait_ready(daemons, epoch=1)
    daemons = [harness.start(cluster, index, "auto") for index in range(size)]

    async def one_generation() -> tuple[bool, Any]:
        for daemon in daemons:
            harness.check(daemon.returncode is None, f"{daemon.name} exited {daemon.returncode}")
        found = await harness.statuses(daemons)
        epochs = {None if status is None else status["epoch"] for status in found}
        done = len(epochs) == 1 and all(status is not None and is_ready(status, status["epoch"]) for status in found)
        return done, found

    return cluster, daemons, await harness.eventually(one_generation, "one ready generation")


def _forged_hello(status: dict[str, Any], mode: str, victim: int) -> Hello:
    """The most convincing forgery: from another slot of the cluster, with that slot's live incarnation, at an
    epoch newer than the victim's (fixed: the largest; auto: a generation just above it, within the ceiling)."""
    sender = next(peer for peer in status["peers"] if peer["index"] != victim)
    ours = _epoch_of(status)
    epoch = Epoch(2**63) if mode == "fixed" else Epoch(min(ours.major + 1000, MAJOR_CEILING), 1)
    return Hello(status["cluster"], sender["index"], victim, epoch, int(sender["incarnation"], 16), mode == "auto")


def _as_newer_peer(forged: Hello) -> Refuse:
    """What a peer at ``forged``'s newer epoch answers the victim's older hello (the victim then follows: exits)."""
    return Refuse(RefuseReason.STALE_EPOCH, forged.epoch, "your epoch is older")


def _check_nothing_disclosed(harness: Harness, where: str, result: Exchanged) -> None:
    """The daemon sent its challenge (and maybe a proof), a refusal with epoch 0, and never its hello."""
    frames = result.frames()
    harness.check(
        frames and isinstance(frames[0], Challenge) and not any(isinstance(frame, Hello) for frame in frames),
        f"{where}: the daemon disclosed more than a challenge: {frames}",
    )
    refusals = [frame for frame in frames if isinstance(frame, Refuse)]
    harness.check(
        refusals == [] or (refusals[-1].reason is RefuseReason.AUTH_FAILED and refusals[-1].epoch == Epoch(0)),
        f"{where}: expected an AUTH_FAILED refusal with epoch 0, got {refusals}",
    )


async def _check_undisturbed(
    harness: Harness, daemons: list[Daemon], watches: list, before: list[dict], *, strangers: int
) -> None:
    """Every daemon still runs, ready in the same epoch on the same links, saw no event, and counted
    ``strangers`` more auth failures in all."""
    after = await harness.statuses(daemons)
    for daemon, watch, old, new in zip(daemons, watches, before, after, strict=True):
        harness.check(daemon.returncode is None, f"{daemon.name} exited {daemon.returncode}")
        harness.check(not watch.of(*DISTURBANCES), f"{daemon.name} was disturbed: {watch.of(*DISTURBANCES)}")
        harness.check(new is not None and is_ready(new, old["epoch"]), f"{daemon.name} left ready: {new}")
        assert new is not None
        harness.check(
            [(p["incarnation"], p["connects"]) for p in new["peers"]]
            == [(p["incarnation"], p["connects"]) for p in old["peers"]],
            f"{daemon.name}'s links changed: {old['peers']} -> {new['peers']}",
        )
    counted = sum(new["auth_failures"] - old["auth_failures"] for old, new in zip(before, after, strict=True))
    harness.check(counted == strangers, f"auth_failures grew by {counted}, expected {strangers}: {after}")


# ----- forged epochs


@pytest.mark.parametrize("mode", ["fixed", "auto"])
@pytest.mark.parametrize("credential", ["no key", "wrong key"])
async def test_a_strangers_forged_newer_epoch_fences_nobody(harness: Harness, mode: str, credential: str):
    """A newer epoch, from "another slot" with its live incarnation, to every daemon: without a key as a bare hello
    (the 40-byte attack), or through the handshake under a wrong key. Refused AUTH_FAILED, nothing disclosed,
    nothing changes."""
    cluster, daemons, before = await _ready_cluster(harness, mode)
    async with watching(harness, daemons) as watches:
        for victim, status in enumerate(before):
            forged = _forged_hello(status, mode, victim)
            where = f"{credential} to daemon {victim}"
            if credential == "no key":
                result = await send_raw(cluster.mesh(victim), encode(forged))
            else:
                result = await exchange(cluster.mesh(victim), forged, STRANGER_KEY)
                harness.check(result.daemon_hello is None, f"{where}: the handshake went through: {result.events}")
            _check_nothing_disclosed(harness, where, result)
        await trio.sleep(2 * cluster.timeouts["heartbeat_timeout"])  # long enough for a fence or a link loss to show
        await _check_undisturbed(harness, daemons, watches, before, strangers=len(daemons))


async def test_a_keyholders_newer_epoch_still_fences(harness: Harness):
    """The control: the same forged hello through the handshake under the cluster's key fences its victim (exit
    75), as a real newer epoch does. Authentication changes who may speak, not the rules."""
    cluster, daemons, before = await _ready_cluster(harness, "fixed")
    forged = _forged_hello(before[0], "fixed", 0)
    result = await exchange(cluster.mesh(0), forged, cluster.keyring(), answer=_as_newer_peer(forged))
    harness.check(result.daemon_hello is not None, f"the keyholder's handshake failed: {result.events}")
    code = await harness.wait_exit(daemons[0])
    harness.check(code == ExitCode.FENCED, f"daemon 0 exited {code} after a keyholder's newer epoch, expected 75")


# ----- a peer with the wrong key


@pytest.mark.parametrize("mode", ["fixed", "auto"])
async def test_a_peer_with_the_wrong_key_never_links_and_is_told_auth_failed(harness: Harness, mode: str):
    """A real daemon of the same cluster name and peers, as slot 2 at a newer epoch (fixed) or in auto mode, with
    its own key: it dials the others for several seconds and never links; its rows show AUTH_FAILED; the ready
    mesh counts it and is not disturbed."""
    cluster, daemons, before = await _ready_cluster(harness, mode)
    other = harness.tmp / "other"
    other.mkdir()
    own_mesh, own_admin = free_ports(2)
    config = write_config(other / "other.toml", cluster.name, [*cluster.mesh_ports[:2], own_mesh], cluster.timeouts)
    epoch = 2 if mode == "fixed" else "auto"
    async with watching(harness, daemons[:2]) as watches:
        intruder = harness.start(cluster, 2, epoch, config=config, admin=Address(HOST, own_admin), name="wrong-key")

        async def refused_by_both() -> tuple[bool, Any]:
            harness.check(intruder.returncode is None, f"the wrong-key daemon exited {intruder.returncode}")
            [status] = await harness.statuses([intruder])
            rows = [] if status is None else [peer for peer in status["peers"] if peer["index"] in (0, 1)]
            done = len(rows) == 2 and all(
                row["failures"] >= 3 and row["last_refused"] == "auth_failed" and row["connects"] == 0 for row in rows
            )
            return done, status

        await harness.eventually(refused_by_both, "the wrong-key daemon to be refused AUTH_FAILED by 0 and 1")
        after = await harness.statuses(daemons[:2])
    for daemon, watch, old, new in zip(daemons[:2], watches, before[:2], after, strict=True):
        harness.check(not watch.of(*DISTURBANCES), f"{daemon.name} was disturbed: {watch.of(*DISTURBANCES)}")
        harness.check(new is not None and is_ready(new, old["epoch"]), f"{daemon.name} left ready: {new}")
        assert new is not None
        harness.check(new["auth_failures"] > old["auth_failures"], f"{daemon.name} did not count the intruder: {new}")
    harness.check(daemons[2].returncode is None, f"the real slot 2 exited {daemons[2].returncode}")


# ----- replays


async def test_a_recorded_fence_replays_nowhere(harness: Harness):
    """A keyholder's fencing handshake recorded against a throwaway daemon of the same cluster and key (which it
    fenced), then replayed byte for byte to the live cluster: the recorded proof answers another nonce, so the
    replay is refused AUTH_FAILED before its hello is read, and nobody is fenced."""
    cluster, daemons, before = await _ready_cluster(harness, "fixed")
    # Slot 0 of a copy of the cluster on ports of its own: the same name and key, none of the live processes.
    throwaway_mesh, throwaway_admin, *elsewhere = free_ports(2 + cluster.size - 1)
    throwaway_config = write_config(
        harness.tmp / "throwaway.toml", cluster.name, [throwaway_mesh, *elsewhere], cluster.timeouts
    )
    throwaway = harness.start(
        cluster, 0, 1, config=throwaway_config, admin=Address(HOST, throwaway_admin), name="throwaway"
    )
    forged = _forged_hello(before[0], "fixed", 0)
    address = Address(HOST, throwaway_mesh)

    async def recorded() -> tuple[bool, Any]:
        try:
            result = await exchange(address, forged, cluster.keyring(), answer=_as_newer_peer(forged))
        except OSError as exc:  # not listening yet
            return False, repr(exc)
        return result.daemon_hello is not None, result

    recording: Exchanged = await harness.eventually(recorded, "a recorded fencing handshake")
    code = await harness.wait_exit(throwaway)
    harness.check(code == ExitCode.FENCED, f"the recorded handshake did not fence the throwaway daemon: {code}")
    async with watching(harness, daemons) as watches:
        for victim in range(cluster.size):
            result = await send_raw(cluster.mesh(victim), recording.sent)
            _check_nothing_disclosed(harness, f"replay to daemon {victim}", result)
        await trio.sleep(2 * cluster.timeouts["heartbeat_timeout"])
        await _check_undisturbed(harness, daemons, watches, before, strangers=len(daemons))


# ----- key rotation


def _replace(path: Path, keys: list[str]) -> None:
    """Write a key file the way an operator's tooling should: a new file, renamed over the old one."""
    fresh = path.with_suffix(".new")
    descriptor = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, KEY_FILE_MODE)
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        file.write("".join(keys))
    os.replace(fresh, path)


def _rewrite_unnoticed(path: Path, keys: list[str]) -> None:
    """Rewrite a key file in place with text of the same size and put its modification time back: a change only
    SIGHUP makes the daemon see (its handshakes compare inode, size and modification time)."""
    stamp = path.stat()
    text = "".join(keys)
    assert len(text.encode()) == stamp.st_size
    with path.open("r+", encoding="utf-8") as file:
        file.write(text)
    os.utime(path, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))


async def _authenticates(cluster: Cluster, index: int, keys: list[str], epoch: int) -> bool:
    """Whether a keyholder probe with ``keys`` (signing with the first) completes the handshake with daemon
    ``index``: a stale hello from another slot, answered STALE_EPOCH, which changes nothing."""
    keyring = Keyring(parse_keys("".join(keys)))
    probe = Hello(cluster.name, (index + 1) % cluster.size, NO_TARGET, Epoch(epoch - 1), secrets.randbits(64))
    result = await exchange(cluster.mesh(index), probe, keyring)
    return result.daemon_hello is not None


async def test_a_key_rotation_takes_no_link_down(harness: Harness):
    """Every daemon has its own copy of the key file (``--secret-file``). The operator rolls key B onto every copy
    (second), makes it first everywhere, then removes key A. Two steps replace the file (the handshakes notice);
    making B first rewrites it in place unnoticeably, so only the SIGHUP sent then can make the daemons see it.
    Probes under each keyring show which keys each daemon accepts and signs
    with after each step; the links of the ready mesh never go down; finally a daemon restarted with only key B
    rejoins (new links under the new key)."""
    cluster = harness.cluster(3)
    key_a, key_b = new_key_line(), new_key_line()
    files = [harness.tmp / f"d{index}.key" for index in range(cluster.size)]
    for path in files:
        _replace(path, [key_a])
    daemons = [
        harness.start(cluster, index, 1, extra_args=["--secret-file", str(path)]) for index, path in enumerate(files)
    ]
    before = await harness.wait_ready(daemons, epoch=1)
    # (keys on every daemon's file, reload by SIGHUP?, probes that must authenticate, probes that must not)
    steps = [
        ([key_a], False, [[key_a]], [[key_b], [key_b, key_a]]),
        ([key_a, key_b], False, [[key_a], [key_b, key_a]], [[key_b]]),
        ([key_b, key_a], True, [[key_b], [key_a, key_b]], [[key_a]]),
        ([key_b], False, [[key_b], [key_b, key_a]], [[key_a], [key_a, key_b]]),
    ]
    async with watching(harness, daemons) as watches:
        for number, (keys, hangup, accepted, refused) in enumerate(steps):
            for path in files:
                (_rewrite_unnoticed if hangup else _replace)(path, keys)
            if hangup:
                for daemon in daemons:
                    daemon.signal(signal.SIGHUP)
            for index in range(cluster.size):
                for probe in accepted + refused:

                    async def settled(
                        probe: list[str] = probe, index: int = index, accepted: list = accepted
                    ) -> tuple[bool, Any]:
                        return await _authenticates(cluster, index, probe, 1) == (probe in accepted), probe

                    # A SIGHUP is handled asynchronously: the probe may come first, so allow it a bounded wait.
                    await harness.eventually(settled, f"step {number}: daemon {index} under probe keys {probe}")
        restarted = harness.start(cluster, 2, 1, extra_args=["--secret-file", str(files[2])], name="d2-restarted")
        daemons[2].signal(signal.SIGKILL)
        await harness.wait_exit(daemons[2])
        await harness.wait_ready([daemons[0], daemons[1], restarted], epoch=1)
        after = await harness.statuses(daemons[:2])
    for daemon, watch, old, new in zip(daemons[:2], watches[:2], before[:2], after, strict=True):
        down = [event for event in watch.of("link_down") if event["peer"] != 2]
        harness.check(not down, f"{daemon.name} lost a link other than the restarted slot's: {down}")
        assert new is not None
        other = next(peer for peer in new["peers"] if peer["index"] != 2)
        old_other = next(peer for peer in old["peers"] if peer["index"] == other["index"])
        harness.check(other["connects"] == old_other["connects"], f"{daemon.name} relinked during the rotation")
