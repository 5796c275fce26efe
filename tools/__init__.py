"""Development tools of meshd, not shipped in the wheel: ``tools.chaos`` (real-process chaos trials) and
``tools.bench`` (the benchmark). ``scripts/chaos`` and ``scripts/bench`` launch them (``python -m tools.X``).

They drive daemons through the one harness (``meshd.cluster``), judge them with the one safety checker
(``meshd.safety``) and learn every fact from the typed admin API (``meshd.admin.client``), never from a log line.
"""
