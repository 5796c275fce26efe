"""The one harness for "N meshd processes under a controller": ports and configs, the command line of a daemon,
the controller's epoch rule (R6), the restart loop, following each daemon's events, and the convergence predicate.
``meshd cluster`` (``local``), the chaos and bench tools and the real-process tests all run on it."""
