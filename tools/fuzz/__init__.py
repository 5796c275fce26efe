"""Fuzz campaigns for meshd's untrusted-input surfaces (``python -m tools.fuzz``, launched by ``scripts/fuzz``).

``decoder``, ``handshake`` and ``admin`` hold, for the frame decoder, the handshake machine and the admin API's
JSON, what inputs look like (random bytes mixed with mutations of valid messages) and the contract one input is run
against, sharing ``common`` (the Violation, the byte mutations); ``targets`` gathers them by name; ``campaign`` runs
many inputs over several processes and tallies outcomes and crashes. ``tests/test_fuzz.py`` checks the same
contracts with hypothesis and runs a short campaign of each target.
"""
