"""Floods of strangers against one daemon of a ready local cluster (``python -m tools.flood``, launched by
``scripts/flood``): thousands of silent, slow, garbage and forged-hello connections on its mesh port, or silent,
slow, garbage, oversize and idle clients on its admin port; no link of the mesh may go down meanwhile.

``clients`` holds the strangers and ``Flood``, which runs many of them at once and tallies how each ended;
``observe`` the RSS sampler and the status probe; ``campaign`` the local cluster, one flood with every daemon
watched, and the tables. ``tests/test_flood.py`` runs bounded floods with the same ``Flood``.
"""
