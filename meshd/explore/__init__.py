"""Exhaustive exploration of small clusters under meshd's own rules (``python -m meshd.explore``)."""
