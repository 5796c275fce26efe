"""Development tools of meshd, not shipped in the wheel: ``tools.chaos`` (real-process chaos trials), ``tools.bench``
(the benchmark), ``tools.demo`` (the live bytewax demo), ``tools.fuzz`` (fuzz campaigns of the frame decoder, the
handshake machine and the admin API's parsers) and ``tools.flood`` (floods of strangers against a ready mesh).
``scripts/X`` launches each (``python -m tools.X``).

They drive daemons through the one harness (``meshd.cluster``), judge them with the one safety checker
(``meshd.safety``) and learn every fact from the typed admin API (``meshd.admin.client``), never from a log line.
"""
