"""``scripts/demo``: a 4-process bytewax (Timely) cluster under meshd on loopback, with chaos, shown live.

``python -m tools.demo`` runs ``meshd.cluster``'s local cluster in-process (``LocalCluster``: the controller's epoch
rule, the restart loops and ``--chaos``, which kill -9 a random daemon or its worker), every daemon running
``examples/bytewax/launch.py`` (the continuous flow) as its worker. One view, redrawn in place with ``rich`` (plain
lines when stdout is not a terminal), shows:

- the mesh per slot, from each daemon's admin API (``meshd.admin.client.status``, the ``meshd status --json``
  object): epoch, state, links up, its worker's state;
- the job: the result lines the flow prints into each daemon's log (the application's output), each one checked
  with ``examples/bytewax/flow.py``'s own checker (count and sum recomputed, every partition in, no duplicate);
  windows completed with every key, the latest result;
- every fault and recovery with its time (the mesh ready again in a new epoch, then the job's results resuming);
- at the end, a summary: faults, recoveries, median/max recovery time, results correct/incorrect.

Exit status: 0, 1 when any result was wrong or the cluster could not run (2 on a usage error).
"""
