"""The files a newcomer is pointed at are real and consistent: docker-compose.yml and the broker configuration
it mounts, the examples/ folder, and README references."""

from __future__ import annotations

import configparser
import dataclasses
import re
import subprocess
from pathlib import Path
from typing import Any, Dict, List

import pytest
import yaml

from Listener import EventListenerConfig
from Listener.cli.command import EXIT_OK, main
from Listener.config.settings import environment_variables
from tests.support.brokers import COMPOSE_MOSQUITTO_CONFIG, COMPOSE_PASSWORD_FILE, adapt_compose_config


ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def test_compose_file_runs_eclipse_mosquitto_with_the_repository_config() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    service = compose["services"]["mosquitto"]
    assert service["image"].split(":")[0] == "eclipse-mosquitto"
    assert sorted(service["ports"]) == ["1883:1883", "1884:1884"]
    source, target, *mode = service["volumes"][0].split(":")
    assert (ROOT / source).resolve() == COMPOSE_MOSQUITTO_CONFIG.parent
    assert target == "/mosquitto/config" and mode == ["ro"]


def test_compose_broker_config_has_the_anonymous_and_the_password_listener() -> None:
    text = COMPOSE_MOSQUITTO_CONFIG.read_text(encoding="utf-8")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    assert "per_listener_settings true" in lines
    assert "max_queued_messages 0" in lines  # the tests' bursts must not be cut at mosquitto's default of 1000
    anonymous = lines.index("listener 1883")
    protected = lines.index("listener 1884")
    assert lines[anonymous + 1] == "allow_anonymous true"
    assert lines[protected + 1:protected + 3] == ["allow_anonymous false", "password_file /mosquitto/config/passwords"]
    users = [line.split(":", 1)[0] for line in COMPOSE_PASSWORD_FILE.read_text(encoding="ascii").splitlines()]
    assert users == ["user", "test"]  # the manual's test fixtures' user/password, and the config defaults test/test


def test_test_brokers_adapt_the_compose_config(tmp_path: Path) -> None:
    text = COMPOSE_MOSQUITTO_CONFIG.read_text(encoding="utf-8")
    lines = adapt_compose_config(text, ["log_dest stderr"], {1883: 41001, 1884: 41002}, tmp_path / "pw")
    assert lines[0] == "per_listener_settings true"
    assert "listener 41001 127.0.0.1" in lines and "listener 41002 127.0.0.1" in lines
    assert f"password_file {tmp_path / 'pw'}" in lines
    assert "log_dest stdout" not in lines and "log_dest stderr" in lines
    with pytest.raises(RuntimeError, match="no listener on port"):
        adapt_compose_config(text, [], {1883: 1, 1884: 2, 1885: 3}, tmp_path / "pw")
    with pytest.raises(RuntimeError, match="no test port for its listener 1884"):
        adapt_compose_config(text, [], {1883: 1}, tmp_path / "pw")


# -- examples/ --------------------------------------------------------------------------------------------


def test_listener_toml_names_every_option_and_is_valid(capsys: pytest.CaptureFixture[str]) -> None:
    text = (EXAMPLES / "listener.toml").read_text(encoding="utf-8")
    for field in dataclasses.fields(EventListenerConfig):
        assert re.search(rf"^(# )?{field.name} = ", text, re.MULTILINE) or f"[{field.name}]" in text, field.name
    assert main(["check-config", str(EXAMPLES / "listener.toml")]) == EXIT_OK
    assert "configuration is valid" in capsys.readouterr().err


def test_listener_toml_sets_the_defaults() -> None:
    config = EventListenerConfig.from_file(EXAMPLES / "listener.toml")
    assert config == EventListenerConfig()


def test_systemd_unit() -> None:
    unit = configparser.ConfigParser(interpolation=None, strict=True)
    unit.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    unit.read_string((EXAMPLES / "mqtt-listener.service").read_text(encoding="utf-8"))
    service = unit["Service"]
    assert "mqtt-listener run examples.sample_processor:process --config" in service["ExecStart"]
    assert "mqtt-listener check-config" in service["ExecStartPre"]
    assert service["KillSignal"] == "SIGTERM"
    assert int(service["TimeoutStopSec"]) > EventListenerConfig().shutdown_grace_period
    for section in unit.sections():
        for key, value in unit[section].items():
            assert "#" not in value, f"{key}: systemd has no comments after a value"
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_kubernetes_snippet(tmp_path: Path) -> None:
    documents: List[Dict[str, Any]] = list(yaml.safe_load_all((EXAMPLES / "kubernetes.yaml").read_text(encoding="utf-8")))
    kinds = {doc["kind"]: doc for doc in documents}
    assert set(kinds) == {"ConfigMap", "Deployment"}
    config_file = tmp_path / "listener.toml"
    config_file.write_text(kinds["ConfigMap"]["data"]["listener.toml"], encoding="utf-8")
    config = EventListenerConfig.from_file(config_file)
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert pod["terminationGracePeriodSeconds"] > config.shutdown_grace_period
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["ports"][0]["containerPort"] == config.http_port
    assert config.http_host == "0.0.0.0"  # noqa: S104 - the kubelet probes the pod's address
    assert [e["name"] for e in container["env"]] == ["MQTT_PASSWORD"]
    mount = container["volumeMounts"][0]["mountPath"]
    assert container["args"][container["args"].index("--config") + 1] == f"{mount}/listener.toml"


def test_kubernetes_deployment_past_one_machine(tmp_path: Path) -> None:
    """examples/kubernetes-scaled.yaml (docs/scaling.md): pods spread over nodes, a share group, Redis Cluster,
    a token for the dashboard off loopback, and a PodDisruptionBudget that never lets a drain take every pod."""
    text = (EXAMPLES / "kubernetes-scaled.yaml").read_text(encoding="utf-8")
    kinds = {doc["kind"]: doc for doc in yaml.safe_load_all(text)}
    assert set(kinds) == {"ConfigMap", "Deployment", "PodDisruptionBudget"}
    config_file = tmp_path / "listener.toml"
    config_file.write_text(kinds["ConfigMap"]["data"]["listener.toml"], encoding="utf-8")
    config = EventListenerConfig.from_file(config_file)
    assert config.share_group and config.job_store.startswith("redis+cluster://") and config.qos >= 1
    deployment, budget = kinds["Deployment"], kinds["PodDisruptionBudget"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"] == labels == budget["spec"]["selector"]["matchLabels"]
    assert 1 <= budget["spec"]["minAvailable"] < deployment["spec"]["replicas"]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > config.shutdown_grace_period
    spread = pod["topologySpreadConstraints"][0]
    assert spread["topologyKey"] == "kubernetes.io/hostname" and spread["labelSelector"]["matchLabels"] == labels
    container = pod["containers"][0]
    assert container["args"][container["args"].index("--workers") + 1].isdigit()
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["ports"][0]["containerPort"] == config.http_port
    env = {item["name"]: item["valueFrom"] for item in container["env"]}
    assert env["MQTT_CLIENT_ID"] == {"fieldRef": {"fieldPath": "metadata.name"}}  # a client id per pod
    assert set(env) == {"MQTT_CLIENT_ID", "MQTT_PASSWORD", "MQTT_HTTP_TOKEN"}  # secrets from the Secret only
    assert "secretKeyRef" in env["MQTT_PASSWORD"] and "secretKeyRef" in env["MQTT_HTTP_TOKEN"]
    options = environment_variables(environ={name: "x" for name in env})
    assert set(options) == {"client_id", "password", "http_token"}  # each variable names an option
    mount = container["volumeMounts"][0]["mountPath"]
    assert container["args"][container["args"].index("--config") + 1] == f"{mount}/listener.toml"


def test_sample_processor_rules() -> None:
    from examples.sample_processor import process

    assert process({"task": "greet", "name": "Ada"}, "j-1") == {"job_id": "j-1", "greeting": "hello, Ada"}
    result = process({"task": "sum", "numbers": [1, 2.5], "_topic": "jobs"}, "j-2")
    assert (result.topic, result.data) == ("jobs/sums", {"job_id": "j-2", "total": 3.5})
    assert process({"task": "ignore"}, "j-3") is None
    with pytest.raises(ValueError, match="unknown task 'fly'"):
        process({"task": "fly"}, "j-4")


# -- references --------------------------------------------------------------------------------------------


def tracked_text_files() -> List[Path]:
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],  # noqa: S603,S607
                            capture_output=True, text=True, cwd=str(ROOT), check=False)
    if listed.returncode != 0:
        pytest.skip("not a git checkout: the repository's file list is unknown")
    files = []
    for name in listed.stdout.splitlines():
        path = ROOT / name
        if path.suffix in {".md", ".py", ".toml", ".yml", ".yaml", ".cfg", ".ini", ".service", ".conf", ".txt", ""} \
                and path.is_file():
            files.append(path)
    return files


def test_no_file_names_a_package_registry_host() -> None:
    hosts = re.compile(r"pypi\.org|pythonhosted\.org|registry\.npmjs\.org|deb\.debian\.org|proxy\.golang\.org")
    offenders = [str(p.relative_to(ROOT)) for p in tracked_text_files()
                 if hosts.search(p.read_text(encoding="utf-8", errors="replace"))]
    assert offenders == []


def test_readme_references_only_what_the_repository_has() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "SPEC.md" not in readme and "shared project folder" not in readme
    for reference in sorted(set(re.findall(r"`((?:docs|examples|scripts|docker)/[\w./-]+|[\w-]+\.(?:md|yml))`", readme))):
        assert (ROOT / reference).exists(), reference
