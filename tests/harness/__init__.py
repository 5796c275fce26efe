"""Test scaffolding shared by the test modules (no tests here).

- ``tests.harness.virtual``: real daemons on the simulation's in-memory network, in trio's virtual time;
- ``tests.harness.procs``: real ``python -m meshd`` processes on loopback, through ``meshd.cluster``.

The test modules grouped by failure mode (test_formation, test_peer_silence, test_stale_and_fencing,
test_restarts_and_generations, test_bad_input, test_orderly_stop, test_clock_skew) hold a virtual-time variant
and a real-process variant of their failure mode side by side, on these two harnesses.
"""
