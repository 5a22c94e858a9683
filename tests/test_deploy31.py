"""deploy/nginx/vmcp.conf keeps API keys off plain HTTP: a real nginx runs the shipped config (its listen ports,
upstream servers and certificate paths this test's, the certificate a self-signed one made here with openssl) in
front of a real gateway. The SDK client calls a tool over TLS through it, and plain HTTP answers only with a
redirect to https: a request sent there, bearer token and all, never reaches a replica.

The rest of deploy/, checked where it can be without a cluster or a systemd: the image and the pod agree on a
uid and a gid, Redis is replaced rather than rolled, kustomization.yaml's commented model-cache volume builds and
mounts where a pod exports when the image's cache is read-only, and the unit's sandbox scores as systemd rates it.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import anyio
import httpx2
import mcp_types as types
import pytest
import yaml
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.nginx_server import nginx_binary
from tests.support import demo_backend, free_port, running_gateway, stop_process, unavailable, wait_http, write_config
from tests.test_replicas_nginx_config import MAIN, SHIPPED
from vmcp_opt.config import load_config

pytestmark = [pytest.mark.slow]

SERVER_NAME = "vmcp.example.com"


@dataclass(frozen=True)
class TlsNginx:
    https: str  # base URL over TLS
    http: str  # base URL of the plain-HTTP server
    certificate: Path


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (the address the client dials) and its key, as the operator's would be."""
    openssl = shutil.which("openssl")
    if openssl is None:
        unavailable("openssl is not installed")
    certificate, key = directory / "fullchain.pem", directory / "privkey.pem"
    command = [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    command += ["-keyout", str(key), "-out", str(certificate), "-days", "2", "-subj", f"/CN={SERVER_NAME}"]
    command += ["-addext", f"subjectAltName=DNS:{SERVER_NAME},IP:127.0.0.1"]
    subprocess.run(command, check=True, capture_output=True, timeout=60)
    return certificate, key


def shipped_tls_for(upstream: int, https: int, http: int, certificate: Path, key: Path) -> str:
    """The shipped config with this test's upstream, loopback listen ports and certificate; IPv6 listens dropped
    (a test host may have none). Each rewrite must find its line: a config without its TLS server fails here."""
    text = SHIPPED.read_text(encoding="utf-8")
    rewrites = [
        (
            r"(    server 127\.0\.0\.1:\d+ [^\n]*\n)+",
            f"    server 127.0.0.1:{upstream} max_fails=1 fail_timeout=10s;\n",
        ),
        (r"listen 443 ssl;", f"listen 127.0.0.1:{https} ssl;"),
        (r"listen 80;", f"listen 127.0.0.1:{http};"),
        (r"ssl_certificate /\S+;", f"ssl_certificate {certificate};"),
        (r"ssl_certificate_key /\S+;", f"ssl_certificate_key {key};"),
    ]
    for pattern, replacement in rewrites:
        text, replaced = re.subn(pattern, replacement, text)
        assert replaced == 1, f"deploy/nginx/vmcp.conf: {pattern!r} found {replaced} times"
    return re.sub(r"\n\s*listen \[::\]:\d+[^\n]*;", "", text)


@contextlib.contextmanager
def shipped_tls_nginx(directory: Path, upstream: int) -> Iterator[TlsNginx]:
    directory.mkdir(parents=True)
    certificate, key = self_signed(directory)
    https, http = free_port(), free_port()
    (directory / "vmcp.conf").write_text(shipped_tls_for(upstream, https, http, certificate, key), encoding="utf-8")
    main = MAIN.format(d=directory)
    if os.geteuid() == 0:  # workers would run as nobody, who cannot use this test's temporary directories
        main = "user root;\n" + main
    (directory / "nginx.conf").write_text(main, encoding="utf-8")
    command = [nginx_binary(), "-c", str(directory / "nginx.conf"), "-p", str(directory)]
    proc = subprocess.Popen([*command, "-e", str(directory / "error.log")], stderr=subprocess.DEVNULL)
    try:
        # Both servers listen once nginx has started; the plain one answers everything with its redirect.
        wait_http(f"http://127.0.0.1:{http}/healthz", expect=(301,), proc=proc)
        yield TlsNginx(f"https://127.0.0.1:{https}", f"http://127.0.0.1:{http}", certificate)
    finally:
        stop_process(proc)


def test_the_shipped_nginx_serves_mcp_over_tls(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"backends": [demo_backend("notes")]})

    async def save_note(nginx: TlsNginx) -> types.CallToolResult:
        trust = ssl.create_default_context(cafile=str(nginx.certificate))
        http = httpx2.AsyncClient(verify=trust, timeout=60)
        async with Client(streamable_http_client(f"{nginx.https}/mcp", http_client=http)) as client:
            return await client.call_tool("notes_save_note", {"title": "t", "text": "over tls"})

    with running_gateway(config) as gateway, shipped_tls_nginx(tmp_path / "nginx", gateway.port) as nginx:
        result = anyio.run(save_note, nginx)
        texts = [c.text for c in result.content if isinstance(c, types.TextContent)]
        assert not result.is_error and texts == ["saved note 't' (8 characters)"], texts
        # An unverified peer is refused by a client that checks certificates: the TLS is real, not a pass-through.
        with pytest.raises(httpx2.ConnectError):
            httpx2.get(f"{nginx.https}/healthz", timeout=10)


def test_plain_http_only_redirects_to_https_and_reaches_no_replica(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"backends": []})
    with running_gateway(config) as gateway, shipped_tls_nginx(tmp_path / "nginx", gateway.port) as nginx:
        initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}
        headers = {"Authorization": "Bearer not-a-real-key", "Accept": "application/json, text/event-stream"}
        for method, path in (("POST", "/mcp"), ("GET", "/healthz"), ("GET", "/mcp?x=1")):
            response = httpx2.request(method, f"{nginx.http}{path}", json=initialize, headers=headers, timeout=10)
            assert response.status_code == 301, (method, path, response.status_code, response.text[:200])
            # To the name nginx serves, not to whatever Host the client sent.
            assert response.headers["location"] == f"https://{SERVER_NAME}{path}"
        # Over TLS the gateway answers itself.
        trust = ssl.create_default_context(cafile=str(nginx.certificate))
        proxied = httpx2.get(f"{nginx.https}/healthz", verify=trust, timeout=10)
        assert proxied.status_code == 200 and proxied.json() == {"status": "ok"}
        assert proxied.headers["strict-transport-security"].startswith("max-age=")


# --- the other deploy files: what they promise, checked against each other, systemd and kustomize -------------

DEPLOY = SHIPPED.parent.parent
KUBE = DEPLOY / "kubernetes"
UNIT = DEPLOY / "systemd" / "vmcp.service"


def deployment(name: str) -> dict[str, Any]:
    for path in sorted(KUBE.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc["kind"] == "Deployment" and doc["metadata"]["name"] == name:
                return cast(dict[str, Any], doc)
    raise AssertionError(f"no Deployment {name}")


def test_the_image_and_the_pod_run_as_one_uid_and_gid() -> None:
    """Without a gid the image's user (no passwd entry) runs in group 0, root's."""
    [user] = re.findall(r"^USER (\S+)$", (DEPLOY / "Dockerfile").read_text(encoding="utf-8"), flags=re.M)
    pod = deployment("vmcp")["spec"]["template"]["spec"]["securityContext"]
    assert user == f"{pod['runAsUser']}:{pod['runAsGroup']}" and pod["runAsGroup"] == pod["fsGroup"] != 0


def test_redis_is_replaced_not_rolled() -> None:
    """A rolling update would run two Redis behind one Service: two stores, each with part of the sessions."""
    redis = deployment("vmcp-redis")["spec"]
    assert redis["replicas"] == 1 and redis["strategy"] == {"type": "Recreate"}


def commented_model_cache(directory: Path) -> Path:
    """deploy/kubernetes with kustomization.yaml's commented model-cache snippet applied as it says."""
    shutil.copytree(KUBE, directory)
    text = (directory / "kustomization.yaml").read_text(encoding="utf-8")
    claim = re.search(r"^#     apiVersion: v1\n(?:#     .*\n)+", text, flags=re.M)
    patches = re.search(r"^# patches:\n(?:#   .*\n)+", text, flags=re.M)
    assert claim and patches, "kustomization.yaml: the commented PersistentVolumeClaim or patches are missing"
    (directory / "model-cache.yaml").write_text(re.sub(r"^#     ", "", claim[0], flags=re.M), encoding="utf-8")
    text = text.replace("  - hpa.yaml\n", "  - hpa.yaml\n  - model-cache.yaml\n")
    (directory / "kustomization.yaml").write_text(text + re.sub(r"^# ?", "", patches[0], flags=re.M), "utf-8")
    return directory


def test_the_model_cache_volume_holds_where_a_pod_exports_when_the_image_cache_is_read_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        unavailable("kubectl is not installed")
    directory = commented_model_cache(tmp_path / "kubernetes")
    done = subprocess.run([kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    docs = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(done.stdout)}
    claim = docs[("PersistentVolumeClaim", "vmcp-model-cache")]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]  # every replica, on any node
    pod = docs[("Deployment", "vmcp")]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    [volume] = [v for v in pod["volumes"] if v.get("persistentVolumeClaim", {}).get("claimName") == "vmcp-model-cache"]
    [mount] = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    # The gateway's fallback for a cache it cannot write: data_dir's `models` (vmcp_opt/cli.py, optimizer/).
    for item in container["env"]:
        monkeypatch.setenv(item["name"], item["value"])
    (tmp_path / "vmcp.yaml").write_text("backends: []\n", encoding="utf-8")
    assert Path(mount["mountPath"]) == load_config(tmp_path / "vmcp.yaml").data_dir_path() / "models"


HARDENING = [
    "CapabilityBoundingSet=",
    "PrivateDevices=yes",
    "ProtectKernelTunables=yes",
    "ProtectKernelModules=yes",
    "ProtectKernelLogs=yes",
    "ProtectControlGroups=yes",
    "ProtectClock=yes",
    "RestrictNamespaces=yes",
    "RestrictRealtime=yes",
    "RestrictSUIDSGID=yes",
    "LockPersonality=yes",
    "SystemCallArchitectures=native",
    "UMask=0077",
    "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
]


def test_the_unit_is_sandboxed_but_lets_node_jit_and_setrlimit(tmp_path: Path) -> None:
    lines = {line.strip() for line in UNIT.read_text(encoding="utf-8").splitlines() if not line.startswith("#")}
    assert not [setting for setting in HARDENING if setting not in lines]
    # Node's JIT (npm backends) maps writable code; code mode bounds scripts with setrlimit.
    assert not [line for line in lines if line.startswith(("MemoryDenyWriteExecute", "SystemCallFilter"))]
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        unavailable("systemd-analyze is not installed")
    unit = tmp_path / "vmcp.service"
    unit.write_text(UNIT.read_text(encoding="utf-8").replace("/opt/vmcp-opt/.venv/bin/vmcp", "/bin/true"), "utf-8")
    done = subprocess.run(
        [analyze, "security", "--offline=true", str(unit)], capture_output=True, text=True, timeout=60
    )
    found = re.search(r"Overall exposure level for vmcp\.service: ([\d.]+)", done.stdout)
    assert found, done.stdout[-500:] + done.stderr
    assert float(found[1]) <= 4.0, done.stdout  # 8.5 ("EXPOSED") before the sandboxing
