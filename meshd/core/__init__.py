"""The sans-I/O core: wire format, hello verdicts, link choice, the mesh state machine, generations, back-off.

Nothing here imports trio or any module above it (a test enforces it); every decision meshd makes about peers,
epochs and readiness is a pure function or a small state machine in this package, driven by events and returning
effects, so that the daemon, the simulation and the exhaustive explorer run the very same rules.
"""
