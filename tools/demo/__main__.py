"""``python -m tools.demo``: see the package docstring. ``scripts/demo`` runs it (``scripts/demo --mesh-only`` runs
the alltoall demo instead)."""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio
from attrs import define
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from meshd.cluster.local import ClusterSpec, LocalCluster
from meshd.core.status import PeerState, Status
from tools.demo.results import Results, epoch_key

ROOT = Path(__file__).resolve().parents[2]
LAUNCH = ROOT / "examples" / "bytewax" / "launch.py"
# How often the mesh is asked for its state and the logs are read.
POLL = 0.5
# In plain mode (stdout not a terminal), how often a progress line is printed.
PLAIN_PROGRESS = 5.0
# Events kept on screen.
EVENTS_SHOWN = 12


@define
class Recovery:
    """One fault (or several in a row, before the mesh was ready again), and how long the recovery took."""

    fault: float  # wall clock of the (first) kill
    epoch: int  # the controller's epoch at the kill: recovered means every slot ready in a later one
    faults: int = 1
    ready_epoch: int | None = None
    mesh: float | None = None  # seconds from the kill to every slot ready in the new epoch
    results: float | None = None  # seconds from the kill to the first result of that epoch (or a later one)


def now() -> str:
    return time.strftime("%H:%M:%S")


class Demo(LocalCluster):
    """``meshd cluster``'s local cluster (controller, restart loops, chaos), with the demo's view instead of its
    table: mesh facts from the admin API, the job's results from the logs."""

    def __init__(self, spec: ClusterSpec, workdir: Path, console: Console, plain: bool) -> None:
        super().__init__(spec, workdir)
        self.console = console
        self.plain = plain
        self.results = Results()
        self.events: list[tuple[str, str, str]] = []  # (time, text, style)
        self.recoveries_done: list[Recovery] = []
        self.pending: Recovery | None = None  # mesh not ready again yet
        self.waiting: Recovery | None = None  # mesh ready again, results not resumed yet
        self.faults = 0
        self.started = time.monotonic()
        self.live: Live | None = None
        self._last_mesh = ""
        self._last_progress = 0.0

    # ----- what happens

    def event(self, text: str, style: str = "") -> None:
        self.events.append((now(), text, style))
        if self.plain:
            print(f"{now()} {text}", flush=True)

    def say(self, text: str) -> None:
        """The cluster's own sentences (a chaos kill, an exit and restart, the work running) become events; a kill
        (the chaos counter moved) starts timing a recovery."""
        if self.kills > self.faults:
            self.faults = self.kills
            epoch = int(self.controller.policy.current)
            if self.pending is None:
                self.pending = Recovery(time.time(), epoch)
            else:
                self.pending.faults += 1
            if self.waiting is not None:  # its results never resumed in its epoch
                self.recoveries_done.append(self.waiting)
                self.waiting = None
            self.event(f"fault {self.faults}: {text.removeprefix('chaos: ')}", "bold red")
            return
        if text.startswith("daemon "):
            self.event(text, "yellow")
        elif text.startswith("work running"):
            self.event(text, "cyan")
        # the rest (its own summary, where the logs are) is said by the demo at the end

    async def monitor(self) -> None:
        while True:
            self.statuses = await self.controller.statuses(0.5)
            self.check_recovery()
            self.report_work()
            await trio.to_thread.run_sync(self.read_results)
            self.show()
            await trio.sleep(POLL)

    def check_recovery(self) -> None:
        pending = self.pending
        epoch = int(self.controller.policy.current)
        if pending is None or epoch <= pending.epoch or not self.converged():
            return
        pending.mesh, pending.ready_epoch = time.time() - pending.fault, epoch
        self.pending, self.waiting = None, pending
        faults = f" ({pending.faults} faults)" if pending.faults > 1 else ""
        self.event(
            f"recovered{faults}: all {self.spec.size} slots ready at epoch {epoch}, "
            f"{pending.mesh:.1f}s after the fault",
            "bold green",
        )
        self.check_resumed()

    def read_results(self) -> None:
        self.results.scan(self.workdir)
        self.check_resumed()

    def check_resumed(self) -> None:
        waiting = self.waiting
        if waiting is None or waiting.ready_epoch is None:
            return
        firsts = [t for e, t in self.results.first.items() if epoch_key(e) >= (waiting.ready_epoch, "")]
        if firsts:
            waiting.results = max(0.0, min(firsts) - waiting.fault)
            self.recoveries_done.append(waiting)
            self.waiting = None
            self.event(
                f"results resumed at epoch {waiting.ready_epoch}, {waiting.results:.1f}s after the fault", "green"
            )

    # ----- the view

    def slot_rows(self) -> list[tuple[str, ...]]:
        rows = []
        for slot in self.controller.slots:
            current = slot.current
            pid = str(current.pid) if current is not None and current.running else "-"
            status: Status | None = self.ours(slot.index)
            if status is None:
                state = "foreign" if self.statuses[slot.index] is not None else "?"
                rows.append((str(slot.index), pid, "-", state, "-", "-", str(len(slot.history))))
                continue
            up = sum(peer.state is PeerState.UP for peer in status.peers)
            worker = status.worker
            shown = "-" if worker.state is None else f"{worker.state} {worker.pid or ''}".strip()
            rows.append(
                (str(slot.index), pid, str(status.epoch), str(status.state), f"{up}/{len(status.peers)}", shown,
                 str(len(slot.history)))
            )  # fmt: skip
        return rows

    def progress(self) -> str:
        r = self.results
        return f"windows completed {r.windows}, results checked {r.total}: {r.correct} correct, {r.incorrect} incorrect"

    def render(self) -> Group:
        elapsed = time.monotonic() - self.started
        until = f" of {self.spec.duration:.0f}s" if self.spec.duration else " (Ctrl-C ends it)"
        head = Text.assemble(
            ("meshd demo ", "bold"),
            f"{self.spec.size} bytewax processes under meshd, chaos every {self.spec.chaos:g}s; "
            f"controller epoch {self.controller.policy.current}; {elapsed:.0f}s{until}",
        )
        mesh = Table(title="the mesh (admin API of each daemon)", title_justify="left", expand=False)
        for column in ("slot", "daemon pid", "epoch", "state", "links", "worker", "starts"):
            mesh.add_column(column)
        for row in self.slot_rows():
            style = {"ready": "green", "degraded": "yellow", "forming": "yellow"}.get(row[3], "red")
            mesh.add_row(*row, style=style)
        r = self.results
        job = Text.assemble(
            ("the job (result lines in the daemons' logs, each checked)\n", "bold"),
            f"{self.progress()}\nlatest: ",
            (r.describe(), "green" if r.latest_ok else "bold red"),
        )
        events = Table(title="faults and recoveries", title_justify="left", show_header=False, box=None)
        for stamp, text, style in self.events[-EVENTS_SHOWN:]:
            events.add_row(stamp, Text(text, style=style))
        return Group(head, mesh, job, events)

    def show(self) -> None:
        if self.live is not None:
            self.live.update(self.render(), refresh=True)
            return
        mesh = " | ".join(
            f"{row[0]}: {row[3]}" + (f" e{row[2]} {row[4]} {row[5]}" if row[2] != "-" else "")
            for row in self.slot_rows()
        )
        if mesh != self._last_mesh:
            print(f"{now()} mesh: {mesh}", flush=True)
            self._last_mesh = mesh
        if time.monotonic() - self._last_progress >= PLAIN_PROGRESS and self.results.total:
            self._last_progress = time.monotonic()
            print(f"{now()} job: {self.progress()}; latest: {self.results.describe()}", flush=True)

    # ----- the end

    def report(self) -> list[str]:
        finished = [*self.recoveries_done, *([self.waiting] if self.waiting is not None else [])]
        done = [recovery for recovery in finished if recovery.mesh is not None]
        lines = [f"faults: {self.faults} (kill -9 of a daemon or of its worker, every {self.spec.chaos:g}s)"]
        if done:
            mesh = [recovery.mesh for recovery in done if recovery.mesh is not None]
            lines.append(
                f"recoveries: {len(done)}; mesh ready again in the new epoch: median {statistics.median(mesh):.1f}s, "
                f"max {max(mesh):.1f}s after the fault"
            )
            resumed = [recovery.results for recovery in done if recovery.results is not None]
            if not resumed:
                lines.append("results resumed: not yet in any recovery (the next fault or the end came first)")
            else:
                others = "" if len(resumed) == len(done) else "; in the others the next fault or the end came first"
                lines.append(
                    f"results resumed in the new epoch: median {statistics.median(resumed):.1f}s, max "
                    f"{max(resumed):.1f}s after the fault ({len(resumed)} of {len(done)} recoveries{others})"
                )
        else:
            lines.append("recoveries: 0")
        if self.pending is not None:
            lines.append("the last fault was still being recovered from at the end")
        r = self.results
        lines.append(f"results: {r.total} checked, {r.correct} correct, {r.incorrect} incorrect")
        lines.append(
            f"windows completed (every key): {r.windows}, in {len(r.complete)} epochs; latest result: {r.describe()}"
        )
        lines += [f"WRONG: {wrong}" for wrong in r.wrong]
        lines.append(f"the daemons' logs are in {self.workdir}")
        return lines


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/demo",
        description="a bytewax cluster under meshd with chaos, shown live (--mesh-only: the alltoall demo)",
    )
    env = os.environ
    parser.add_argument("--size", type=int, default=4, help="processes (default 4)")
    parser.add_argument(
        "--duration", type=float, default=float(env.get("DURATION", 30)),
        help="seconds to run, 0: until Ctrl-C (default 30, env DURATION)",
    )  # fmt: skip
    parser.add_argument(
        "--chaos", type=float, default=float(env.get("CHAOS", 10)),
        help="seconds between two kills (default 10, env CHAOS)",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=None, help="chaos seed")
    parser.add_argument("--base-port", type=int, default=7000, help="first mesh port (Timely: +1000)")
    parser.add_argument("--admin-base-port", type=int, default=7100, help="first admin port")
    parser.add_argument("--log-dir", type=Path, default=None, help="the daemons' logs (default a fresh directory)")
    parser.add_argument("--plain", action="store_true", help="plain lines even on a terminal")
    args = parser.parse_args(argv)
    if args.size < 2 or args.chaos <= 0 or args.duration < 0:
        parser.error("--size must be 2 or more, --chaos above 0, --duration 0 or more")
    return args


async def run(args: argparse.Namespace) -> int:
    if args.log_dir is not None:
        args.log_dir.mkdir(parents=True, exist_ok=True)
        workdir = args.log_dir.resolve()
    else:
        workdir = Path(tempfile.mkdtemp(prefix="meshd-demo-"))
    spec = ClusterSpec(
        size=args.size, base_port=args.base_port, admin_base_port=args.admin_base_port, chaos=args.chaos,
        duration=args.duration or None, seed=args.seed, log_dir=workdir,
        exec=(sys.executable, str(LAUNCH)),
    )  # fmt: skip
    console = Console()
    plain = args.plain or not console.is_terminal
    demo = Demo(spec, workdir, console, plain)
    ends = f"for {args.duration:g}s" if args.duration else "until Ctrl-C"
    intro = (
        f"{args.size} bytewax processes, each the worker of a meshd daemon (mesh ports {args.base_port}.., Timely "
        f"{args.base_port + 1000}..), kill -9 of a random daemon or worker every {args.chaos:g}s, {ends}; "
        f"logs in {workdir}"
    )
    console.print(intro, highlight=False) if not plain else print(intro, flush=True)
    if plain:
        code = await demo.run()
    else:
        with Live(demo.render(), console=console, auto_refresh=False, transient=False) as live:
            demo.live = live
            code = await demo.run()
            demo.live = None
    demo.read_results()  # what the workers printed before they were stopped
    for line in demo.report():
        print(line, flush=True)
    if demo.results.incorrect:
        return 1
    return code


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    return trio.run(run, args)


if __name__ == "__main__":
    sys.exit(main())
