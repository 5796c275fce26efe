"""The cluster's secret as a user handles it, through the real ``python -m meshd`` (every wait bounded).

- ``meshd keygen`` makes a key file no other user can read (mode 0600 from its first instant), never replaces one
  without ``--force``, prints a key without a path, and what it writes is what ``meshd run`` takes.
- A secret file that cannot serve (a short key, a line that is neither hex nor base64, a file other users may read
  or change, a missing or unreadable one, one without a key) stops ``meshd run`` at once: exit 2 and one line
  naming the key that named the file (``cluster.secret_file``) or the flag (``--secret-file``).
- Secure by default: peers beyond loopback without a secret refuse to run (exit 2, saying how to make one with
  ``meshd keygen``), unless ``--insecure`` or ``cluster.insecure = true`` says so explicitly: then the daemon runs,
  answers ``meshd status``, and warns in its log.
- A relative ``cluster.secret_file`` is relative to the config file's directory, whatever the current one.

The handshake under those keys is test_auth.py's; the admin websocket's token is test_admin_security.py's.
"""

from __future__ import annotations

import json
import re
import secrets
import signal
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from meshd import cli, config
from meshd.cluster.spawn import run_argv
from meshd.cluster.spawn import write_config as write_cluster_config
from meshd.core.address import Address
from meshd.core.auth import MIN_KEY_BYTES, NEW_KEY_BYTES, parse_keys
from meshd.secret import write_key_file
from tests.harness.procs import Cluster, Daemon, Harness, Proc, is_ready
from tests.test_cli import one_line_error

# A key file line as ``meshd keygen`` writes it.
KEY_LINE = re.compile(rf"[0-9a-f]{{{2 * NEW_KEY_BYTES}}}\n")
# An address no host answers (TEST-NET-1, RFC 5737), beyond loopback.
UNREACHABLE_HOST = "192.0.2.1"
# What an insecure daemon logs at its start.
INSECURE_WARNING = "no cluster secret (cluster.insecure)"


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def run_cli(harness: Harness, name: str, args: list[str], expected: int) -> Proc:
    """``python -m meshd ARGS`` to its end, which must be exit ``expected``."""
    proc = harness.spawn(name, args)
    code = await harness.wait_exit(proc)
    harness.check(code == expected, f"meshd {' '.join(args)} exited {code}, expected {expected}")
    return proc


async def answering(harness: Harness, daemon: Daemon) -> dict[str, Any]:
    """The daemon's status once it answers on its admin port (failing at once should it exit)."""

    async def answers() -> tuple[bool, Any]:
        harness.check(daemon.returncode is None, f"{daemon.name} exited {daemon.returncode}")
        status = await harness.status(daemon.admin)
        return status is not None, status

    return await harness.eventually(answers, f"{daemon.name} to answer on its admin port")


# ----- meshd keygen


async def test_keygen_writes_a_private_key_file_and_replaces_it_only_with_force(harness: Harness):
    path = harness.tmp / "cluster.key"
    proc = await run_cli(harness, "keygen", ["keygen", str(path)], 0)
    harness.check(str(path) in proc.stderr(), f"keygen did not say where the key went:\n{proc.stderr()}")
    harness.check(proc.stdout() == "", f"keygen PATH printed the key too:\n{proc.stdout()}")
    first = path.read_text(encoding="utf-8")
    harness.check(mode_of(path) == 0o600, f"keygen made {path} with mode {mode_of(path):o}, expected 600")
    harness.check(KEY_LINE.fullmatch(first), f"keygen wrote {first!r}, not one line of {2 * NEW_KEY_BYTES} hex digits")
    harness.check(len(parse_keys(first)[0]) == NEW_KEY_BYTES, f"the key file does not parse as one key: {first!r}")

    again = await run_cli(harness, "keygen-again", ["keygen", str(path)], 2)
    one_line_error(harness, again, "configuration error: PATH", str(path), "--force")
    harness.check(path.read_text(encoding="utf-8") == first, "a refused keygen changed the key file")
    harness.check(mode_of(path) == 0o600, f"a refused keygen changed the mode to {mode_of(path):o}")

    path.chmod(0o644)  # --force must not keep a lax mode it finds
    await run_cli(harness, "keygen-force", ["keygen", "--output", str(path), "--force"], 0)
    second = path.read_text(encoding="utf-8")
    harness.check(KEY_LINE.fullmatch(second), f"keygen --force wrote {second!r}")
    harness.check(second != first, "keygen --force left the old key in place")
    harness.check(mode_of(path) == 0o600, f"keygen --force left mode {mode_of(path):o}, expected 600")


async def test_keygen_without_a_path_prints_a_new_key(harness: Harness):
    procs = [harness.spawn(f"keygen-stdout-{n}", ["keygen"]) for n in range(2)]
    keys = []
    for proc in procs:
        harness.check(await harness.wait_exit(proc) == 0, f"{proc.name} exited {proc.returncode}")
        out = proc.stdout()
        harness.check(KEY_LINE.fullmatch(out), f"meshd keygen printed {out!r}, not one key line")
        keys.append(parse_keys(out))
    harness.check(keys[0] != keys[1], "two keygens printed the same key")
    harness.check(all(len(key) == NEW_KEY_BYTES for (key,) in keys), f"keys of the wrong length: {keys}")
    harness.check(not list(harness.tmp.glob("*.key")), "keygen without a path wrote a file")


def test_keygen_given_two_different_paths_exits_2_and_writes_nothing(tmp_path, capsys):
    first, second = tmp_path / "a.key", tmp_path / "b.key"
    assert cli.main(["keygen", str(first), "-o", str(second)]) == 2
    assert "configuration error: --output:" in capsys.readouterr().err
    assert not first.exists() and not second.exists()


async def test_a_keygen_file_is_what_meshd_run_authenticates_with(harness: Harness):
    """Two daemons given the new file form a mesh; one given another key never links with them (so the file is
    really what they authenticate with, not merely read)."""
    cluster = harness.cluster(2, name="keygen")
    key = harness.tmp / "fresh.key"
    await run_cli(harness, "keygen", ["keygen", str(key)], 0)
    fresh = ["--secret-file", str(key)]
    d0 = harness.start(cluster, 0, 1, extra_args=fresh)
    stranger = harness.start(cluster, 1, 1, name="d1-other-key")  # the config's own key: meshd.key, not fresh.key

    async def refused() -> tuple[bool, Any]:
        found = await harness.statuses([d0, stranger])
        failures = sum(status["auth_failures"] for status in found if status is not None)
        harness.check(not any(is_ready(status, 1) for status in found), f"different keys linked: {found}")
        return failures > 0 and None not in found, found

    await harness.eventually(refused, "the daemons with different keys to count authentication failures")
    stranger.signal(signal.SIGKILL)
    await harness.wait_exit(stranger)
    d1 = harness.start(cluster, 1, 1, extra_args=fresh)
    await harness.wait_ready([d0, d1], epoch=1)


# ----- a secret file that cannot serve: exit 2 naming the key or the flag


def _write(text: str, mode: int = 0o600) -> Callable[[Path], None]:
    def prepare(path: Path) -> None:
        path.write_text(text, encoding="utf-8")
        path.chmod(mode)

    return prepare


def _missing(path: Path) -> None:
    path.unlink()


def _directory(path: Path) -> None:
    path.unlink()
    path.mkdir()  # unreadable as a file even for root (who reads a chmod 000 file)


def _not_text(path: Path) -> None:
    path.write_bytes(b"\xff\xfe" + secrets.token_bytes(40))
    path.chmod(0o600)


GOOD_KEY = secrets.token_hex(MIN_KEY_BYTES)
BAD_SECRET_FILES = [
    pytest.param(_write(secrets.token_hex(MIN_KEY_BYTES // 2) + "\n"), "at least 32", id="short key"),
    pytest.param(_write("# ours\n" + "not a key, not at all!\n"), "neither hex nor base64", id="not hex or base64"),
    pytest.param(_write(GOOD_KEY + "\n", 0o644), "readable or writable by every user", id="world-readable"),
    pytest.param(_write(GOOD_KEY + "\n", 0o602), "readable or writable by every user", id="world-writable"),
    pytest.param(_missing, "No such file", id="missing"),
    pytest.param(_directory, "cannot read", id="a directory"),
    pytest.param(_not_text, "not text", id="not text"),
    pytest.param(_write(""), "holds no key", id="empty"),
    pytest.param(_write("# the key goes here\n\n   \n"), "holds no key", id="only comments"),
]


@pytest.mark.parametrize(("prepare", "reason"), BAD_SECRET_FILES)
async def test_a_bad_secret_file_stops_meshd_run_with_exit_2_naming_its_key(
    harness: Harness, prepare: Callable[[Path], None], reason: str
):
    """The same bad file named by the config (``cluster.secret_file``) and by the flag (``--secret-file``, over a
    config whose own secret is good), two processes at once."""
    cluster = harness.cluster(2, name="bad-secret")
    directory = harness.tmp / "bad"
    directory.mkdir()
    peers = [cluster.mesh(index) for index in range(cluster.size)]
    by_config = write_cluster_config(directory / "cluster.toml", cluster.name, peers, secret_file="bad.key")
    bad = directory / "bad.key"
    prepare(bad)
    procs = [
        (harness.start(cluster, 0, 1, config=by_config, name="by-config"), "cluster.secret_file"),
        (harness.start(cluster, 1, 1, extra_args=["--secret-file", str(bad)], name="by-flag"), "--secret-file"),
    ]
    for proc, key in procs:
        code = await harness.wait_exit(proc)
        harness.check(code == 2, f"{proc.name}: a bad secret file ({reason}) exited {code}, expected 2")
        one_line_error(harness, proc, f"configuration error: {key}: ", str(bad), reason)


# ----- secure by default: peers beyond loopback need a secret, or an explicit cluster.insecure


def beyond_loopback(harness: Harness, name: str, extra: str = "") -> tuple[Cluster, Path]:
    """A 2-slot cluster without a secret: slot 0 on loopback, slot 1 on an address nobody answers."""
    cluster = harness.cluster(2, name=name)
    peers = [cluster.mesh(0), Address(UNREACHABLE_HOST, cluster.mesh_ports[1])]
    path = write_cluster_config(harness.tmp / f"{name}.toml", name, peers, extra=extra, secret_file=None)
    return cluster, path


async def test_peers_beyond_loopback_without_a_secret_exit_2_saying_how_to_make_one(harness: Harness):
    cluster, path = beyond_loopback(harness, "exposed")
    daemon = harness.start(cluster, 0, 1, config=path)
    code = await harness.wait_exit(daemon)
    harness.check(code == 2, f"peers beyond loopback without a secret exited {code}, expected 2")
    one_line_error(
        harness,
        daemon,
        "configuration error: cluster.secret_file: ",
        f"{UNREACHABLE_HOST}:{cluster.mesh_ports[1]}",
        "meshd keygen",
        "cluster.insecure",
    )


@pytest.mark.parametrize("how", ["--insecure", "cluster.insecure = true"])
async def test_explicitly_insecure_runs_answers_status_and_warns(harness: Harness, how: str):
    if how == "--insecure":
        cluster, path = beyond_loopback(harness, "insecure-flag")
        daemon = harness.start(cluster, 0, 1, config=path, extra_args=["--insecure"])
    else:
        cluster, path = beyond_loopback(harness, "insecure-toml", extra="insecure = true\n")
        harness.check(config.load(path).cluster.insecure, f"{path} does not say cluster.insecure")
        daemon = harness.start(cluster, 0, 1, config=path)
    await answering(harness, daemon)

    proc = await run_cli(harness, "status", ["status", "--admin", str(daemon.admin), "--json"], 0)
    status = json.loads(proc.stdout())
    remote = f"{UNREACHABLE_HOST}:{cluster.mesh_ports[1]}"
    harness.check(status["index"] == 0 and status["state"] != "ready", f"status of the insecure daemon: {status}")
    harness.check([peer["address"] for peer in status["peers"]] == [remote], f"peers: {status['peers']}")
    harness.check(INSECURE_WARNING in daemon.stderr(), f"the insecure daemon did not warn ({INSECURE_WARNING!r})")
    harness.check(daemon.returncode is None, f"the insecure daemon exited {daemon.returncode}")


# ----- a relative secret_file


async def test_a_relative_secret_file_is_found_beside_the_config_from_any_directory(harness: Harness):
    """Both daemons run in a directory that has no ``keys/`` (reading it there would exit 2) and form a mesh."""
    cluster = harness.cluster(2, name="relative")
    home, elsewhere = harness.tmp / "conf", harness.tmp / "elsewhere"
    (home / "keys").mkdir(parents=True)
    elsewhere.mkdir()
    write_key_file(home / "keys" / "cluster.key")
    peers = [cluster.mesh(index) for index in range(cluster.size)]
    path = write_cluster_config(home / "cluster.toml", cluster.name, peers, secret_file="keys/cluster.key")
    harness.check('secret_file = "keys/cluster.key"' in path.read_text(encoding="utf-8"), "the path is not relative")
    harness.check(
        config.load(path).cluster.secret_file == str(home / "keys" / "cluster.key"),
        f"config.load resolved secret_file to {config.load(path).cluster.secret_file}",
    )
    daemons = [
        harness.launch(
            f"d{index}-elsewhere",
            ["env", "-C", str(elsewhere), *run_argv(path, index, 1, cluster.admin(index))],
            cls=Daemon,
            index=index,
            epoch=1,
            admin=cluster.admin(index),
        )
        for index in range(cluster.size)
    ]
    await harness.wait_ready(daemons, epoch=1)
    harness.check(not (elsewhere / "keys").exists(), "something made keys/ in the working directory")
