from meshd.cli import entry

entry()
