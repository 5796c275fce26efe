"""Logging setup: loguru to stderr, as readable text or as one JSON object per line."""

from __future__ import annotations

import json
import math
import sys
from typing import Any

from loguru import logger

TEXT_FORMAT = (
    "<green>{time:YYYY-MM-DD HH:mm:ss.SSS}</green> <level>{level: <7}</level> "
    "<cyan>meshd[{extra[index]}] epoch {extra[epoch]}</cyan> {message}"
)


def _json_sink(message: Any) -> None:
    record = message.record
    line = {
        "time": record["time"].timestamp(),
        "level": record["level"].name,
        "message": record["message"],
        **{key: value for key, value in record["extra"].items() if value is not None},
    }
    sys.stderr.write(json.dumps(line, default=str) + "\n")
    sys.stderr.flush()


class Throttle:
    """At most one log line per ``interval`` seconds for one kind of line, so that a stranger's flood of bad
    connections cannot flood the log; the next line that passes says how many were held back."""

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._next = -math.inf
        self.held = 0  # lines held back since the last one that passed

    def allow(self, now: float) -> int | None:
        """None when the line is held back; else how many were held back before it."""
        if now < self._next:
            self.held += 1
            return None
        self._next = now + self._interval
        held, self.held = self.held, 0
        return held


def configure(level: str, fmt: str) -> None:
    """Replace loguru's default sink; every line carries ``index`` and ``epoch`` (``-`` where unknown)."""
    logger.remove()
    logger.configure(extra={"index": "-", "epoch": "-"})
    if fmt == "json":
        logger.add(_json_sink, level=level)
    else:
        logger.add(sys.stderr, level=level, format=TEXT_FORMAT, colorize=sys.stderr.isatty())
