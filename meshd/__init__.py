"""meshd: a sidecar daemon that forms and keeps an epoch-fenced full TCP mesh between cluster processes."""

__version__ = "0.1.0"
