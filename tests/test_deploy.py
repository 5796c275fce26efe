"""The deployment files of deploy/ keep their promises: the Kubernetes manifests agree with each other and with the
meshd config they carry, and the systemd unit maps meshd's exit codes the way README "Deploying" says.

Kubernetes (every YAML of deploy/kubernetes, both variants): a headless Service that publishes not-ready addresses;
a StatefulSet with ``podManagementPolicy: Parallel`` behind that Service, whose pods the Service selects; the
ConfigMap's TOML is a valid meshd config (``meshd.config.structure``) whose peers are the StatefulSet's pods by DNS
name, one per replica; the container and Service ports are the config's mesh and HTTP ports; the probes ask /livez
and /readyz on the HTTP port; the container's command, run by a real ``sh`` with the pod's hostname, is a ``meshd
run`` that meshd's own parser takes, with the pod ordinal as index, ``--epoch auto`` and ``--on-fence restart``;
the Secret is mounted where ``secret_file`` points, readable by its owner only; the sidecar variant shares an
emptyDir where ``[worker] socket`` points. systemd: ``Type=notify``, and the exit-status keys for 0, 2, 70 and 75.
"""

from __future__ import annotations

import configparser
import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from meshd.cli import build_parser
from meshd.config import Config, check_exposure, structure
from meshd.core.address import Address
from meshd.core.auth import parse_keys

ROOT = Path(__file__).resolve().parent.parent
KUBERNETES = ROOT / "deploy" / "kubernetes"
UNIT = ROOT / "deploy" / "systemd" / "meshd@.service"
NAMESPACE = "default"
VARIANTS = {"exec": KUBERNETES, "sidecar": KUBERNETES / "sidecar"}


def load(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]


def one(directory: Path, kind: str) -> dict[str, Any]:
    """The one object of ``kind`` that applies to a variant: its own directory first, then the shared one."""
    for folder in (directory, KUBERNETES):
        found = [doc for path in sorted(folder.glob("*.yaml")) for doc in load(path) if doc["kind"] == kind]
        if found:
            assert len(found) == 1, f"{len(found)} objects of kind {kind} in {folder}"
            return found[0]
    raise AssertionError(f"no {kind} for {directory}")


class Variant:
    """One deployment: its StatefulSet with the Service, ConfigMap and Secret it uses, and the meshd config."""

    def __init__(self, directory: Path) -> None:
        self.statefulset = one(directory, "StatefulSet")
        self.service = one(directory, "Service")
        self.secret = one(directory, "Secret")
        self.pod = self.statefulset["spec"]["template"]["spec"]
        self.volumes = {volume["name"]: volume for volume in self.pod["volumes"]}
        self.meshd = self.container("meshd")
        config_volume = self.volume_of(self.meshd, "configMap")
        self.configmap = one(directory, "ConfigMap")
        assert config_volume["configMap"]["name"] == self.configmap["metadata"]["name"]
        (self.config_key,) = self.configmap["data"]
        self.config_path = self.mount_path(self.meshd, config_volume["name"]) / self.config_key
        self.raw = tomllib.loads(self.configmap["data"][self.config_key])
        self.config: Config = structure(self.raw)

    def container(self, name: str) -> dict[str, Any]:
        (found,) = [container for container in self.pod["containers"] if container["name"] == name]
        return found

    def volume_of(self, container: dict[str, Any], kind: str) -> dict[str, Any]:
        (found,) = [self.volumes[m["name"]] for m in container["volumeMounts"] if kind in self.volumes[m["name"]]]
        return found

    @staticmethod
    def mount_path(container: dict[str, Any], volume: str) -> PurePosixPath:
        (found,) = [m["mountPath"] for m in container.get("volumeMounts", ()) if m["name"] == volume]
        return PurePosixPath(found)

    def port(self, container: dict[str, Any], name: str) -> int:
        (found,) = [port["containerPort"] for port in container["ports"] if port["name"] == name]
        return found


@pytest.fixture(params=sorted(VARIANTS), scope="module")
def variant(request) -> Variant:
    return Variant(VARIANTS[request.param])


def test_every_manifest_parses_and_names_itself():
    paths = sorted(KUBERNETES.rglob("*.yaml"))
    assert {path.relative_to(KUBERNETES).as_posix() for path in paths} >= {
        "service.yaml",
        "configmap.yaml",
        "secret.yaml",
        "statefulset.yaml",
        "sidecar/configmap.yaml",
        "sidecar/statefulset.yaml",
    }
    for path in paths:
        for doc in load(path):
            assert doc["apiVersion"] and doc["kind"] and doc["metadata"]["name"], path


def test_the_service_is_headless_and_publishes_pods_before_they_are_ready(variant: Variant):
    spec = variant.service["spec"]
    assert spec["clusterIP"] == "None"
    assert spec["publishNotReadyAddresses"] is True
    assert variant.statefulset["spec"]["serviceName"] == variant.service["metadata"]["name"]
    labels = variant.statefulset["spec"]["template"]["metadata"]["labels"]
    assert spec["selector"].items() <= labels.items(), "the Service does not select the StatefulSet's pods"
    assert variant.statefulset["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_pods_start_in_parallel(variant: Variant):
    assert variant.statefulset["spec"]["podManagementPolicy"] == "Parallel"


def test_peers_are_the_statefulsets_pods_by_dns_name(variant: Variant):
    spec = variant.statefulset["spec"]
    name, service = variant.statefulset["metadata"]["name"], spec["serviceName"]
    mesh = variant.port(variant.meshd, "mesh")
    expected = [Address(f"{name}-{k}.{service}.{NAMESPACE}.svc.cluster.local", mesh) for k in range(spec["replicas"])]
    assert variant.config.cluster.peers == expected


def test_ports_match_the_config(variant: Variant):
    config, meshd = variant.config, variant.meshd
    assert config.cluster.listen == Address("0.0.0.0", variant.port(meshd, "mesh"))
    assert config.http.listen == Address("0.0.0.0", variant.port(meshd, "http"))
    assert config.admin.listen.loopback, "the admin websocket must stay on the pod's loopback"
    service_ports = {port["name"]: port for port in variant.service["spec"]["ports"]}
    assert set(service_ports) == {"mesh", "http"}
    for name, port in service_ports.items():
        assert port["targetPort"] == name
        assert port["port"] == variant.port(meshd, name)


def test_probes_ask_livez_and_readyz_on_the_http_port(variant: Variant):
    meshd = variant.meshd
    paths = {probe: meshd[probe]["httpGet"]["path"] for probe in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert paths == {"startupProbe": "/livez", "livenessProbe": "/livez", "readinessProbe": "/readyz"}
    for probe in paths:
        port = meshd[probe]["httpGet"]["port"]
        assert port == "http" or port == variant.port(meshd, "http"), probe


def run_command(container: dict[str, Any], hostname: str, tmp_path: Path) -> list[str]:
    """The arguments ``meshd`` gets when the container's command runs in pod ``hostname``: the command is run by a
    real ``sh`` with a stand-in ``meshd`` first on PATH that prints its arguments."""
    shim = tmp_path / "meshd"
    shim.write_text(f"#!{sys.executable}\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n", encoding="utf-8")
    shim.chmod(0o755)
    command = container["command"] + container.get("args", [])
    env = {"PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}", "HOSTNAME": hostname}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=10, check=True)
    return json.loads(done.stdout)


def test_the_command_runs_meshd_with_the_pod_ordinal_auto_epochs_and_restart_on_fence(variant: Variant, tmp_path):
    name = variant.statefulset["metadata"]["name"]
    replicas = variant.statefulset["spec"]["replicas"]
    for ordinal in (0, replicas - 1):
        words = run_command(variant.meshd, f"{name}-{ordinal}", tmp_path)
        cut = words.index("--exec") if "--exec" in words else len(words)
        before, worker = words[:cut], words[cut + 1 :]
        args = build_parser().parse_args(before)
        assert args.command == "run"
        assert args.index == ordinal
        assert str(args.epoch) == "auto"
        assert args.on_fence == "restart"
        assert PurePosixPath(args.config) == variant.config_path
        if variant.config.worker.socket is None:
            assert worker[:1] == ["--"] and worker[1:], f"no worker after --exec: {words}"
        else:
            assert "--exec" not in words, "a sidecar worker attaches: meshd starts none"


def test_the_secret_is_mounted_where_secret_file_points_readable_by_its_owner_only(variant: Variant):
    volume = variant.volume_of(variant.meshd, "secret")
    assert volume["secret"]["secretName"] == variant.secret["metadata"]["name"]
    mode = volume["secret"]["defaultMode"]
    assert not mode & (stat.S_IRWXG | stat.S_IRWXO), f"defaultMode {mode:o}"
    secret_file = PurePosixPath(variant.config.cluster.secret_file or "")
    assert secret_file.parent == variant.mount_path(variant.meshd, volume["name"])
    (key,) = variant.secret["stringData"]
    assert secret_file.name == key
    # Peers beyond loopback: meshd would refuse this config without its secret.
    check_exposure(variant.config, variant.config.admin.listen, variant.config.cluster.secret_file, False)


def test_the_secret_template_holds_no_key():
    secret = one(KUBERNETES, "Secret")
    for value in secret.get("stringData", {}).values():
        with pytest.raises(ValueError):
            parse_keys(value)
    assert "data" not in secret, "a Secret template with base64 data may hold a real key"


def test_the_sidecar_shares_an_emptydir_where_the_worker_socket_is():
    sidecar = Variant(VARIANTS["sidecar"])
    socket_path = PurePosixPath(sidecar.config.worker.socket or "")
    assert sidecar.config.worker.exec is None
    worker = sidecar.container("worker")
    run = sidecar.volume_of(sidecar.meshd, "emptyDir")
    assert sidecar.mount_path(sidecar.meshd, run["name"]) == socket_path.parent
    assert sidecar.mount_path(worker, run["name"]) == socket_path.parent
    assert str(socket_path) in " ".join(worker["command"] + worker.get("args", []))
    assert "meshd run" not in " ".join(worker["command"])
    # The same cluster as the --exec variant, apart from the worker.
    plain = Variant(VARIANTS["exec"])
    assert {**sidecar.raw, "worker": None} == {**plain.raw, "worker": None}


# ----- systemd


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text(encoding="utf-8"))
    return parser


def statuses(value: str) -> set[str]:
    return set(value.split())


def test_the_unit_notifies_and_maps_every_exit_code():
    service = unit()["Service"]
    assert service["Type"] == "notify"
    assert service["NotifyAccess"] == "main"
    assert "WatchdogSec" in service
    # 0: success, not restarted; 1, 70 (and signals, the watchdog): failures, restarted; 2: never restarted.
    assert service["Restart"] == "on-failure"
    assert statuses(service["RestartPreventExitStatus"]) == {"2"}
    # 75: a fence is no failure of the unit, and it is restarted at once anyway.
    assert "75" in statuses(service["SuccessExitStatus"])
    assert "75" in statuses(service["RestartForceExitStatus"])
    for code in ("0", "1", "70"):
        assert code not in statuses(service["RestartPreventExitStatus"]) | statuses(service["RestartForceExitStatus"])
    assert "1" not in statuses(service["SuccessExitStatus"]) and "70" not in statuses(service["SuccessExitStatus"])


def test_the_unit_runs_its_instance_as_the_index_with_auto_epochs():
    words = shlex.split(unit()["Service"]["ExecStart"])
    assert words[:2] == ["/usr/bin/meshd", "run"]
    assert words[words.index("--index") + 1] == "%i"
    given = ["7" if word == "%i" else word for word in words[1:] if not word.startswith("$")]  # $MESHD_ARGS: none
    args = build_parser().parse_args(given)
    assert args.index == 7
    assert str(args.epoch) == "auto"
    assert args.config == Path("/etc/meshd/cluster.toml")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_systemd_analyze_verifies_the_unit(tmp_path):
    # verify also checks that ExecStart's program exists: run this environment's meshd instead.
    text = UNIT.read_text(encoding="utf-8").replace(
        "ExecStart=/usr/bin/meshd ", f"ExecStart={sys.executable} -m meshd "
    )
    (tmp_path / UNIT.name).write_text(text, encoding="utf-8")
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(tmp_path / "meshd@0.service")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    complaints = [line for line in (done.stdout + done.stderr).splitlines() if "meshd@" in line]
    assert done.returncode == 0 and not complaints, done.stdout + done.stderr
