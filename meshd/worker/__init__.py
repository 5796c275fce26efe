"""A worker on meshd's mesh: ``Mesh.from_env()`` inside ``meshd run --exec``, ``Mesh.attach(path)`` with
``[worker] socket``. The contract is in ``meshd.worker.client``'s docstring and examples/README.md.

Importing this package loads the standard library only (never trio or loguru): the daemon's side,
``meshd.worker.supervisor``, is imported by its own name.
"""

from meshd.worker.client import Mesh, MeshError

__all__ = ["Mesh", "MeshError"]
