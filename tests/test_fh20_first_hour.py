"""A new user's first steps with the `vmcp` command: the mistakes of a first config, and the banner's Claude
Desktop snippet followed as printed. Real `vmcp` processes, a real HTTP backend, the SDK client over stdio."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from mcp import Client, StdioServerParameters

from tests.support import DEMO_SERVER, http_demo_backend, running_gateway, write_config

pytestmark = [pytest.mark.slow, pytest.mark.anyio]


def vmcp(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vmcp_opt", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_a_desktop_clients_own_file_given_to_c_says_how_to_serve_it(tmp_path: Path) -> None:
    """`-c claude_desktop_config.json` is a likely first try; `mcpServers: unknown key (check the spelling)`
    alone sent the user looking for a typo. The advice printed is a config that works."""
    client_file = tmp_path / "claude_desktop_config.json"
    servers = {"notes": {"command": sys.executable, "args": [str(DEMO_SERVER)]}}
    client_file.write_text(json.dumps({"mcpServers": servers}), encoding="utf-8")

    refused = vmcp("validate", "-c", str(client_file))
    assert refused.returncode == 2, refused.stdout + refused.stderr
    advice = re.search(r"`(discovery: \{mode: discovered, path: [^`]+)`", refused.stderr)
    assert advice is not None, refused.stderr
    assert "Traceback" not in refused.stderr

    (tmp_path / "vmcp.yaml").write_text(advice.group(1) + "\n", encoding="utf-8")
    followed = vmcp("validate", "-c", str(tmp_path / "vmcp.yaml"))
    assert followed.returncode == 0, followed.stdout + followed.stderr
    assert "valid: 1 backend (notes)" in followed.stdout


def test_a_vmcp_config_with_a_typo_gets_no_client_file_advice(tmp_path: Path) -> None:
    config = tmp_path / "vmcp.yaml"
    config.write_text("servers: {port: 8000}\nbackends: []\n", encoding="utf-8")
    refused = vmcp("validate", "-c", str(config))
    assert refused.returncode == 2
    assert "did you mean 'server'?" in refused.stderr and "discovery" not in refused.stderr


def test_validate_warns_of_a_config_that_serves_nothing(tmp_path: Path) -> None:
    """An empty file, or a discovery.path that inline mode never reads, was `valid` without a word."""
    empty = tmp_path / "empty.yaml"
    empty.write_text("", encoding="utf-8")
    ignored = tmp_path / "ignored.yaml"
    ignored.write_text("discovery: {path: claude_desktop_config.json}\n", encoding="utf-8")

    for config in (empty, ignored):
        result = vmcp("validate", "-c", str(config))
        assert result.returncode == 0, result.stderr
        assert "warning: backends: none, so the gateway would serve no tools" in result.stderr
        assert "valid: 0 backends\n" in result.stdout  # no empty "()"
    assert "discovery.path: claude_desktop_config.json is not read, since discovery.mode is inline" in (
        vmcp("validate", "-c", str(ignored)).stderr
    )


def test_validate_warns_of_a_secret_variable_set_but_empty(tmp_path: Path) -> None:
    """Unset is an error; set but empty (`export DOCS_TOKEN=`) sent `Authorization: Bearer ` without a word."""
    backend = {"name": "docs", "transport": "streamable-http", "url": "http://127.0.0.1:9/mcp"}
    backend["headers"] = {"Authorization": "Bearer ${FH20_DOCS_TOKEN}"}
    config = write_config(tmp_path, {"backends": [backend]})

    empty = vmcp("validate", "-c", str(config), env={"FH20_DOCS_TOKEN": ""})
    assert empty.returncode == 0, empty.stderr
    assert "backends[0].headers.Authorization: ${FH20_DOCS_TOKEN} is set but empty" in empty.stderr
    assert "is set but empty" not in vmcp("validate", "-c", str(config), env={"FH20_DOCS_TOKEN": "t"}).stderr


async def test_the_banners_snippet_names_the_environment_it_needs_and_works_with_it(tmp_path: Path) -> None:
    """A desktop client passes none of its user's variables: the snippet pasted as printed started a gateway
    that refused its config (`${FH20_NOTES_TOKEN}` not set), which the client shows as a closed connection."""
    secret = "fh20-not-in-the-banner"
    with http_demo_backend() as url:
        backend = {"name": "notes", "transport": "streamable-http", "url": url}
        backend["headers"] = {"Authorization": "Bearer ${FH20_NOTES_TOKEN}"}
        config = write_config(tmp_path, {"backends": [backend]})
        with running_gateway(config, env={"FH20_NOTES_TOKEN": secret}) as gateway:
            banner = gateway.output()
        snippet = json.loads(next(line for line in banner.splitlines() if '"mcpServers"' in line))
        [line] = [line for line in banner.splitlines() if "from the environment" in line]
        named = json.loads(re.search(r'"env": (\{.*\}) beside "args"', line).group(1))  # type: ignore[union-attr]
        assert "FH20_NOTES_TOKEN" in named  # and the test run's own VMCP_ settings, rightly
        assert secret not in banner

        # Followed: the snippet's command and args, with "env" holding the variables it named.
        launch = snippet["mcpServers"]["vmcp"]
        env = {name: {"FH20_NOTES_TOKEN": secret}.get(name, os.environ.get(name, "")) for name in named}
        params = StdioServerParameters(command=launch["command"], args=launch["args"], env=env)
        async with Client(params) as client:
            assert "notes_save_note" in {tool.name for tool in (await client.list_tools()).tools}


def test_the_banner_of_a_config_that_reads_no_variables_has_no_env_line(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"backends": []})
    settings = [name for name in os.environ if name.upper().startswith("VMCP_") and "__" in name]
    with running_gateway(config, env=dict.fromkeys(settings, "")) as gateway:
        banner = gateway.output()
    assert '"mcpServers"' in banner
    assert "from the environment" not in banner or settings  # the shell's VMCP_ settings are named, rightly
