"""Configuration (meshd.config) and the command line (meshd.cli): strict structuring, errors that name their key,
exit codes (in process, and a real ``meshd run`` with a bad config), and the status table.

Every configuration error is a ConfigError whose ``key`` is asserted exactly: it is what the user is told to fix.
"""

import re
import tomllib
from pathlib import Path

import pytest

from meshd import cli, config
from meshd.admin import commands
from meshd.config import Config
from meshd.core.address import Address
from meshd.core.generation import EpochMode
from meshd.core.hello import Identity
from meshd.core.mesh import MeshModel
from meshd.core.status import Status
from meshd.core.wire import Epoch
from meshd.errors import ConfigError
from tests.harness.procs import HOST, Harness, free_ports, write_config

EXAMPLES = sorted((Path(__file__).parent.parent / "config").glob("*.toml"))

CLUSTER = """
[cluster]
name = "demo"
peers = ["127.0.0.1:7000", "127.0.0.1:7001", "127.0.0.1:7002"]
"""


def write(tmp_path, text, name="meshd.toml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load_text(tmp_path, text):
    return config.load(write(tmp_path, text))


def config_error(tmp_path, text):
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text)
    return info.value


def with_peers(*peers):
    quoted = ", ".join(f'"{peer}"' for peer in peers)
    return f'[cluster]\nname = "demo"\npeers = [{quoted}]\n'


# ---------------------------------------------------------------------------------------------------------------
# Valid configurations
# ---------------------------------------------------------------------------------------------------------------


def test_example_configs_exist():
    assert EXAMPLES, "config/*.toml should hold at least one example"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda path: path.name)
def test_example_config_loads(path):
    loaded = config.load(path)
    assert isinstance(loaded, Config)
    assert loaded.cluster.name
    assert loaded.size >= 2
    assert len(set(loaded.cluster.peers)) == loaded.size


def test_local_3_example_values():
    loaded = config.load(Path(__file__).parent.parent / "config" / "local-3.toml")
    assert loaded.cluster.name == "demo"
    assert loaded.cluster.peers == [Address("127.0.0.1", port) for port in (7000, 7001, 7002)]
    assert (loaded.timeouts.heartbeat_interval, loaded.timeouts.heartbeat_timeout) == (0.25, 1.0)
    assert (loaded.log.level, loaded.log.format) == ("INFO", "text")


def test_defaults_fill_everything_but_the_cluster(tmp_path):
    loaded = load_text(tmp_path, CLUSTER)
    assert loaded.timeouts == config.Timeouts()
    assert loaded.admin.listen == Address("127.0.0.1", config.DEFAULT_ADMIN_PORT)
    assert (loaded.log.level, loaded.log.format) == ("INFO", "text")
    assert (loaded.index, loaded.epoch) == (None, None)


def test_full_config_is_structured(tmp_path):
    text = "\n".join(
        [
            "index = 2",
            "epoch = 9223372036854775807",  # the largest TOML integer
            CLUSTER.replace("127.0.0.1:7002", "[::1]:7002"),
            "[timeouts]\nconnect = 2\nbackoff_max = 3.5",
            '[admin]\nlisten = "0.0.0.0:9000"',
            '[log]\nlevel = "debug"\nformat = "json"',
        ]
    )
    loaded = load_text(tmp_path, text)
    assert (loaded.index, loaded.epoch) == (2, 2**63 - 1)
    assert loaded.cluster.peers[2] == Address("::1", 7002)
    assert str(loaded.cluster.peers[2]) == "[::1]:7002"
    assert loaded.timeouts.connect == 2.0
    assert isinstance(loaded.timeouts.connect, float)
    assert loaded.timeouts.backoff_max == 3.5
    assert loaded.admin.listen == Address("0.0.0.0", 9000)
    assert (loaded.log.level, loaded.log.format) == ("DEBUG", "json")


def test_structure_takes_parsed_toml():
    loaded = config.structure(tomllib.loads(CLUSTER + "[log]\nlevel = 'warning'\n"))
    assert loaded.size == 3
    assert loaded.log.level == "WARNING"


# ---------------------------------------------------------------------------------------------------------------
# Errors name their key
# ---------------------------------------------------------------------------------------------------------------

BAD_CONFIGS = {
    "string for a number": (CLUSTER + '[timeouts]\nconnect = "1.0"\n', "timeouts.connect"),
    "bool for an int": ("index = true\n" + CLUSTER, "index"),
    "bool for a float": (CLUSTER + "[timeouts]\nbind = false\n", "timeouts.bind"),
    "float for an int": ("epoch = 1.0\n" + CLUSTER, "epoch"),
    "string for an int": ('index = "0"\n' + CLUSTER, "index"),
    "number for a string": ('[cluster]\nname = 5\npeers = ["a:1", "a:2"]\n', "cluster.name"),
    "unknown top-level key": ("bogus = 1\n" + CLUSTER, "bogus"),
    "unknown nested key": (CLUSTER + "[timeouts]\nconect = 1.0\n", "timeouts.conect"),
    "unknown key in cluster": (CLUSTER + "size = 3\n", "cluster.size"),
    "unknown key in log": (CLUSTER + "[log]\ncolour = true\n", "log.colour"),
    "negative timeout": (CLUSTER + "[timeouts]\nconnect = -1.0\n", "timeouts.connect"),
    "zero timeout": (CLUSTER + "[timeouts]\nhandshake = 0\n", "timeouts.handshake"),
    "nan timeout": (CLUSTER + "[timeouts]\nbind = nan\n", "timeouts.bind"),
    "heartbeat timeout equal to interval": (
        CLUSTER + "[timeouts]\nheartbeat_interval = 0.5\nheartbeat_timeout = 0.5\n",
        "timeouts.heartbeat_timeout",
    ),
    "heartbeat timeout below interval": (
        CLUSTER + "[timeouts]\nheartbeat_interval = 2.0\n",
        "timeouts.heartbeat_timeout",
    ),
    "backoff max below initial": (
        CLUSTER + "[timeouts]\nbackoff_initial = 2.0\nbackoff_max = 1.0\n",
        "timeouts.backoff_max",
    ),
    "duplicate peer": (with_peers("127.0.0.1:7000", "127.0.0.1:7000"), "cluster.peers[1]"),
    "duplicate peer, two spellings of IPv6": (with_peers("a:1", "[::1]:7000", "::1:7000"), "cluster.peers[2]"),
    "address without port": (with_peers("127.0.0.1:7000", "127.0.0.1"), "cluster.peers[1]"),
    "address without host": (with_peers(":7000", "a:7001"), "cluster.peers[0]"),
    "address with a port name": (with_peers("a:7000", "a:http"), "cluster.peers[1]"),
    "address not a string": ('[cluster]\nname = "demo"\npeers = ["a:7000", 7001]\n', "cluster.peers[1]"),
    "port out of range": (with_peers("a:7000", "a:7001", "a:65536"), "cluster.peers[2]"),
    "port 0 in peers": (with_peers("a:7000", "a:0"), "cluster.peers[1]"),
    "one peer": (with_peers("a:7000"), "cluster.peers"),
    "no peers": (with_peers(), "cluster.peers"),
    "missing cluster": ("index = 0\n", "cluster"),
    "missing cluster name": ('[cluster]\npeers = ["a:1", "a:2"]\n', "cluster.name"),
    "missing peers": ('[cluster]\nname = "demo"\n', "cluster.peers"),
    "cluster not a table": ('cluster = "demo"\n', "cluster"),
    "empty cluster name": ('[cluster]\nname = ""\npeers = ["a:1", "a:2"]\n', "cluster.name"),
    "cluster name over 255 bytes": (
        '[cluster]\nname = "' + "é" * 128 + '"\npeers = ["a:1", "a:2"]\n',
        "cluster.name",
    ),
    "bad log level": (CLUSTER + '[log]\nlevel = "LOUD"\n', "log.level"),
    "bad log format": (CLUSTER + '[log]\nformat = "xml"\n', "log.format"),
    "bad admin address": (CLUSTER + '[admin]\nlisten = "localhost"\n', "admin.listen"),
    "index out of range": ("index = 3\n" + CLUSTER, "index"),
    "negative index": ("index = -1\n" + CLUSTER, "index"),
    "negative epoch": ("epoch = -1\n" + CLUSTER, "epoch"),
}


@pytest.mark.parametrize(("text", "key"), BAD_CONFIGS.values(), ids=BAD_CONFIGS.keys())
def test_bad_config_names_its_key(tmp_path, text, key):
    error = config_error(tmp_path, text)
    assert error.key == key
    assert str(error).startswith(f"{key}: ")


def test_structure_raises_the_same_errors():
    raw = tomllib.loads(CLUSTER + "[timeouts]\nconect = 1.0\n")
    with pytest.raises(ConfigError) as info:
        config.structure(raw)
    assert info.value.key == "timeouts.conect"
    assert info.value.message == "unknown key"


def test_type_error_message_shows_the_value(tmp_path):
    error = config_error(tmp_path, CLUSTER + '[timeouts]\nconnect = "fast"\n')
    assert error.message == "expected float, got str 'fast'"


def test_duplicate_peer_message_names_the_first_occurrence(tmp_path):
    error = config_error(tmp_path, with_peers("a:1", "a:2", "a:1"))
    assert error.key == "cluster.peers[2]"
    assert "cluster.peers[0]" in error.message


@pytest.mark.parametrize("text", ["[cluster\nname = 1\n", "index = \n", 'a = "unterminated\n'])
def test_invalid_toml_is_blamed_on_the_config_flag(tmp_path, text):
    error = config_error(tmp_path, text)
    assert error.key == "--config"
    assert "not valid TOML" in error.message


def test_non_utf8_file_is_blamed_on_the_config_flag(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes(CLUSTER.replace("demo", "d\xe9mo").encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        config.load(path)
    assert info.value.key == "--config"


def test_missing_file_is_blamed_on_the_config_flag(tmp_path):
    with pytest.raises(ConfigError) as info:
        config.load(tmp_path / "absent.toml")
    assert info.value.key == "--config"
    assert "absent.toml" in info.value.message


@pytest.mark.parametrize("peers", ['"127.0.0.1:7000"', '{ a = "127.0.0.1:7000" }'], ids=["string", "table"])
def test_peers_that_is_not_an_array_is_named_as_such(tmp_path, peers):
    error = config_error(tmp_path, f'[cluster]\nname = "demo"\npeers = {peers}\n')
    assert error.key == "cluster.peers"


# ---------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------


def run(*args):
    return cli.main(["run", *args])


def test_cli_bad_config_exits_2_naming_the_key(tmp_path, capsys):
    bad = write(tmp_path, CLUSTER + '[timeouts]\nconnect = "soon"\n')
    assert run("--config", str(bad), "--index", "0", "--epoch", "1") == 2
    captured = capsys.readouterr()
    assert "timeouts.connect" in captured.err
    assert captured.out == ""


def test_cli_invalid_toml_exits_2_naming_the_flag(tmp_path, capsys):
    bad = write(tmp_path, "[cluster\n")
    assert run("--config", str(bad), "--index", "0", "--epoch", "1") == 2
    assert "--config" in capsys.readouterr().err


def test_cli_missing_file_exits_2(tmp_path, capsys):
    assert run("--config", str(tmp_path / "absent.toml"), "--index", "0", "--epoch", "1") == 2
    assert "--config" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "flag"),
    [(["--epoch", "1"], "--index"), (["--index", "0"], "--epoch"), ([], "--index")],
    ids=["no index", "no epoch", "neither"],
)
def test_cli_missing_index_or_epoch_exits_2_naming_it(tmp_path, capsys, args, flag):
    good = write(tmp_path, CLUSTER)
    assert run("--config", str(good), *args) == 2
    assert f"configuration error: {flag}:" in capsys.readouterr().err


@pytest.mark.parametrize("index", ["3", "-1"])
def test_cli_index_outside_the_cluster_exits_2(tmp_path, capsys, index):
    good = write(tmp_path, CLUSTER)
    assert run("--config", str(good), "--index", index, "--epoch", "1") == 2
    assert "--index" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args",
    [
        ["--epoch", "-1"],
        ["--epoch", "abc"],
        ["--epoch", "1.5"],
        ["--epoch", str(2**64)],
        ["--index", "zero"],
        ["--admin", "nowhere"],
        ["--log-format", "xml"],
    ],
    ids=lambda args: " ".join(args),
)
def test_cli_usage_errors_exit_2(tmp_path, capsys, args):
    good = write(tmp_path, CLUSTER)
    with pytest.raises(SystemExit) as info:
        run("--config", str(good), "--index", "0", "--epoch", "1", *args)
    assert info.value.code == 2
    assert f"argument {args[0]}" in capsys.readouterr().err


def test_cli_without_config_flag_exits_2(capsys):
    with pytest.raises(SystemExit) as info:
        run("--index", "0", "--epoch", "1")
    assert info.value.code == 2
    assert "--config" in capsys.readouterr().err


def test_cli_without_command_exits_2(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main([])
    assert info.value.code == 2


# ---------------------------------------------------------------------------------------------------------------
# The command line of a real process (tests.harness.procs)
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "timeouts", "extra", "args"),
    [
        pytest.param("timeouts.connect", {"connect": "1"}, "", [], id="string-for-seconds"),
        pytest.param("timeouts.conect", {"conect": 1.0}, "", [], id="unknown-key"),
        pytest.param("surprise", {}, "[surprise]\nanswer = 42\n", [], id="unknown-table"),
        pytest.param(
            "timeouts.heartbeat_timeout", {"heartbeat_interval": 1.0, "heartbeat_timeout": 0.5}, "", [], id="cross-key"
        ),
        pytest.param("--index", {}, "", ["--index", "7"], id="index-out-of-range"),
    ],
)
async def test_bad_config_exits_2_naming_the_key(harness: Harness, key, timeouts, extra, args):
    """A real ``python -m meshd run``: exit 2, a message naming the key, no traceback (the keys themselves are
    decided by test_bad_config_names_its_key, in process)."""
    path = write_config(harness.tmp / "bad.toml", "bad", free_ports(2), timeouts, extra)
    (admin_port,) = free_ports(1)
    proc = harness.spawn(
        "bad-config",
        ["run", "--config", str(path), "--index", "0", "--epoch", "1", "--admin", f"{HOST}:{admin_port}", *args],
    )
    code = await harness.wait_exit(proc)
    stderr = proc.stderr()
    harness.check(code == 2, f"a bad config exited {code}, expected 2")
    harness.check(re.search(rf"configuration error: {re.escape(key)}\b", stderr), f"stderr does not name {key!r}")
    harness.check("Traceback" not in stderr, "a configuration error printed a traceback")


# ---------------------------------------------------------------------------------------------------------------
# The status table
# ---------------------------------------------------------------------------------------------------------------

STATUS = {
    "cluster": "demo",
    "index": 0,
    "size": 3,
    "epoch": 4,
    "mode": "fixed",
    "sealed": False,
    "generation_changes": 0,
    "incarnation": "00000000000000ff",
    "state": "degraded",
    "state_since": 0.0,
    "started": 0.0,
    "peers": [
        {
            "index": 1,
            "address": "127.0.0.1:7001",
            "state": "up",
            "epoch": 4,
            "incarnation": "000000000000abcd",
            "since": 1_700_000_000.0,
            "connects": 2,
            "failures": 1,
            "last_error": None,
            "last_attempt_error": None,
            "last_cause": None,
            "last_refused": None,
        },
        {
            "index": 2,
            "address": "[::1]:7002",
            "state": "down",
            "epoch": None,
            "incarnation": None,
            "since": 0.0,
            "connects": 0,
            "failures": 17,
            "last_error": "peer refused us (stale_epoch): epoch 3 is older than ours (4)",
            "last_attempt_error": "peer refused us (stale_epoch): epoch 3 is older than ours (4)",
            "last_cause": "refused",
            "last_refused": "stale_epoch",
        },
    ],
    "worker": {"pid": None, "state": None, "started": None, "exit": None, "epoch": None},
    "auth_failures": 0,
    "handshakes_shed": 0,
    "admin_rejected": 0,
}


def test_hand_built_status_matches_the_models_shape():
    me = Identity("demo", 0, 3, Epoch(4), 0xFF)
    addresses = [Address("127.0.0.1", 7000), Address("127.0.0.1", 7001), Address("::1", 7002)]
    real = MeshModel(me, addresses, EpochMode.FIXED, 0.0).status().to_json()
    assert real.keys() == STATUS.keys()
    assert [peer.keys() for peer in real["peers"]] == [peer.keys() for peer in STATUS["peers"]]
    assert [peer["address"] for peer in real["peers"]] == [peer["address"] for peer in STATUS["peers"]]


def test_the_status_object_reads_back_as_it_was_written():
    assert Status.from_json(STATUS).to_json() == STATUS


def test_status_table_lists_every_peer():
    lines = commands.format_status(STATUS).splitlines()
    assert len(lines) == 4
    head, columns, up, down = lines
    assert head.startswith(
        "meshd index 0 of 3 in cluster 'demo': degraded since -, epoch 4, incarnation 00000000000000ff"
    )
    assert columns.split() == ["PEER", "ADDRESS", "STATE", "EPOCH", "SINCE", "CONNECTS", "FAILURES", "LAST", "ERROR"]

    cells = up.split()
    assert cells[:4] == ["1", "127.0.0.1:7001", "up", "4"]
    assert re.fullmatch(r"\d\d:\d\d:\d\d", cells[4])
    assert cells[5:] == ["2", "1", "-"]

    assert down.split()[:7] == ["2", "[::1]:7002", "down", "-", "-", "0", "17"]
    assert down.endswith("  peer refused us (stale_epoch): epoch 3 is older than ours (4)")


def test_status_table_columns_line_up():
    _, columns, *rows = commands.format_status(STATUS).splitlines()
    for title, peer_key in (("ADDRESS", "address"), ("STATE", "state")):
        position = columns.index(title)
        for row, peer in zip(rows, STATUS["peers"], strict=True):
            assert row[position:].startswith(peer[peer_key])
