"""Real-process chaos for meshd (``python -m tools.chaos``, launched by ``scripts/chaos``): seeded fault schedules
(``faults``), where daemons live (``netns``: loopback or network namespaces), one trial under the cluster harness
(``trial``), the chaos runner's checks on top of the one safety checker (``checks``), and the report (``report``)."""
