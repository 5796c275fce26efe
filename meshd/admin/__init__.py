"""The admin websocket: ``server`` (in the daemon), ``client`` (the one client of every tool), ``messages`` (the
typed messages both speak). Importing this package imports none of them: ``meshd status`` never loads the server,
and ``meshd run`` loads the websocket stack only once its mesh port listens.
"""

# Seconds a client waits for a daemon to connect, complete the handshake and answer (or send its watch snapshot).
DEFAULT_TIMEOUT = 5.0
