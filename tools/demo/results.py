"""The job's output: the flow's result lines, read as they are appended to the daemons' logs, each checked with the
flow's own checker (examples/bytewax/flow.py: ``problems`` recomputes count and sum; a second result for one
(epoch, key, window) is wrong too)."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

from attrs import define, field

from tools.chaos.results import flow


def epoch_key(epoch: str) -> tuple[int, str]:
    return (int(epoch), "") if epoch.isdigit() else (-1, epoch)


@define
class Results:
    """Every result line seen so far, checked."""

    flow: ModuleType = field(factory=flow)
    correct: int = 0
    incorrect: int = 0
    wrong: list[str] = field(factory=list)  # the first few wrong lines, with why
    latest: dict[str, Any] | None = None
    latest_ok: bool = True
    seen: set[tuple[str, str, int]] = field(factory=set)
    keys: dict[tuple[str, int], set[str]] = field(factory=dict)  # (epoch, window) -> keys with a result
    complete: dict[str, int] = field(factory=dict)  # epoch -> windows with every key
    first: dict[str, float] = field(factory=dict)  # epoch -> wall time of its first result
    _offsets: dict[Path, int] = field(factory=dict)
    _partial: dict[Path, str] = field(factory=dict)

    @property
    def windows(self) -> int:
        return sum(self.complete.values())

    @property
    def total(self) -> int:
        return self.correct + self.incorrect

    def scan(self, directory: Path) -> list[dict[str, Any]]:
        """Read what was appended to the daemons' logs in ``directory`` since the last scan; the new result lines."""
        new: list[dict[str, Any]] = []
        for log in sorted(directory.glob("*-member.log")):
            offset = self._offsets.get(log, 0)
            try:
                with log.open("rb") as file:
                    file.seek(offset)
                    data = file.read()
            except OSError:
                continue
            self._offsets[log] = offset + len(data)
            text = self._partial.pop(log, "") + data.decode("utf-8", errors="replace")
            lines = text.split("\n")
            if lines[-1]:
                self._partial[log] = lines[-1]
            for line in self.flow.results(lines[:-1]):
                self.add(line)
                new.append(line)
        return new

    def add(self, line: dict[str, Any]) -> None:
        problems = list(self.flow.problems(line))
        epoch = str(line["epoch"])
        ident = (epoch, line["key"], line["window"])
        if ident in self.seen:
            problems.append(f"a second result for epoch/key/window {ident}")
        self.seen.add(ident)
        self.latest, self.latest_ok = line, not problems
        if problems:
            self.incorrect += 1
            if len(self.wrong) < 10:
                self.wrong.append(f"{line}: {'; '.join(problems)}")
            return
        self.correct += 1
        self.first.setdefault(epoch, float(line["time"]))
        keys = self.keys.setdefault((epoch, line["window"]), set())
        keys.add(line["key"])
        if len(keys) == line["K"]:
            self.complete[epoch] = self.complete.get(epoch, 0) + 1

    def describe(self, line: dict[str, Any] | None = None) -> str:
        line = line if line is not None else self.latest
        if line is None:
            return "none yet"
        verdict = "correct" if (line is not self.latest or self.latest_ok) else "WRONG"
        return (
            f"epoch {line['epoch']} window {line['window']} {line['key']}: count {line['count']} sum {line['sum']} "
            f"(process {line['process']}) {verdict}"
        )
