"""The benchmark (``python -m tools.bench``, launched by ``scripts/bench``): start-up, formation (``mesh``), idle
cost, recovery and detection under faults (``faults``), PyTorch's gloo beside it (``gloo``, each rank a
``gloo_rank`` process) and the simulation (``sim``); ``common`` holds the tables, /proc readings and clean-up."""
