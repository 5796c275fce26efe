"""The operator's command line, as an operator meets it: the real ``python -m meshd`` in subprocesses, every wait
bounded.

``meshd --version``; ``meshd start`` (the controller's start op for an ``--epoch await`` daemon); ``meshd status
--all`` (one table of every slot, exit 0 only when every slot is ready in one epoch), with the admin addresses of
``meshd cluster``'s numbering; ``meshd status --ready`` (an exec probe: 0 or 1, within its ``--timeout`` even
against a stopped daemon); and the bash and zsh completion scripts, driven in a real shell.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import shlex
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from meshd.cli import build_parser
from meshd.core.address import Address
from tests.harness.procs import (
    DEADLINE,
    HOST,
    Cluster,
    Daemon,
    Harness,
    Proc,
    free_port_range,
    free_ports,
    is_ready,
    peer_row,
    write_config,
)

# The timeout given to the commands, and how much longer than it a command may take (a Python start on a busy
# 2-core machine).
TIMEOUT = 1.0
START_SLACK = 4.0
# What a daemon loads and an operator's command must not.
DAEMON_MODULES = ("meshd.daemon", "meshd.admin.server")


async def meshd(harness: Harness, name: str, *args: str, timeout: float = DEADLINE) -> tuple[int, Proc]:
    """Run ``meshd ARGS`` to its end: its exit code and the process (its output)."""
    proc = harness.spawn(name, list(args))
    return await harness.wait_exit(proc, timeout=timeout), proc


def one_line_error(harness: Harness, proc: Proc, *needles: str) -> str:
    """Its stderr is one ``meshd: ...`` line naming every needle, and no traceback."""
    stderr = proc.stderr()
    lines = stderr.strip().splitlines()
    harness.check("Traceback" not in stderr, f"{proc.name} printed a traceback:\n{stderr}")
    harness.check(len(lines) == 1 and lines[0].startswith("meshd: "), f"{proc.name}: not one line:\n{stderr}")
    for needle in needles:
        harness.check(needle in lines[0], f"{proc.name}'s message does not name {needle!r}: {lines[0]}")
    return lines[0]


async def wait_state(harness: Harness, daemons: list[Daemon], state: str) -> list[dict[str, Any]]:
    """Wait until every daemon answers in ``state``."""

    async def probe() -> tuple[bool, Any]:
        found = await harness.statuses(daemons)
        return all(status is not None and status["state"] == state for status in found), found

    return await harness.eventually(probe, f"{len(daemons)} daemons {state}")


def table_rows(stdout: str) -> dict[int, list[str]]:
    """The slot rows of ``status --all``'s table, by slot: their cells."""
    rows: dict[int, list[str]] = {}
    for line in stdout.splitlines():
        cells = line.split()
        if cells and cells[0].isdigit() and len(cells) == 8:
            rows[int(cells[0])] = cells
    return rows


def bounded(harness: Harness, what: str, took: float, timeout: float = TIMEOUT) -> None:
    harness.check(timeout * 0.9 <= took <= timeout + START_SLACK, f"{what} with --timeout {timeout:g} took {took:.2f}s")


# ----- meshd --version


async def test_version_prints_the_installed_version(harness: Harness):
    code, proc = await meshd(harness, "version", "--version")
    harness.check(code == 0, f"meshd --version exited {code}")
    expected = f"meshd {importlib.metadata.version('meshd')}"
    harness.check(proc.stdout().strip() == expected, f"meshd --version printed {proc.stdout()!r}, not {expected!r}")


@pytest.mark.parametrize(
    "args",
    [
        ["--version"],
        ["completion", "bash"],
        ["start", "--admin", "PORT", "--epoch", "1", "--timeout", "1"],
        ["status", "--all", "--admins", "PORT,PORT", "--timeout", "1"],
        ["status", "--ready", "--admin", "PORT", "--timeout", "1"],
    ],
    ids=["version", "completion", "start", "status-all", "status-ready"],
)
async def test_operator_commands_load_neither_the_daemon_nor_the_admin_server(harness: Harness, args: list[str]):
    (unused,) = free_ports(1)
    args = [arg.replace("PORT", f"{HOST}:{unused}") for arg in args]
    proc = harness.launch("importtime", [sys.executable, "-X", "importtime", "-m", "meshd", *args])
    code = await harness.wait_exit(proc)
    harness.check(code in (0, 1), f"meshd {' '.join(args)} exited {code}")
    modules = {line.rsplit("|", 1)[1].strip() for line in proc.stderr().splitlines() if line.startswith("import time:")}
    harness.check("meshd.cli" in modules, "-X importtime did not report meshd.cli (the check reads nothing)")
    loaded = sorted(name for name in modules if name in DAEMON_MODULES)
    harness.check(not loaded, f"meshd {' '.join(args)} imported {loaded}")


# ----- meshd start


async def test_start_gives_awaiting_daemons_their_epoch_and_refuses_an_older_one(harness: Harness):
    cluster = harness.cluster(2, name="start-cli")
    daemons = [harness.start(cluster, index, "await") for index in range(cluster.size)]
    await wait_state(harness, daemons, "awaiting")
    first, second = (str(cluster.admin(index)) for index in range(cluster.size))

    code, proc = await meshd(harness, "start-0", "start", "--admin", first, "--epoch", "5")
    harness.check(code == 0, f"meshd start exited {code}:\n{proc.stderr()}")
    harness.check(f"{first} runs epoch 5" in proc.stdout(), f"meshd start printed:\n{proc.stdout()}")
    code, proc = await meshd(harness, "start-1", "start", "--admin", second, "--epoch", "5", "--json")
    harness.check(code == 0, f"meshd start --json exited {code}:\n{proc.stderr()}")
    answer = json.loads(proc.stdout())
    harness.check(answer == {"ok": True, "epoch": 5}, f"meshd start --json printed {answer}")
    await harness.wait_ready(daemons, epoch=5)

    code, proc = await meshd(harness, "start-same", "start", "--admin", first, "--epoch", "5")
    harness.check(code == 0, f"the same epoch again exited {code}, expected 0 (a no-op):\n{proc.stderr()}")
    code, proc = await meshd(harness, "start-older", "start", "--admin", first, "--epoch", "3")
    harness.check(code == 1, f"an older epoch exited {code}, expected 1")
    one_line_error(harness, proc, first, "refused epoch 3", "older than the running epoch 5")
    harness.check(proc.stdout() == "", f"a refused start printed on stdout:\n{proc.stdout()}")
    after = await harness.statuses(daemons)
    harness.check(all(is_ready(status, 5) for status in after), f"a refused start changed the mesh: {after}")

    (unused,) = free_ports(1)
    code, proc = await meshd(harness, "start-nobody", "start", "--admin", f"{HOST}:{unused}", "--epoch", "6")
    harness.check(code == 1, f"meshd start against nothing exited {code}, expected 1")
    one_line_error(harness, proc, f"{HOST}:{unused}")

    # A newer epoch is taken, and fences the daemon that ran the older one: it exits 75.
    code, proc = await meshd(harness, "start-newer", "start", "--admin", second, "--epoch", "7")
    harness.check(code == 0, f"a newer epoch exited {code}, expected 0:\n{proc.stderr()}")
    harness.check("fenced and exits 75" in proc.stdout(), f"meshd start printed:\n{proc.stdout()}")
    harness.check(await harness.wait_exit(daemons[1]) == 75, f"d1 exited {daemons[1].returncode}, expected 75")

    code, proc = await meshd(harness, "start-auto", "start", "--admin", first, "--epoch", "auto")
    harness.check(code == 2, f"meshd start --epoch auto exited {code}, expected 2 (usage)")
    harness.check("--epoch" in proc.stderr() and "Traceback" not in proc.stderr(), f"stderr:\n{proc.stderr()}")


# ----- meshd status --all


def all_config(harness: Harness, cluster: Cluster) -> Path:
    """The cluster's config with ``admin.listen`` at slot 0's admin port (the ports are consecutive): ``status
    --config FILE --all`` finds slot K at that port + K."""
    listen = f'\n[admin]\nlisten = "{cluster.admin(0)}"\n'
    return write_config(harness.tmp / "all.toml", cluster.name, cluster.mesh_ports, cluster.timeouts, extra=listen)


async def test_status_all_shows_every_slot_and_a_stopped_one(harness: Harness):
    cluster = harness.cluster(3, name="all-cli", consecutive=True)
    config = str(all_config(harness, cluster))
    daemons = harness.start_all(cluster, epoch=1)
    await harness.wait_ready(daemons, epoch=1)

    code, proc = await meshd(harness, "all-ready", "status", "--config", config, "--all", "--timeout", str(TIMEOUT))
    stdout = proc.stdout()
    harness.check(code == 0, f"status --all of a ready cluster exited {code}:\n{stdout}{proc.stderr()}")
    lines = stdout.strip().splitlines()
    harness.check(lines[0].split() == ["SLOT", "ADMIN", "STATE", "EPOCH", "READY", "LINKS", "DOWN", "WORKER"], stdout)
    harness.check(lines[-1] == "cluster: 3/3 ready in epoch 1", f"the summary line:\n{stdout}")
    rows = table_rows(stdout)
    for slot in range(3):
        expected = [str(slot), str(cluster.admin(slot)), "ready", "1", "yes", "2/2", "-", "-"]
        harness.check(rows.get(slot) == expected, f"slot {slot}'s row is {rows.get(slot)}, not {expected}:\n{stdout}")

    # The same cluster through its plain config (no [admin]) and meshd cluster's numbering, as JSON.
    code, proc = await meshd(
        harness,
        "all-json",
        *("status", "--config", str(cluster.config), "--all", "--admin-base-port", str(cluster.admin_ports[0])),
        "--json",
    )
    harness.check(code == 0, f"status --all --json exited {code}:\n{proc.stdout()}{proc.stderr()}")
    report = json.loads(proc.stdout())
    harness.check(report["ok"] is True and report["ready"] == 3 and report["size"] == 3, f"report: {report}")
    harness.check([slot["slot"] for slot in report["slots"]] == [0, 1, 2], f"slots: {report['slots']}")
    for slot in report["slots"]:
        harness.check(slot["ready"] and slot["epoch"] == 1 and slot["down"] == [], f"slot: {slot}")
        harness.check(slot["status"]["index"] == slot["slot"], f"slot {slot['slot']} answered as another: {slot}")

    # A daemon that is not in await mode refuses the start op: exit 1 with its message.
    code, proc = await meshd(harness, "start-fixed", "start", "--admin", str(cluster.admin(0)), "--epoch", "2")
    harness.check(code == 1, f"meshd start against a fixed-epoch daemon exited {code}, expected 1")
    one_line_error(harness, proc, "not await")

    victim = daemons[2]
    victim.signal(signal.SIGSTOP)
    code, proc = await meshd(harness, "all-stopped", "status", "--config", config, "--all", "--timeout", str(TIMEOUT))
    took = time.monotonic() - proc.started
    stdout = proc.stdout()
    harness.check(code == 1, f"status --all with a stopped daemon exited {code}, expected 1:\n{stdout}")
    bounded(harness, "status --all with a stopped daemon", took)
    harness.check(table_rows(stdout).get(2, [])[2:3] == ["unreachable"], f"slot 2 is not unreachable:\n{stdout}")
    harness.check("slot 2 unreachable" in stdout.strip().splitlines()[-1], f"the summary line:\n{stdout}")
    harness.check(f"slot 2: no answer from {cluster.admin(2)}" in stdout, f"slot 2's reason is not shown:\n{stdout}")
    print(f"\nmeshd status --all --timeout {TIMEOUT:g} with a stopped daemon: exit 1 after {took:.2f}s")

    # Its peers notice the silence within heartbeat_timeout: the table shows the link to slot 2 down at both.
    async def noticed() -> tuple[bool, Any]:
        found = await harness.statuses(daemons[:2])
        return all(status and peer_row(status, 2)["state"] == "down" for status in found), found

    await harness.eventually(
        noticed, "slots 0 and 1 to see slot 2 down", timeout=cluster.timeouts["heartbeat_timeout"] + DEADLINE
    )
    code, proc = await meshd(harness, "all-down", "status", "--config", config, "--all", "--timeout", str(TIMEOUT))
    stdout = proc.stdout()
    harness.check(code == 1, f"status --all with a stopped daemon exited {code}, expected 1:\n{stdout}")
    rows = table_rows(stdout)
    for slot in (0, 1):
        cells = rows.get(slot, [])
        harness.check(cells[2:3] != ["ready"] and cells[4:7] == ["no", "1/2", "2"], f"slot {slot}:\n{stdout}")
    summary = stdout.strip().splitlines()[-1]
    harness.check(summary.startswith("cluster: 0/3 ready in epoch 1; "), f"the summary line:\n{stdout}")


async def test_status_all_reads_the_config_of_meshd_cluster(harness: Harness):
    mesh, admin = free_port_range(3), free_port_range(3)
    log_dir = harness.tmp / "logs"
    args = ["--size", "3", "--base-port", str(mesh[0]), "--admin-base-port", str(admin[0]), "--log-dir", str(log_dir)]
    cluster = harness.spawn("cluster", ["cluster", *args])

    async def ready() -> tuple[bool, Any]:
        harness.check(cluster.returncode is None, f"meshd cluster exited {cluster.returncode}")
        found = await harness.statuses([Address(HOST, port) for port in admin])
        return all(is_ready(status, 1) for status in found), found

    await harness.eventually(ready, "meshd cluster's 3 daemons ready at epoch 1")
    config = str(log_dir / "cluster.toml")
    code, proc = await meshd(
        harness, "all-cluster", "status", "--config", config, "--all", "--admin-base-port", str(admin[0])
    )
    stdout = proc.stdout()
    harness.check(code == 0, f"status --all of meshd cluster's cluster exited {code}:\n{stdout}{proc.stderr()}")
    harness.check(stdout.strip().splitlines()[-1] == "cluster: 3/3 ready in epoch 1", f"summary:\n{stdout}")
    harness.check(sorted(table_rows(stdout)) == [0, 1, 2], f"the table lacks a slot:\n{stdout}")


async def test_status_all_usage_errors_exit_2(harness: Harness):
    cluster = harness.cluster(2, name="all-usage")
    for name, args, flag in (
        ("no-config", ["--all"], "--all"),
        ("admin", ["--all", "--config", str(cluster.config), "--admin", f"{HOST}:1"], "--admin"),
        ("count", ["--all", "--config", str(cluster.config), "--admins", f"{HOST}:1"], "--admins"),
        ("not-all", ["--admins", f"{HOST}:1,{HOST}:2"], "--admins"),
    ):
        code, proc = await meshd(harness, f"usage-{name}", "status", *args)
        harness.check(code == 2, f"status {' '.join(args)} exited {code}, expected 2")
        one_line_error(harness, proc, flag)


# ----- meshd status --ready


async def test_status_ready_probe_forming_ready_and_stopped(harness: Harness):
    cluster = harness.cluster(2, name="probe-cli")
    first = harness.start(cluster, 0, epoch=1)
    await wait_state(harness, [first], "forming")
    admin = str(cluster.admin(0))
    probe = ("status", "--ready", "--admin", admin, "--timeout", str(TIMEOUT))

    code, proc = await meshd(harness, "probe-forming", *probe)
    harness.check(code == 1, f"status --ready of a forming daemon exited {code}, expected 1")
    harness.check(proc.stdout().startswith("not ready: forming; epoch 1, 0/1 links up"), f"stdout:\n{proc.stdout()}")

    second = harness.start(cluster, 1, epoch=1)
    await harness.wait_ready([first, second], epoch=1)
    code, proc = await meshd(harness, "probe-ready", *probe)
    harness.check(code == 0, f"status --ready of a ready daemon exited {code}:\n{proc.stdout()}{proc.stderr()}")
    harness.check(proc.stdout() == "ready: index 0 of 2, epoch 1, 1/1 links up\n", f"stdout:\n{proc.stdout()}")
    code, proc = await meshd(harness, "probe-quiet", *probe, "--quiet")
    harness.check(code == 0 and proc.stdout() == proc.stderr() == "", f"--quiet exited {code} or printed something")
    code, proc = await meshd(harness, "probe-json", *probe, "--json")
    harness.check(code == 0, f"status --ready --json exited {code}")
    harness.check(json.loads(proc.stdout())["state"] == "ready", f"--json printed:\n{proc.stdout()}")
    harness.check(proc.stderr().startswith("ready: "), f"--json's reason is not on stderr:\n{proc.stderr()}")

    first.signal(signal.SIGSTOP)
    code, proc = await meshd(harness, "probe-stopped", *probe)
    took = time.monotonic() - proc.started
    harness.check(code == 1, f"status --ready of a stopped daemon exited {code}, expected 1")
    bounded(harness, "status --ready of a stopped daemon", took)
    harness.check(proc.stdout().startswith(f"not ready: no answer from {admin}"), f"stdout:\n{proc.stdout()}")
    print(f"\nmeshd status --ready --timeout {TIMEOUT:g} against a stopped daemon: exit 1 after {took:.2f}s")


async def test_status_ready_and_all_show_a_running_worker(harness: Harness):
    cluster = harness.cluster(2, name="probe-worker")
    daemons = harness.start_all(cluster, epoch=1, extra_args=["--exec", "--", "sleep", "60"])

    async def running() -> tuple[bool, Any]:
        found = await harness.statuses(daemons)
        return all(is_ready(status, 1) and status["worker"]["state"] == "running" for status in found), found

    await harness.eventually(running, "both daemons ready with their worker running")
    code, proc = await meshd(harness, "probe-worker", "status", "--ready", "--admin", str(cluster.admin(0)))
    harness.check(code == 0, f"status --ready exited {code}:\n{proc.stdout()}")
    harness.check(proc.stdout().rstrip().endswith(", worker running"), f"stdout:\n{proc.stdout()}")
    admins = ",".join(str(cluster.admin(index)) for index in range(2))
    code, proc = await meshd(harness, "all-worker", "status", "--all", "--admins", admins)
    harness.check(code == 0, f"status --all exited {code}:\n{proc.stdout()}")
    rows = table_rows(proc.stdout())
    harness.check([rows[slot][-1] for slot in (0, 1)] == ["running", "running"], f"table:\n{proc.stdout()}")


# ----- completion


async def completion_script(harness: Harness, shell: str) -> Path:
    code, proc = await meshd(harness, f"completion-{shell}", "completion", shell)
    harness.check(code == 0, f"meshd completion {shell} exited {code}:\n{proc.stderr()}")
    path = harness.tmp / f"meshd.{shell}"
    path.write_text(proc.stdout(), encoding="utf-8")
    return path


async def run_shell(harness: Harness, name: str, argv: list[str]) -> str:
    proc = harness.launch(name, argv)
    code = await harness.wait_exit(proc)
    harness.check(code == 0, f"{' '.join(argv[:2])} exited {code}:\n{proc.stderr()}")
    return proc.stdout()


async def bash_complete(harness: Harness, script: Path, words: list[str]) -> list[str]:
    """What the bash function proposes for the command line ``words`` (the last one is being completed)."""
    line = (
        f"source {shlex.quote(str(script))}; COMP_WORDS=({shlex.join(words)}); COMP_CWORD={len(words) - 1}; "
        f"COMP_LINE={shlex.quote(' '.join(words))}; COMP_POINT=${{#COMP_LINE}}; _meshd meshd; "
        'printf "%s\\n" "${COMPREPLY[@]}"'
    )
    out = await run_shell(harness, "bash-complete", ["bash", "--norc", "--noprofile", "-c", line])
    return sorted(word for word in out.splitlines() if word)


async def test_bash_completion_follows_the_parser(harness: Harness):
    script = await completion_script(harness, "bash")
    await run_shell(harness, "bash-n", ["bash", "-n", str(script)])
    registered = await run_shell(harness, "bash-p", ["bash", "--norc", "-c", f"source {script}; complete -p meshd"])
    harness.check(registered.strip() == "complete -F _meshd meshd", f"complete -p meshd: {registered}")

    async def check(words: list[str], expected: list[str]) -> None:
        found = await bash_complete(harness, script, words)
        harness.check(found == sorted(expected), f"{' '.join(words)!r} completes to {found}, not {sorted(expected)}")

    await check(["meshd", "st"], ["start", "status"])
    await check(["meshd", "status", "--t"], ["--timeout", "--token-file"])
    await check(["meshd", "status", "--to"], ["--token-file"])  # --timeout begins --ti
    await check(["meshd", "run", "--epoch", ""], ["auto", "await"])
    await check(["meshd", "run", "--log-format", ""], ["json", "text"])
    await check(["meshd", "completion", ""], ["bash", "zsh"])
    await check(["meshd", "status", "--timeout", ""], [])
    (harness.tmp / "conf").mkdir()
    (harness.tmp / "conf" / "cluster.toml").write_text("", encoding="utf-8")
    await check(
        ["meshd", "status", "--config", str(harness.tmp / "conf" / "clu")], [str(harness.tmp / "conf" / "cluster.toml")]
    )
    await check(["meshd", "run", "--secret-file", str(harness.tmp / "con")], [str(harness.tmp / "conf")])
    found = await bash_complete(harness, script, ["meshd", "run", "--config", "x", "--exec", "--", "bas"])
    harness.check("bash" in found, f"the command after --exec completes to {found}")

    # Every command and every flag of the parser, none more: the script is made from it.
    parser = build_parser()
    (commands,) = [action for action in parser._actions if isinstance(action, argparse._SubParsersAction)]
    await check(["meshd", ""], [*commands.choices, "-h", "--help", "--version"])
    for name, sub in commands.choices.items():
        flags = [option for action in sub._actions for option in action.option_strings]
        if any(not action.option_strings for action in sub._actions):  # a positional completes first
            await check(["meshd", name, "-"], [flag for flag in flags if flag.startswith("-")])
        else:
            await check(["meshd", name, ""], flags)


async def test_zsh_completion_is_valid_and_completes(harness: Harness):
    if shutil.which("zsh") is None:
        pytest.skip("zsh is not installed (apt-get install zsh): the zsh script cannot be checked")
    script = await completion_script(harness, "zsh")
    await run_shell(harness, "zsh-n", ["zsh", "-n", str(script)])
    dump = harness.tmp / "zcompdump"
    registered = await run_shell(
        harness,
        "zsh-compdef",
        [
            "zsh",
            "-f",
            "-c",
            f"autoload -Uz compinit && compinit -u -d {dump} && source {script} && print -r -- $_comps[meshd]",
        ],
    )
    harness.check(registered.strip() == "_meshd", f"the zsh script did not register _meshd for meshd: {registered!r}")

    async def complete(line: str) -> list[str]:
        out = await run_shell(
            harness, "zsh-complete", ["zsh", "-f", str(zsh_capture(harness)), str(script), str(dump), line]
        )
        return sorted(entry.split(" -- ")[0].strip() for entry in out.splitlines() if entry.strip())

    for line, expected in (
        ("meshd st", ["start", "status"]),
        ("meshd status --t", ["--timeout", "--token-file"]),
        ("meshd run --epoch ", ["auto", "await"]),
        ("meshd completion ", ["bash", "zsh"]),
    ):
        found = await complete(line)
        harness.check(found == expected, f"zsh completes {line!r} to {found}, not {expected}")


# A zsh that completes one command line in a pseudo-terminal and prints what the completion system offered (one
# match per line, "MATCH -- DESCRIPTION"): compadd is wrapped to print its matches. Arguments: the script, a
# compinit dump file, the command line.
ZSH_CAPTURE_SOURCE = r"""
# $1: the completion script, $2: a compinit dump file, $3: the command line
zmodload zsh/zpty
local setup=${2}.setup line
cat > $setup <<'EOF'
PROMPT=
autoload -Uz compinit && compinit -u -d "$MESHD_ZCOMPDUMP"
source "$MESHD_COMPLETION"
bindkey '^M' undefined
bindkey '^J' undefined
bindkey '^I' complete-word
null-line() { echo -E - $'\0' }
compprefuncs=(null-line)
comppostfuncs=(null-line exit)
zstyle ':completion:*' list-grouped false
zstyle ':completion:*' insert-tab false
compadd() {
    if [[ ${@[1,(i)(-|--)]} == *-(O|A|D)\ * ]]; then builtin compadd "$@"; return $?; fi
    typeset -a __hits __dscr __tmp
    if (( $@[(I)-d] )); then
        __tmp=${@[$[${@[(i)-d]}+1]]}
        if [[ $__tmp == \(* ]]; then eval "__dscr=$__tmp"; else __dscr=( "${(@P)__tmp}" ); fi
    fi
    builtin compadd -A __hits -D __dscr "$@"
    [[ -n $__hits ]] || return
    local i; for i in {1..$#__hits}; do echo -E - "$__hits[$i] -- $__dscr[$i]"; done
}
echo ok
EOF
export MESHD_COMPLETION=$1 MESHD_ZCOMPDUMP=$2
zpty z zsh -f -i
zpty -w z "source ${(q)setup}"
repeat 20; do
    zpty -r z line
    [[ $line == ok* ]] && break
done
zpty -w z "$3"$'\t'
integer seen=0
while zpty -r z line; do
    if [[ $line == *$'\0'* ]]; then
        (( seen++ )) && exit 0
        continue
    fi
    (( seen )) && echo -E - ${line%$'\r'}
done
exit 2
"""


def zsh_capture(harness: Harness) -> Path:
    path = harness.tmp / "capture.zsh"
    if not path.exists():
        path.write_text(ZSH_CAPTURE_SOURCE, encoding="utf-8")
    return path
