"""The cluster's secret file (``cluster.secret_file``, ``--secret-file``) and the admin token file: read, checked,
and re-read when they change.

A secret file holds one key per line (hex or base64, at least 32 bytes; ``meshd keygen`` makes one). The daemon
signs with the first key and accepts any listed key (``meshd.core.auth``), and it looks at the file at every
handshake: when the file changed (its inode, size or modification time) it is read again, so that a key rolled onto
every process takes effect without a restart and without a link going down. SIGHUP re-reads it at once. A file
that turns bad while the daemon runs (unreadable, world-readable, a short key) keeps the keys read last, and says so.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from attrs import frozen
from loguru import logger

from meshd.core.auth import NEW_KEY_BYTES, Keyring, format_key, parse_keys
from meshd.errors import ConfigError

# Permission bits that let any user of the machine read or change the file: a secret shared with them is none.
WORLD_ACCESS = stat.S_IROTH | stat.S_IWOTH
# The mode ``meshd keygen`` creates key files with.
KEY_FILE_MODE = 0o600


@frozen
class _Stamp:
    """What tells a changed file from the one read last."""

    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, status: os.stat_result) -> _Stamp:
        return cls(status.st_ino, status.st_size, status.st_mtime_ns)


def read_private(path: Path, what: str) -> tuple[str, os.stat_result]:
    """The text of a file no other user may read or change; ConfigError naming ``what`` (the key or flag) if not."""
    try:
        with path.open(encoding="utf-8") as file:
            status = os.fstat(file.fileno())
            if status.st_mode & WORLD_ACCESS:
                raise ConfigError(what, f"{path} is readable or writable by every user; chmod 600 it")
            return file.read(), status
    except OSError as exc:
        raise ConfigError(what, f"cannot read {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(what, f"{path} is not text") from exc


class SecretFile:
    """The cluster's keys, from their file; ``keyring()`` is what each handshake uses."""

    def __init__(self, path: Path, what: str = "cluster.secret_file") -> None:
        self.path = path
        self.what = what  # the key or flag that named the file, for messages
        self._keyring, self._stamp = self._read()

    def _read(self) -> tuple[Keyring, _Stamp]:
        text, status = read_private(self.path, self.what)
        try:
            keys = parse_keys(text)
        except ValueError as exc:
            raise ConfigError(self.what, f"{self.path}: {exc}") from exc
        return Keyring(keys), _Stamp.of(status)

    def keyring(self) -> Keyring:
        """The keys as the file holds them now: read again when it changed since the last read."""
        try:
            stamp = _Stamp.of(os.stat(self.path))
        except OSError:
            stamp = None
        if stamp != self._stamp:
            self.reload()
        return self._keyring

    def reload(self) -> bool:
        """Read the file again; on failure keep the keys read last (logged). Returns whether the keys changed."""
        try:
            keyring, stamp = self._read()
        except ConfigError as exc:
            logger.error("{}: keeping the {} keys read last", exc, len(self._keyring.keys))
            try:
                self._stamp = _Stamp.of(os.stat(self.path))  # said once per change, not at every handshake
            except OSError:
                self._stamp = None
            return False
        changed = keyring != self._keyring
        self._keyring, self._stamp = keyring, stamp
        if changed:
            logger.info("{} re-read: {} keys, signing with the first", self.path, len(keyring.keys))
        return changed


def read_token(path: Path, what: str = "admin.token_file") -> str:
    """The admin token: the file's first non-blank line; ConfigError naming ``what`` when there is none."""
    text, _ = read_private(path, what)
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    raise ConfigError(what, f"{path} holds no token")


def write_key_file(path: Path, *, force: bool = False) -> None:
    """Create ``path`` with one new key, mode 0600 from its first instant; FileExistsError unless ``force``."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    descriptor = os.open(path, flags, KEY_FILE_MODE)
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        os.fchmod(file.fileno(), KEY_FILE_MODE)  # an existing file overwritten with --force keeps its mode otherwise
        file.write(new_key_line())


def new_key_line() -> str:
    return format_key(secrets.token_bytes(NEW_KEY_BYTES)) + "\n"
