"""Deterministic simulation of meshd clusters: real daemons, a fault-injecting network, virtual time.

``python -m meshd.sim --seeds 10000 --size 8`` runs seeds; each seed decides a schedule of faults
(``meshd.sim.schedule``), runs it over ``meshd.sim.network`` with the design's safety properties checked after
every step (``meshd.sim.checker``), and measures the virtual time from the last fault to every process ready in one
generation against the design's bound B (``meshd.sim.world``).
"""
