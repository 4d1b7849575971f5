"""The Dockerfile's HEALTHCHECK and the Kubernetes manifests, checked against a real server.

Schema validation and the Dockerfile lint run in `make check-deploy`; these
tests check what a schema cannot: that the probes, ports and keys file fit the
server's settings, and that the HEALTHCHECK command works.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import yaml

from server.config import Settings
from server.security.auth import parse_api_keys, read_api_keys_file
from tests.support.servers import ROOT, health_status

pytestmark = pytest.mark.integration

K8S = ROOT / "deploy" / "k8s"


def manifests() -> dict[tuple[str, str], dict]:
    found = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            found[(doc["kind"], doc["metadata"]["name"])] = doc
    return found


def healthcheck_command() -> list[str]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    match = re.search(r"^HEALTHCHECK .*? CMD (\[.*\])$", text, re.MULTILINE)
    assert match, "no HEALTHCHECK ... CMD [...] in the Dockerfile"
    return json.loads(match.group(1))


def test_every_kind_the_deployment_needs_is_there():
    kinds = {kind for kind, _ in manifests()}
    assert kinds == {"ConfigMap", "Secret", "Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"}
    assert ("Deployment", "tf-serving-worker") in manifests()


def test_config_map_holds_only_known_settings():
    config = manifests()[("ConfigMap", "tf-serving-config")]["data"]
    unknown = {name for name in config if name.lower() not in Settings.model_fields}
    assert unknown == set()
    Settings(_env_file=None, **{k.lower(): v for k, v in config.items()})


@pytest.mark.parametrize("name", ["tf-serving", "tf-serving-worker"])
def test_pods_probe_grpc_health_on_the_health_port_and_take_a_gpu(name):
    found = manifests()
    config = found[("ConfigMap", "tf-serving-config")]["data"]
    health_port = int(config["HEALTH_SERVER_ADDRESS"].rpartition(":")[2])
    (container,) = found[("Deployment", name)]["spec"]["template"]["spec"]["containers"]
    assert container["livenessProbe"]["grpc"] == {"port": health_port, "service": "liveness"}
    assert container["readinessProbe"]["grpc"] == {"port": health_port, "service": "readiness"}
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert {"name": "health", "containerPort": health_port} in container["ports"]
    assert found[("Deployment", name)]["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    if name == "tf-serving-worker":
        assert container["args"] == ["worker"]


def test_api_keys_secret_is_a_keys_file_the_server_reads(tmp_path):
    secret = manifests()[("Secret", "tf-serving-api-keys")]
    keys_file = tmp_path / "keys.txt"
    keys_file.write_text(secret["stringData"]["keys.txt"])
    (key,) = read_api_keys_file(keys_file)
    assert key == parse_api_keys("example-client:change-me")[0]


def test_dockerfile_healthcheck_command_reports_readiness(telemetry_app):
    command = healthcheck_command()
    assert command[:3] == ["python", "-m", "client"]
    app = telemetry_app(listen_only=True, health_server_address="127.0.0.1:0")
    target = command.index("--target") + 1
    command[target] = f"127.0.0.1:{app.health_port}"
    run = [sys.executable, *command[1:]]
    not_ready = subprocess.run(run, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert (not_ready.returncode, not_ready.stdout.strip()) == (1, "NOT_SERVING")
    app.load_models()
    assert health_status(f"127.0.0.1:{app.health_port}", "readiness") == "SERVING"
    ready = subprocess.run(run, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert (ready.returncode, ready.stdout.strip()) == (0, "SERVING")
