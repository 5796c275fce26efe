"""The fuzz targets: for each untrusted-input surface, how to draw inputs and the contract one input is run against.

A target's ``run`` names the outcomes of one input (frame types, error classes, handshake events, parsed types) and
raises only when the surface broke its contract: any exception the contract does not allow, or a Violation that the
run itself detected (an event out of order, our state sent to a stranger). Inputs mix random bytes with mutations of
valid messages (every frame type, honest handshake transcripts, every admin message), which get past the first
length or magic check far more often than random bytes do. Each surface has its module (``decoder``, ``handshake``,
``admin``); this one gathers them by name for the campaigns.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from attrs import frozen

from tools.fuzz.admin import admin_input, run_admin
from tools.fuzz.decoder import decoder_input, run_decoder
from tools.fuzz.handshake import HandshakeCase, handshake_input, run_handshake


@frozen
class Target:
    """One surface: ``generate`` draws an input from a seeded generator; ``run`` runs it and names its outcomes."""

    name: str
    generate: Callable[[random.Random], bytes]
    run: Callable[[bytes], list[str]]


TARGETS = {
    target.name: target
    for target in (
        Target("decoder", decoder_input, run_decoder),
        Target("handshake", handshake_input, lambda data: run_handshake(HandshakeCase.from_bytes(data))),
        Target("admin", admin_input, run_admin),
    )
}
