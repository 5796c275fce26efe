"""The metrics without I/O (``meshd.metrics``): events fed by hand, a status given by hand, the text format parsed
back with prometheus_client's own parser. The gauges follow the status, the counters count by label, the recovery
histogram measures each episode of unavailability once (from the start, or from a ready mesh's first disturbance),
and every daemon has a registry of its own. The endpoint that serves them is in test_http.py.
"""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from meshd.core.address import Address
from meshd.core.status import (
    EndCause,
    Fenced,
    GenerationMoved,
    LinkDown,
    LinkEnd,
    LinkUp,
    MeshState,
    PeerRestarted,
    PeerRow,
    PeerState,
    StateChanged,
    Status,
    WorkerExited,
    WorkerStarted,
    WorkerState,
    WorkerStatus,
)
from meshd.core.wire import Epoch, RefuseReason
from meshd.metrics import RECOVERY_BUCKETS, MeshMetrics
from tests.harness.procs import HOST

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    """Every sample of a scrape, by name and sorted labels (prometheus_client's own parser: the format is valid)."""
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[name, tuple(sorted(labels.items()))]


# ----- the metrics, fed by hand

STARTED = 1000.0
EPOCH = Epoch(5)


def peers(up: int, size: int = 3) -> tuple[PeerRow, ...]:
    return tuple(
        PeerRow(index, Address(HOST, 7000 + index), PeerState.UP if index <= up else PeerState.DOWN)
        for index in range(1, size)
    )


class FakeDaemon:
    """A status to read at each scrape (the daemon's JSON form), changed by the test."""

    def __init__(self, state: MeshState = MeshState.FORMING, epoch: Epoch | None = EPOCH, **fields: Any) -> None:
        self.current = Status(
            cluster="demo",
            index=0,
            size=3,
            epoch=epoch,
            mode="fixed",
            sealed=False,
            generation_changes=0,
            incarnation=0xABC,
            state=state,
            state_since=STARTED,
            started=STARTED,
            peers=peers(0),
            **fields,
        )

    def status(self) -> dict[str, Any]:
        return self.current.to_json()


def state(to: MeshState, at: float) -> StateChanged:
    return StateChanged(time=at, index=0, state=to, epoch=Epoch(5), reason="test")


def down(peer: int, at: float, cause: EndCause = EndCause.CLOSED, refused: RefuseReason | None = None) -> LinkDown:
    return LinkDown(time=at, index=0, peer=peer, reason="test", cause=cause, refused=refused)


def recovery(metrics: MeshMetrics, after: str) -> tuple[float, float]:
    """The count and sum of the recovery histogram's ``after`` series."""
    samples = parse(metrics.render().decode())
    return (
        value(samples, "meshd_recovery_seconds_count", after=after),
        value(samples, "meshd_recovery_seconds_sum", after=after),
    )


def test_gauges_follow_the_status_at_each_scrape():
    daemon = FakeDaemon(auth_failures=3, handshakes_shed=2, admin_rejected=1)
    metrics = MeshMetrics(daemon.status, worker=False, version="9.9")
    samples = parse(metrics.render().decode())
    assert value(samples, "meshd_info", cluster="demo", index="0", mode="fixed", version="9.9") == 1
    assert value(samples, "meshd_mesh_state", state="forming") == 1
    assert sum(value(samples, "meshd_mesh_state", state=each.value) for each in MeshState) == 1
    assert value(samples, "meshd_epoch") == 5
    assert (value(samples, "meshd_peers"), value(samples, "meshd_links_up")) == (2, 0)
    assert value(samples, "meshd_auth_failures_total") == 3
    assert value(samples, "meshd_handshakes_shed_total") == 2
    assert value(samples, "meshd_admin_rejected_total") == 1
    assert not [name for name, _ in samples if name.startswith("meshd_worker")]  # no worker configured

    daemon.current = attrs.evolve(
        daemon.current, state=MeshState.READY, peers=peers(2), epoch=Epoch(1_790_000_000_000, 0xBEEF)
    )
    samples = parse(metrics.render().decode())
    assert value(samples, "meshd_mesh_state", state="ready") == 1
    assert value(samples, "meshd_mesh_state", state="forming") == 0
    assert value(samples, "meshd_links_up") == 2
    assert value(samples, "meshd_epoch") == 1_790_000_000_000  # an auto generation: its milliseconds


def test_no_epoch_sample_while_awaiting_the_start_op():
    metrics = MeshMetrics(FakeDaemon(MeshState.AWAITING, epoch=None).status, worker=False)
    samples = parse(metrics.render().decode())
    assert not [name for name, _ in samples if name == "meshd_epoch"]
    assert value(samples, "meshd_mesh_state", state="awaiting") == 1


def test_link_failures_attempts_and_refusals_are_counted_by_label():
    metrics = MeshMetrics(FakeDaemon().status, worker=False)
    metrics.observe(down(1, 1001, EndCause.SILENCE))
    metrics.observe(down(2, 1001, EndCause.REFUSED, RefuseReason.STALE_EPOCH))
    metrics.observe(down(2, 1002, EndCause.SILENCE))
    metrics.attempt_failed(LinkEnd(EndCause.UNREACHABLE, "connection refused"))
    metrics.attempt_failed(LinkEnd(EndCause.REFUSED, "refused", RefuseReason.SEALED))
    metrics.observe(PeerRestarted(time=1003, index=0, peer=1, incarnation=7))
    metrics.observe(LinkUp(time=1003, index=0, peer=1, epoch=Epoch(5), direction="dialed"))
    samples = parse(metrics.render().decode())
    assert value(samples, "meshd_link_failures_total", cause="silence") == 2
    assert value(samples, "meshd_link_failures_total", cause="refused") == 1
    assert value(samples, "meshd_link_failures_total", cause="closed") == 0  # every cause shown from the start
    assert value(samples, "meshd_link_attempt_failures_total", cause="unreachable") == 1
    assert value(samples, "meshd_refusals_total", reason="stale_epoch") == 1
    assert value(samples, "meshd_refusals_total", reason="sealed") == 1
    assert value(samples, "meshd_refusals_total", reason="auth_failed") == 0
    assert value(samples, "meshd_peer_restarts_total") == 1


def test_formation_is_measured_from_the_start():
    metrics = MeshMetrics(FakeDaemon().status, worker=False)
    metrics.observe(down(1, 1000.1))  # a failure while forming is no fault of a ready mesh
    metrics.observe(state(MeshState.READY, 1000.3))
    assert recovery(metrics, "start") == (1, pytest.approx(0.3))
    assert recovery(metrics, "fault") == (0, 0)


def test_an_episode_is_measured_once_from_its_first_disturbance():
    metrics = MeshMetrics(FakeDaemon().status, worker=False)
    metrics.observe(state(MeshState.READY, 1001))
    metrics.observe(down(1, 1010))  # while ready: the clock starts
    metrics.observe(state(MeshState.DEGRADED, 1010))
    metrics.observe(down(2, 1011))  # the same episode
    metrics.observe(state(MeshState.READY, 1012.5))
    assert recovery(metrics, "fault") == (1, pytest.approx(2.5))
    # A peer's report alone (no link of ours down) also disturbs a ready mesh.
    metrics.observe(state(MeshState.DEGRADED, 1020))
    metrics.observe(state(MeshState.READY, 1020.04))
    assert recovery(metrics, "fault") == (2, pytest.approx(2.54))
    samples = parse(metrics.render().decode())
    assert value(samples, "meshd_recovery_seconds_bucket", after="fault", le="0.05") == 1
    assert value(samples, "meshd_recovery_seconds_bucket", after="fault", le="2.5") == 2
    assert value(samples, "meshd_recovery_seconds_bucket", after="fault", le="+Inf") == 2
    bounds = [
        dict(labels)["le"] for name, labels in samples if name.endswith("_bucket") and ("after", "fault") in labels
    ]
    assert bounds == [*(str(bound) for bound in RECOVERY_BUCKETS), "+Inf"]


def test_a_generation_move_is_a_fault_of_a_ready_mesh_only():
    metrics = MeshMetrics(FakeDaemon().status, worker=False)
    metrics.observe(GenerationMoved(time=1000.2, index=0, epoch=Epoch(6), reason="test"))  # still forming
    metrics.observe(state(MeshState.FORMING, 1000.2))
    metrics.observe(state(MeshState.READY, 1000.5))
    assert recovery(metrics, "start") == (1, pytest.approx(0.5))
    metrics.observe(GenerationMoved(time=1005, index=0, epoch=Epoch(7), reason="test"))
    metrics.observe(down(1, 1005, EndCause.LOCAL))
    metrics.observe(state(MeshState.FORMING, 1005))
    metrics.observe(state(MeshState.READY, 1005.75))
    assert recovery(metrics, "fault") == (1, pytest.approx(0.75))
    samples = parse(metrics.render().decode())
    assert value(samples, "meshd_link_failures_total", cause="local") == 1


def test_await_mode_measures_from_the_start_op():
    metrics = MeshMetrics(FakeDaemon(MeshState.AWAITING, epoch=None).status, worker=False)
    metrics.observe(state(MeshState.FORMING, 1050))
    metrics.observe(state(MeshState.READY, 1050.2))
    assert recovery(metrics, "start") == (1, pytest.approx(0.2))


def test_a_fence_and_the_worker():
    daemon = FakeDaemon(MeshState.READY)
    metrics = MeshMetrics(daemon.status, worker=True)
    samples = parse(metrics.render().decode())
    assert all(value(samples, "meshd_worker_state", state=each.value) == 0 for each in WorkerState)
    metrics.observe(WorkerStarted(time=1001, index=0, pid=42, epoch=Epoch(5)))
    daemon.current = attrs.evolve(daemon.current, worker=WorkerStatus(42, WorkerState.RUNNING, 1001.0))
    samples = parse(metrics.render().decode())
    assert value(samples, "meshd_worker_state", state="running") == 1
    assert value(samples, "meshd_worker_starts_total") == 1
    fence = Fenced(time=1002, index=0, epoch=Epoch(5), reason="t", newer=Epoch(6), source="peer 1", cause="newer_epoch")
    metrics.observe(fence)
    metrics.observe(WorkerExited(time=1002, index=0, pid=42, epoch=Epoch(5), exit=-15, reason="stopped"))
    samples = parse(metrics.render().decode())
    assert value(samples, "meshd_fences_total") == 1
    assert value(samples, "meshd_worker_exits_total", outcome="stopped") == 1
    assert value(samples, "meshd_worker_exits_total", outcome="failed") == 0


def test_a_worker_that_ends_by_itself_is_done_or_failed():
    metrics = MeshMetrics(FakeDaemon(MeshState.READY).status, worker=True)
    metrics.observe(state(MeshState.READY, 1001))
    metrics.observe(WorkerExited(time=1002, index=0, pid=42, epoch=Epoch(5), exit=0, reason="done"))
    metrics.observe(WorkerExited(time=1003, index=0, pid=43, epoch=Epoch(5), exit=None, reason="left"))
    samples = parse(metrics.render().decode())
    assert value(samples, "meshd_worker_exits_total", outcome="done") == 1
    assert value(samples, "meshd_worker_exits_total", outcome="failed") == 1


def test_every_daemon_has_a_registry_of_its_own():
    first, second = (MeshMetrics(FakeDaemon().status, worker=False) for _ in range(2))
    first.observe(down(1, 1001))
    assert value(parse(first.render().decode()), "meshd_link_failures_total", cause="closed") == 1
    assert value(parse(second.render().decode()), "meshd_link_failures_total", cause="closed") == 0
    assert not [family for family in REGISTRY.collect() if family.name.startswith("meshd")]
