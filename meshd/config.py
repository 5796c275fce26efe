"""TOML configuration, structured strictly into attrs classes.

cattrs is lenient by default (``"7002"`` becomes 7002, ``"false"`` becomes True); here every scalar must already
have its type, unknown keys are refused, and every error is a ConfigError that names the offending key.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, get_origin

import attrs
import cattrs
from attrs import asdict, define, field
from cattrs.cols import list_structure_factory
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError, IterableValidationError
from cattrs.gen import make_dict_structure_fn

from meshd.core.address import Address
from meshd.core.generation import EpochMode
from meshd.core.names import DEFAULT_ADMIN_PORT, EPOCH_MODES, LOG_FORMATS, LOG_LEVELS, ON_FENCE, U64_MAX
from meshd.core.wire import MAX_CLUSTER_SIZE, MAX_NAME_BYTES
from meshd.errors import ConfigError

# How to make a secret, in every message that asks for one.
KEYGEN_HINT = "make one with `meshd keygen PATH` and copy it to every process"


@define
class ClusterConfig:
    name: str
    peers: list[Address]
    secret_file: str | None = None  # the keys every connection authenticates with (``meshd keygen``)
    insecure: bool = False  # peers beyond loopback without a secret: said explicitly, warned about
    listen: Address | None = None  # where the mesh port binds (default: this process's own address in ``peers``)

    def listen_address(self, index: int) -> Address:
        """The address the mesh port of slot ``index`` binds: ``listen``, else the address its peers dial."""
        return self.listen or self.peers[index]


@define
class Timeouts:
    """Seconds. Defaults suit a LAN or loopback; every value must be positive."""

    connect: float = 1.0
    handshake: float = 1.0
    heartbeat_interval: float = 0.25
    heartbeat_timeout: float = 1.0
    backoff_initial: float = 0.05
    backoff_max: float = 1.0
    bind: float = 10.0  # how long a busy mesh or admin port is retried before exit 1


@define
class AdminConfig:
    listen: Address = field(factory=lambda: Address("127.0.0.1", DEFAULT_ADMIN_PORT))
    token_file: str | None = None  # every client presents this token (required beyond loopback)


@define
class HttpConfig:
    """The HTTP endpoint (``/livez``, ``/readyz``, ``/metrics``): off unless ``listen`` is set."""

    listen: Address | None = None


@define
class DaemonConfig:
    on_fence: str = "exit"  # one of ON_FENCE


@define
class Limits:
    """What strangers may hold of a daemon at once."""

    pending_handshakes: int = 64  # mesh connections not yet through the handshake; more are closed at once
    admin_clients: int = 16  # admin websocket connections; more are closed at once
    admin_message_bytes: int = 64 * 1024  # the largest admin request read


@define
class LogConfig:
    level: str = "INFO"
    format: str = "text"


@define
class WorkerConfig:
    """The application process on the mesh: started by the daemon (``exec``), or attached over a Unix socket."""

    exec: list[str] | None = None  # the command the daemon starts once its mesh is ready (``--exec`` overrides)
    socket: str | None = None  # a Unix socket where one worker in another container attaches
    stop_grace: float = 2.0  # seconds between SIGTERM (or the end message) and SIGKILL when the generation ends

    @property
    def configured(self) -> bool:
        return self.exec is not None or self.socket is not None


@define
class Config:
    cluster: ClusterConfig
    timeouts: Timeouts = field(factory=Timeouts)
    admin: AdminConfig = field(factory=AdminConfig)
    http: HttpConfig = field(factory=HttpConfig)
    log: LogConfig = field(factory=LogConfig)
    worker: WorkerConfig = field(factory=WorkerConfig)
    limits: Limits = field(factory=Limits)
    daemon: DaemonConfig = field(factory=DaemonConfig)
    index: int | None = None
    epoch: int | EpochMode | None = None  # an integer, "auto" (self-minted generations) or "await" (start op)

    @property
    def size(self) -> int:
        return len(self.cluster.peers)


T = TypeVar("T")


def _strict(kind: type[T], accepts: tuple[type, ...]) -> Callable[[Any, type], T]:
    """A structure hook that takes only values already of an accepted type (never bool for a number)."""

    def hook(value: Any, _: type) -> T:
        if isinstance(value, bool) and kind is not bool:
            raise TypeError(f"expected {kind.__name__}, got a boolean")
        if not isinstance(value, accepts):
            raise TypeError(f"expected {kind.__name__}, got {type(value).__name__} {value!r}")
        return kind(value)  # type: ignore[call-arg]

    return hook


def _structure_address(value: Any, _: type) -> Address:
    if not isinstance(value, str):
        raise TypeError(f"expected a 'HOST:PORT' string, got {type(value).__name__} {value!r}")
    return Address.parse(value)


def _only(kind: type, name: str, inner: Callable[[Any, type], T]) -> Callable[[Any, type], T]:
    """Wrap a generated hook so that a value of the wrong container type is named as such, not iterated."""

    def hook(value: Any, target: type) -> T:
        if not isinstance(value, kind):
            raise TypeError(f"expected {name}, got {type(value).__name__} {value!r}")
        return inner(value, target)

    return hook


def _structure_epoch(value: Any, _: type) -> int | EpochMode:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if value in EPOCH_MODES:
        return EpochMode(value)
    raise TypeError(f'expected an integer, "auto" or "await", got {type(value).__name__} {value!r}')


def _converter() -> cattrs.Converter:
    converter = cattrs.Converter(forbid_extra_keys=True)
    converter.register_structure_hook_factory(
        attrs.has, lambda cls: _only(dict, "a table", make_dict_structure_fn(cls, converter))
    )
    converter.register_structure_hook_factory(
        lambda cls: get_origin(cls) is list,
        lambda cls: _only(list, "an array", list_structure_factory(cls, converter)),
    )
    converter.register_structure_hook(int, _strict(int, (int,)))
    converter.register_structure_hook(float, _strict(float, (int, float)))
    converter.register_structure_hook(str, _strict(str, (str,)))
    converter.register_structure_hook(bool, _strict(bool, (bool,)))
    converter.register_structure_hook(Address, _structure_address)
    converter.register_structure_hook(int | EpochMode | None, _structure_epoch)
    return converter


_CONVERTER = _converter()


def _locate(exc: BaseException, path: str) -> ConfigError:
    """The first leaf of cattrs' nested validation error, as a ConfigError naming its full key."""
    if isinstance(exc, ForbiddenExtraKeysError):
        return ConfigError(f"{path}.{sorted(exc.extra_fields)[0]}".lstrip("."), "unknown key")
    if isinstance(exc, ClassValidationError | IterableValidationError):
        located, _ = exc.group_exceptions()
        if located:
            inner, note = located[0]
            step = f"[{note.index}]" if isinstance(exc, IterableValidationError) else f".{note.name}"
            return _locate(inner, path + step)
        return _locate(exc.exceptions[0], path)
    key = path.lstrip(".") or "config"
    if isinstance(exc, KeyError):
        return ConfigError(key, "required key missing")
    if isinstance(exc, AttributeError):
        return ConfigError(key, "expected a table")
    return ConfigError(key, str(exc))


def structure(raw: dict[str, Any]) -> Config:
    """A validated Config from parsed TOML, or a ConfigError naming the first bad key."""
    try:
        config = _CONVERTER.structure(raw, Config)
    except (cattrs.BaseValidationError, ValueError, TypeError) as exc:
        raise _locate(exc, "") from exc
    validate(config)
    return config


def load(path: Path) -> Config:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError("--config", f"cannot read {path}: {exc.strerror}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError("--config", f"{path} is not valid TOML: {exc}") from exc
    config = structure(raw)
    _resolve_files(config, path.parent)
    return config


def _resolve_files(config: Config, base: Path) -> None:
    """Paths in the config file are relative to the file's directory (on the command line: to the current one)."""
    if config.cluster.secret_file is not None:
        config.cluster.secret_file = str(base / config.cluster.secret_file)
    if config.admin.token_file is not None:
        config.admin.token_file = str(base / config.admin.token_file)


def _require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(key, message)


def validate(config: Config) -> None:
    """Checks that span fields or bound values; each failure names its key."""
    name = config.cluster.name
    _require(bool(name), "cluster.name", "must not be empty")
    _require(len(name.encode("utf-8")) <= MAX_NAME_BYTES, "cluster.name", f"longer than {MAX_NAME_BYTES} bytes")
    peers = config.cluster.peers
    _require(2 <= len(peers) <= MAX_CLUSTER_SIZE, "cluster.peers", f"needs 2 to {MAX_CLUSTER_SIZE} addresses")
    seen: dict[Address, int] = {}
    for position, address in enumerate(peers):
        key = f"cluster.peers[{position}]"
        _require(address.port != 0, key, "a mesh address needs a fixed port, not 0")
        _require(address not in seen, key, f"duplicate address {address}, already cluster.peers[{seen.get(address)}]")
        seen[address] = position
    timeouts = config.timeouts
    for key, value in asdict(timeouts).items():
        _require(math.isfinite(value) and value > 0, f"timeouts.{key}", f"must be positive and finite, got {value}")
    _require(
        timeouts.heartbeat_timeout > timeouts.heartbeat_interval,
        "timeouts.heartbeat_timeout",
        f"must exceed timeouts.heartbeat_interval ({timeouts.heartbeat_interval})",
    )
    _require(
        timeouts.backoff_max >= timeouts.backoff_initial,
        "timeouts.backoff_max",
        f"must be at least timeouts.backoff_initial ({timeouts.backoff_initial})",
    )
    worker = config.worker
    grace = worker.stop_grace
    _require(math.isfinite(grace) and grace > 0, "worker.stop_grace", f"must be positive and finite, got {grace}")
    if worker.exec is not None:
        _require(bool(worker.exec) and all(worker.exec), "worker.exec", "must be a non-empty list of non-empty strings")
    if worker.socket is not None:
        _require(bool(worker.socket), "worker.socket", "must be a path")
    _require(
        worker.exec is None or worker.socket is None, "worker.socket", "a worker is either started (exec) or attached"
    )
    _require(config.daemon.on_fence in ON_FENCE, "daemon.on_fence", f"must be one of {', '.join(ON_FENCE)}")
    if config.cluster.listen is not None:
        _require(config.cluster.listen.port != 0, "cluster.listen", "a mesh address needs a fixed port, not 0")
    for key, value in asdict(config.limits).items():
        _require(value >= 1, f"limits.{key}", f"must be at least 1, got {value}")
    for key, path in (
        ("cluster.secret_file", config.cluster.secret_file),
        ("admin.token_file", config.admin.token_file),
    ):
        _require(path != "", key, "must be a path")
    level = config.log.level.upper()
    _require(level in LOG_LEVELS, "log.level", f"must be one of {', '.join(LOG_LEVELS)}")
    config.log.level = level
    _require(config.log.format in LOG_FORMATS, "log.format", f"must be one of {', '.join(LOG_FORMATS)}")
    if config.index is not None:
        _require(0 <= config.index < len(peers), "index", f"must be in 0..{len(peers) - 1}, got {config.index}")
    if isinstance(config.epoch, int):
        _require(0 <= config.epoch <= U64_MAX, "epoch", f"must be a non-negative 64-bit integer, got {config.epoch}")


def check_exposure(config: Config, admin: Address | None, secret: str | None, insecure: bool) -> None:
    """Secure by default: peers beyond loopback need a secret (or ``insecure``, said explicitly), and an admin
    websocket beyond loopback needs a token. ``admin``, ``secret`` and ``insecure`` are after the command line."""
    remote = [str(address) for address in config.cluster.peers if not address.loopback]
    if remote and secret is None and not insecure:
        raise ConfigError(
            "cluster.secret_file",
            f"required: peers {', '.join(remote[:3])}{' ...' if len(remote) > 3 else ''} are beyond loopback and "
            f"anyone who reaches them could fence the cluster; {KEYGEN_HINT} (or set cluster.insecure = true)",
        )
    if admin is not None and not admin.loopback and config.admin.token_file is None:
        raise ConfigError("admin.token_file", f"required: the admin websocket listens on {admin}, beyond loopback")
