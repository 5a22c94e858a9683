"""deploy/: the Kubernetes manifests parse, refer to each other consistently, and carry a valid config."""

from __future__ import annotations

import secrets as secrets_module
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from vmcp_opt.config import VmcpConfig, load_config

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
KUBE = DEPLOY / "kubernetes"
CONFIG = KUBE / "config" / "vmcp.yaml"  # the ConfigMap kustomization.yaml generates
KINDS = {
    "Secret": "v1",
    "Service": "v1",
    "Deployment": "apps/v1",
    "PodDisruptionBudget": "policy/v1",
    "HorizontalPodAutoscaler": "autoscaling/v2",
    "Kustomization": "kustomize.config.k8s.io/v1beta1",
}


def documents() -> dict[tuple[str, str], dict[str, Any]]:
    found = {}
    for path in sorted(KUBE.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            assert doc["apiVersion"] == KINDS[doc["kind"]], path.name
            name = doc.get("metadata", {}).get("name", path.stem)
            found[(doc["kind"], name)] = doc
    return found


def test_every_manifest_parses_with_a_known_kind_and_api_version() -> None:
    kinds = {kind for kind, _ in documents()}
    assert kinds == set(KINDS)


def test_the_kustomization_lists_every_manifest_but_the_example_secret() -> None:
    listed = set(documents()[("Kustomization", "kustomization")]["resources"])
    assert listed == {p.name for p in KUBE.glob("*.yaml")} - {"kustomization.yaml", "secret.example.yaml"}


def test_probes_ports_and_names_agree() -> None:
    docs = documents()
    gateway = docs[("Deployment", "vmcp")]
    pod = gateway["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["readinessProbe"]["httpGet"]["port"] in ports
    labels = gateway["spec"]["template"]["metadata"]["labels"]
    for kind in ("Service", "PodDisruptionBudget"):
        doc = docs[(kind, "vmcp")]
        selector = doc["spec"]["selector"]
        assert selector.get("matchLabels", selector).items() <= labels.items(), kind
    assert docs[("Service", "vmcp")]["spec"]["ports"][0]["targetPort"] in ports
    # Any replica serves any session and relays any round (sessions.store: redis): no affinity.
    assert docs[("Service", "vmcp")]["spec"].get("sessionAffinity", "None") == "None"
    assert docs[("HorizontalPodAutoscaler", "vmcp")]["spec"]["scaleTargetRef"]["name"] == "vmcp"
    volumes = {v["name"]: v for v in pod["volumes"]}
    generated = documents()[("Kustomization", "kustomization")]["configMapGenerator"]
    assert volumes["config"]["configMap"]["name"] == generated[0]["name"] == "vmcp-config"
    assert generated[0]["files"] == ["config/vmcp.yaml"]  # a new name per content: an edit rolls the pods
    secret = volumes["secrets"]["secret"]["secretName"]
    assert secret == docs[("Secret", "vmcp-secrets")]["metadata"]["name"]
    redis_volume = docs[("Deployment", "vmcp-redis")]["spec"]["template"]["spec"]["volumes"][0]
    assert redis_volume["secret"]["secretName"] == secret
    # The config listens on the container's port; preStop, the drain and the shutdown fit in the grace period.
    config = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    assert config["server"]["port"] == ports["http"]
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    stopping = pre_stop + config["server"]["drain_timeout"] + config["timeouts"]["shutdown"]
    assert stopping < pod["terminationGracePeriodSeconds"]


def test_the_config_is_valid_and_reads_its_secrets_from_the_mounted_secret(tmp_path: Path) -> None:
    docs = documents()
    text = CONFIG.read_text(encoding="utf-8")
    config = load_config_text(tmp_path, text)
    secret_keys = set(docs[("Secret", "vmcp-secrets")]["stringData"])
    mounted = "/etc/vmcp/secrets/"
    for path in (config.request_state.key_file, config.redis.password_file, config.auth.incoming.api_keys.file):
        assert path is not None and path.startswith(mounted) and path.removeprefix(mounted) in secret_keys
    assert config.rate_limits.store == "redis" and config.redis.url.startswith("redis://vmcp-redis:6379")
    assert ("Service", "vmcp-redis") in docs
    # `vmcp validate` reads the mounted files: give it the example Secret's, where the pod would have them.
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    for key, value in docs[("Secret", "vmcp-secrets")]["stringData"].items():
        (secrets / key).write_text(value, encoding="utf-8")
    (tmp_path / "vmcp.yaml").write_text(text.replace(mounted, f"{secrets}/"), encoding="utf-8")

    def validate() -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "vmcp_opt", "validate", "-c", str(tmp_path / "vmcp.yaml")]
        return subprocess.run(command, capture_output=True, text=True, timeout=120)

    # The example's state key is a placeholder the gateway refuses: applied as it is, it must not start.
    refused = validate()
    assert refused.returncode == 2 and "request_state.key: 10 bytes" in refused.stderr, refused.stderr
    (secrets / "state-key").write_text(secrets_module.token_hex(32), encoding="utf-8")
    done = validate()
    assert done.returncode == 0, done.stdout + done.stderr


def load_config_text(directory: Path, text: str) -> VmcpConfig:
    (directory / "as-mounted.yaml").write_text(text, encoding="utf-8")
    return load_config(directory / "as-mounted.yaml")


def test_the_systemd_unit_runs_the_gateway_with_its_secrets_from_a_file() -> None:
    unit = (DEPLOY / "systemd" / "vmcp.service").read_text(encoding="utf-8")
    assert "ExecStart=/opt/vmcp-opt/.venv/bin/vmcp serve -c /etc/vmcp/vmcp.yaml" in unit
    assert "EnvironmentFile=/etc/vmcp/env" in unit and "KillSignal=SIGTERM" in unit
