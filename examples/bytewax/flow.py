"""A bytewax dataflow whose every result can be checked, and that needs every process of the cluster.

Input: one partition per process (``p0`` .. ``p{P-1}``; under meshd process i reads partition ``p{MESHD_INDEX}``
only, so every process must run for any window to complete). Partition p emits, at a steady rate, the items of
sequence numbers n = 0, 1, 2, ...: key ``k{n % K}``, value ``value(p, n)``.

Aggregation: keyed (the K keys hash to every worker, so items cross the Timely mesh), per key and tumbling window of
W sequence numbers (window w holds n in [w*W, (w+1)*W)): the count and sum of the values from every partition. A
(key, window) is complete once it holds all P partitions' items; then the owning worker prints one JSON line:

    {"flow": "meshd-bytewax", "epoch": "5", "process": 1, "worker": 1, "key": "k3", "window": 12, "count": 30,
     "sum": 123456, "parts": [0, 1, 2], "P": 3, "K": 12, "W": 120, "time": 1700000000.123}

``check`` recomputes count and sum from (key, window, P, K, W) alone. Incomplete windows die with the generation:
a new generation (new processes) starts over at n = 0 (no recovery store), with ``epoch`` telling them apart.

Run it under meshd with ``launch.py`` (see README.md). Standalone, one process with three workers:

    python -m bytewax.run "examples/bytewax/flow.py:build(windows=3)" -w 3

Check output lines (stdin or files; other lines are ignored): ``python examples/bytewax/flow.py check FILE...``
exits 0 when every result line is right and prints what it saw per epoch.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

MARK = "meshd-bytewax"
# Defaults: K keys, windows of W sequence numbers, RATE items per second per partition (a window every W/RATE s).
KEYS = 12
WINDOW = 120
RATE = 240.0
TICK = 0.05  # seconds between two batches of one partition


def value(part: int, seq: int) -> int:
    """The value of partition ``part``'s item ``seq``: deterministic, different per partition."""
    return (seq * 7919 + part * 104729) % 1000003


def key_of(seq: int, keys: int) -> str:
    return f"k{seq % keys}"


def expected(key: str, window: int, parts: int, keys: int, size: int) -> tuple[int, int]:
    """(count, sum) of a complete (key, window): computed from the definition alone."""
    k = int(key[1:])
    seqs = [n for n in range(window * size, (window + 1) * size) if n % keys == k]
    return parts * len(seqs), sum(value(p, n) for p in range(parts) for n in seqs)


def _items_in_window(key: str, keys: int, size: int) -> int:
    """How many sequence numbers of one window carry ``key`` (the same for every window: size % keys aside)."""
    k = int(key[1:])
    return sum(1 for n in range(size) if n % keys == k)


def build(
    parts: int | None = None,
    local: Iterable[int] | None = None,
    windows: int = 0,
    keys: int = KEYS,
    window: int = WINDOW,
    rate: float = RATE,
    epoch: str | None = None,
) -> Any:
    """The dataflow. ``parts``: partitions P (default ``MESHD_SIZE``, else 3); ``local``: the partitions this
    process reads (default ``[MESHD_INDEX]`` under meshd, else all); ``windows``: stop after that many windows per
    partition (0: run until killed); ``epoch``: the label printed (default ``MESHD_EPOCH``, else "-")."""
    from bytewax import operators as op
    from bytewax.dataflow import Dataflow
    from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
    from bytewax.outputs import DynamicSink, StatelessSinkPartition

    if window % keys:
        raise ValueError(f"window ({window}) must be a multiple of keys ({keys}): every key then has a fixed share")
    env = os.environ
    parts = parts if parts is not None else int(env.get("MESHD_SIZE", "3"))
    if local is None:
        local = [int(env["MESHD_INDEX"])] if "MESHD_INDEX" in env else range(parts)
    local = sorted(set(local))
    epoch = epoch if epoch is not None else env.get("MESHD_EPOCH", "-")
    process = int(env.get("MESHD_INDEX", "-1"))
    last = windows * window  # the first sequence number not emitted in a finite run
    per_key = _items_in_window("k0", keys, window)  # window % keys == 0: the same for every key

    class Partition(StatefulSourcePartition):
        def __init__(self, part: int, seq: int) -> None:
            self.part = part
            self.seq = seq
            self.started = time.monotonic() - seq / rate
            self.awake = datetime.now(UTC)

        def next_batch(self) -> list[tuple[str, tuple[int, int, int]]]:
            if windows and self.seq >= last:
                raise StopIteration
            due = int((time.monotonic() - self.started) * rate)  # a steady rate, whatever the scheduling
            if windows:
                due = min(due, last)
            batch = [(key_of(n, keys), (self.part, n, value(self.part, n))) for n in range(self.seq, due)]
            self.seq = max(self.seq, due)
            self.awake = datetime.now(UTC) + timedelta(seconds=TICK)
            return batch

        def next_awake(self) -> datetime:
            return self.awake

        def snapshot(self) -> int:
            return self.seq

    class Generator(FixedPartitionedSource):
        def list_parts(self) -> list[str]:
            return [f"p{part}" for part in local]

        def build_part(self, step_id: str, for_part: str, resume_state: int | None) -> Partition:
            return Partition(int(for_part[1:]), resume_state or 0)

    def aggregate(state: dict | None, item: tuple[int, int, int]) -> tuple[dict, list[dict]]:
        state = state if state is not None else {}
        part, seq, val = item
        w = seq // window
        count, total, seen = state.get(w, (0, 0, set()))
        seen.add(part)
        count, total = count + 1, total + val
        if count == parts * per_key:
            del state[w]
            return state, [{"window": w, "count": count, "sum": total, "parts": sorted(seen)}]
        state[w] = (count, total, seen)
        return state, []

    class Printer(StatelessSinkPartition):
        def __init__(self, worker: int) -> None:
            self.worker = worker

        def write_batch(self, items: list[tuple[str, dict]]) -> None:
            lines = []
            for key, result in items:
                line = {"flow": MARK, "epoch": epoch, "process": process, "worker": self.worker, "key": key}
                line.update(result, P=parts, K=keys, W=window, time=round(time.time(), 3))
                lines.append(json.dumps(line))
            sys.stdout.write("".join(each + "\n" for each in lines))
            sys.stdout.flush()

    class Stdout(DynamicSink):
        def build(self, step_id: str, worker_index: int, worker_count: int) -> Printer:
            return Printer(worker_index)

    flow = Dataflow("meshd_bytewax")
    items = op.input("generate", flow, Generator())
    keyed = op.key_on("by_key", items, lambda kv: kv[0])
    values = op.map_value("value", keyed, lambda kv: kv[1])
    results = op.stateful_flat_map("window", values, aggregate)
    op.output("print", results, Stdout())
    return flow


def __getattr__(name: str) -> Any:
    """``flow.py:flow`` (bytewax.run's default attribute): ``build()`` with the defaults, made on first access, so
    that ``check`` works without bytewax installed."""
    if name == "flow":
        return build()
    raise AttributeError(name)


# ----- checking the output


def problems(line: dict[str, Any]) -> list[str]:
    """What is wrong with one result line (empty: it is right)."""
    count, total = expected(line["key"], line["window"], line["P"], line["K"], line["W"])
    found = []
    if line["count"] != count or line["sum"] != total:
        found.append(f"count/sum {line['count']}/{line['sum']}, expected {count}/{total}")
    if line["parts"] != list(range(line["P"])):
        found.append(f"parts {line['parts']}, expected every one of {line['P']}")
    return found


def results(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    """The result lines among ``lines`` (anything else, e.g. logs, is skipped)."""
    for text in lines:
        text = text.strip()
        if not text.startswith("{"):
            continue
        try:
            line = json.loads(text)
        except ValueError:
            continue
        if isinstance(line, dict) and line.get("flow") == MARK:
            yield line


def check(lines: Iterable[str]) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Per epoch: result count, processes and workers that printed, complete windows (every key); and the errors."""
    summary: dict[str, dict[str, Any]] = {}
    errors: list[str] = []
    seen: set[tuple[str, str, int]] = set()
    for line in results(lines):
        for problem in problems(line):
            errors.append(f"{line}: {problem}")
        ident = (line["epoch"], line["key"], line["window"])
        if ident in seen:
            errors.append(f"{line}: a second result for epoch/key/window {ident}")
        seen.add(ident)
        entry = summary.setdefault(line["epoch"], {"results": 0, "processes": set(), "workers": set(), "keys": {}})
        entry["results"] += 1
        entry["processes"].add(line["process"])
        entry["workers"].add(line["worker"])
        entry["keys"].setdefault(line["window"], set()).add(line["key"])
        entry["K"] = line["K"]
    for entry in summary.values():
        entry["complete"] = sorted(w for w, keys in entry["keys"].items() if len(keys) == entry["K"])
    return summary, errors


def main(argv: list[str]) -> int:
    if not argv or argv[0] != "check":
        print(__doc__)
        return 2
    if argv[1:]:
        text: list[str] = []
        for name in argv[1:]:
            with open(name, encoding="utf-8", errors="replace") as file:
                text += file.readlines()
    else:
        text = sys.stdin.readlines()
    summary, errors = check(text)
    for epoch, entry in summary.items():
        print(
            f"epoch {epoch}: {entry['results']} results ok from processes {sorted(entry['processes'])}, "
            f"workers {sorted(entry['workers'])}, windows {min(entry['keys'])}..{max(entry['keys'])} "
            f"({len(entry['complete'])} with every key)"
        )
    for error in errors[:20]:
        print(f"WRONG: {error}")
    if not summary:
        print("no result lines")
        return 1
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
