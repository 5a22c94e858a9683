"""deploy/: what the image, the Kubernetes manifests and the systemd unit tell the gateway agrees with the code.

- every `VMCP_` variable they set is a setting the gateway reads (a misspelt one without `__`, such as
  `VMCP_DATA_DIRS`, is ignored without a word, and the index would go to a read-only home);
- the pods pass the Pod Security Standard "restricted", so a namespace enforcing it admits them;
- on the read-only root filesystem, everything the gateway writes is on a writable volume, the model export
  baked into the image is not hidden by one, and the image runs what the Deployment expects.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from vmcp_opt.config import load_config

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
UNIT = DEPLOY / "systemd" / "vmcp.service"


def deployments() -> dict[str, dict[str, Any]]:
    found = {}
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc["kind"] == "Deployment":
                found[doc["metadata"]["name"]] = doc
    return found


def gateway_container() -> tuple[dict[str, Any], dict[str, Any]]:
    pod = deployments()["vmcp"]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    return pod, container


def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments), continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction, arguments in dockerfile():
        if instruction == "ENV":
            env |= dict(pair.split("=", 1) for pair in arguments.split())
    return env


def deploy_variables() -> list[tuple[str, str, str]]:
    """(where, name, value) of every environment variable the deploy files set."""
    found = [("Dockerfile", name, value) for name, value in image_env().items()]
    _, container = gateway_container()
    found += [("deployment.yaml", item["name"], item["value"]) for item in container.get("env", [])]
    for line in UNIT.read_text(encoding="utf-8").splitlines():
        if line.startswith("Environment="):
            name, _, value = line.removeprefix("Environment=").partition("=")
            found.append(("vmcp.service", name, value))
    return found


@pytest.mark.parametrize(
    ("where", "name", "value"),
    [v for v in deploy_variables() if v[1].upper().startswith("VMCP_")],
    ids=lambda v: str(v),
)
def test_every_vmcp_variable_the_deploy_files_set_is_a_setting_the_gateway_reads(
    where: str, name: str, value: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_file = tmp_path / "vmcp.yaml"
    config_file.write_text("backends: []\n", encoding="utf-8")
    monkeypatch.setenv(name, value)
    setting: Any = load_config(config_file)
    path = name[len("VMCP_") :].lower().split("__")
    for part in path:
        assert hasattr(setting, part), f"{where}: {name} is no setting ({'.'.join(path)} does not exist)"
        setting = getattr(setting, part)
    assert str(setting) == value, f"{where}: {name}={value} did not reach {'.'.join(path)} ({setting!r})"


@pytest.mark.parametrize("name", sorted(deployments()))
def test_the_pods_meet_the_restricted_pod_security_standard(name: str) -> None:
    pod = deployments()[name]["spec"]["template"]["spec"]
    pod_context = pod.get("securityContext", {})
    for container in pod["containers"]:
        context = {**pod_context, **container.get("securityContext", {})}
        where = f"{name}/{container['name']}"
        assert context.get("runAsNonRoot") is True and context.get("runAsUser", 1) != 0, where
        assert context.get("allowPrivilegeEscalation") is False, where
        assert "ALL" in context.get("capabilities", {}).get("drop", []), where
        assert context.get("seccompProfile", {}).get("type") in ("RuntimeDefault", "Localhost"), where
        assert not context.get("capabilities", {}).get("add"), where
        assert context.get("readOnlyRootFilesystem") is True, where


def under(path: str, mount: str) -> bool:
    return PurePosixPath(path) == PurePosixPath(mount) or PurePosixPath(mount) in PurePosixPath(path).parents


def test_the_gateway_writes_only_to_volumes_and_the_image_model_is_not_hidden() -> None:
    pod, container = gateway_container()
    env = image_env() | {item["name"]: item["value"] for item in container.get("env", [])}
    mounts = container["volumeMounts"]
    writable = [m["mountPath"] for m in mounts if not m.get("readOnly")]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    # The index and usage history (data_dir), HOME (ONNX Runtime, torch) and the temporary directory.
    for written in (env["VMCP_DATA_DIR"], env["HOME"], env.get("TMPDIR", "/tmp")):
        assert any(under(written, mount) for mount in writable), f"{written} is on the read-only root filesystem"
    # The export made at build time is read where the image put it, not shadowed by an empty volume.
    model_cache = env["VMCP_OPTIMIZER__MODEL_CACHE"]
    assert not any(under(model_cache, m["mountPath"]) for m in mounts), f"a volume hides {model_cache}"
    # The image runs the gateway as the pod's user, on the port and with the config file the pod gives it.
    instructions = dict(dockerfile())
    user, _, group = instructions["USER"].partition(":")
    assert user == str(pod["securityContext"]["runAsUser"])
    assert group == str(pod["securityContext"]["runAsGroup"])
    assert instructions["EXPOSE"] == str(container["ports"][0]["containerPort"])
    # An init in front of the gateway (tests/test_deploy_image.py runs it), which reaps its backends' orphans.
    entrypoint = json.loads(instructions["ENTRYPOINT"])
    assert entrypoint[-1] == "vmcp" and len(entrypoint) > 1, entrypoint
    args = container.get("args", json.loads(instructions["CMD"]))
    assert args[:3] == ["serve", "-c", "/etc/vmcp/vmcp.yaml"]
    config_mount = next(m for m in mounts if m["name"] == "config")
    assert config_mount["mountPath"] == args[2]
    config = yaml.safe_load(deployments_config())
    assert config["server"]["port"] == container["ports"][0]["containerPort"]


def deployments_config() -> str:
    return (DEPLOY / "kubernetes" / "config" / "vmcp.yaml").read_text(encoding="utf-8")


def test_the_image_copies_what_the_package_is_built_from_and_nothing_else() -> None:
    root = DEPLOY.parent
    copied: set[str] = set()
    for instruction, arguments in dockerfile():
        if instruction == "COPY":
            *sources, _ = arguments.split()
            copied.update(source.rstrip("/") for source in sources)
    # A whole checkout would bake whatever else lies in it (keys files, configs with tokens) into a layer.
    assert "." not in copied and "*" not in "".join(copied)
    assert all((root / source).exists() for source in copied), copied
    project = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    wheel = project["tool"]["hatch"]["build"]["targets"]["wheel"]
    needed = {"pyproject.toml", project["project"]["readme"], "LICENSE", *wheel["packages"], *wheel["force-include"]}
    needed.add(project["tool"]["hatch"]["version"]["path"].split("/")[0])
    needed.update(re.findall(r"-c (\S+)", " ".join(a for i, a in dockerfile() if i == "RUN")))
    assert needed <= copied, f"the build needs {sorted(needed - copied)}"
    assert copied <= needed, f"copied but not needed: {sorted(copied - needed)}"
