"""What authorization costs the gateway, whatever a caller sends, and what stops the start instead of every request.

A real `vmcp serve` with API keys and a Cedar policy, the demo backend (whose `notes://note/{title}` template
matches any title), and raw HTTP requests as a client would send them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx2
import psutil
import pytest

from tests.support import Gateway, api_keys_file, demo_backend, free_port, running_gateway, write_config

# A guest may call read-only tools and nothing else: every resource read below is denied.
POLICY = """\
permit(principal, action in [Action::"list_tools", Action::"call_tool"], resource) when { resource.read_only };
"""
URI_CHARACTERS = 60_000  # under the SDK's 64 KiB bound on a URI matched against a template
READS = 300


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, str]]:
    directory = tmp_path_factory.mktemp("authz-bounds")
    keys = api_keys_file(directory / "keys.json", {"guest": ["guest"]})
    (directory / "policy.cedar").write_text(POLICY)
    config = {
        "backends": [demo_backend("notes")],
        "auth": {
            "incoming": {"mode": "api_keys", "api_keys": {"file": "keys.json"}},
            "authorization": {"policies": "policy.cedar"},
        },
    }
    with running_gateway(write_config(directory, config), "--log-level", "warning") as gateway:
        yield gateway, keys["guest"]


def session_headers(http: httpx2.Client, gateway: Gateway, key: str) -> dict[str, str]:
    headers = {
        "Authorization": f"Bearer {key}",
        "Accept": "application/json, text/event-stream",
        "Content-Type": "application/json",
    }
    initialize = {
        "jsonrpc": "2.0",
        "id": 0,
        "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }
    opened = http.post(gateway.url, json=initialize, headers=headers)
    assert opened.status_code == 200, opened.text
    headers |= {"Mcp-Session-Id": opened.headers["mcp-session-id"], "MCP-Protocol-Version": "2025-11-25"}
    http.post(gateway.url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers)
    return headers


def read(http: httpx2.Client, gateway: Gateway, headers: dict[str, str], request_id: int, uri: str) -> dict:
    message = {"jsonrpc": "2.0", "id": request_id, "method": "resources/read", "params": {"uri": uri}}
    response = http.post(gateway.url, json=message, headers=headers)
    assert response.status_code == 200, response.text
    answer: dict = json.loads(response.text.split("data: ", 1)[1]) if "data: " in response.text else response.json()
    return answer


def test_denied_reads_of_distinct_long_uris_do_not_grow_the_gateways_memory(guarded: tuple[Gateway, str]) -> None:
    gateway, key = guarded
    process = psutil.Process(gateway.proc.pid)
    with httpx2.Client(timeout=30) as http:
        headers = session_headers(http, gateway, key)
        # Warm up (first decision, allocator arenas) before measuring.
        for i in range(20):
            read(http, gateway, headers, i + 1, f"notes://note/warm-{i}-" + "a" * URI_CHARACTERS)
        before = process.memory_info().rss
        for i in range(READS):
            answer = read(http, gateway, headers, 100 + i, f"notes://note/{i}-" + "a" * URI_CHARACTERS)
            assert answer["error"]["code"] == -32002, answer  # denied: answered as a URI nothing serves
        grown = process.memory_info().rss - before
    # Each distinct URI used to be kept whole in the policy's decision cache (100,000 of them: gigabytes);
    # READS of them were ~18 MB. Kept as digests, they are a few hundred kilobytes.
    assert grown < 8 * 1024 * 1024, f"the gateway grew {grown / 2**20:.1f} MiB over {READS} denied reads"


def vmcp(config: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vmcp_opt", *args, "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_introspection_without_its_client_secret_stops_the_start_and_validate_names_it(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        {
            "backends": [demo_backend("notes")],
            "auth": {
                "incoming": {
                    "mode": "oauth",
                    "oauth": {
                        "issuer": "http://127.0.0.1:9/",
                        "introspection_url": "http://127.0.0.1:9/introspect",
                        "client_id": "gateway",
                        "client_secret_env": "VMCP_TEST_UNSET_INTROSPECTION_SECRET",
                    },
                }
            },
        },
    )
    env = {k: v for k, v in os.environ.items() if k != "VMCP_TEST_UNSET_INTROSPECTION_SECRET"}
    expected = "auth.incoming.oauth.client_secret_env: $VMCP_TEST_UNSET_INTROSPECTION_SECRET is not set"
    validated = vmcp(config, "validate", env=env)
    assert validated.returncode == 2, validated.stdout + validated.stderr
    assert expected in validated.stdout + validated.stderr
    # Before, the gateway served and answered every opaque token 503 until someone restarted it.
    served = vmcp(config, "serve", "--port", str(free_port()), env=env)
    assert served.returncode != 0
    assert expected in served.stdout + served.stderr
    # Set, the same config is valid.
    validated = vmcp(config, "validate", env={**env, "VMCP_TEST_UNSET_INTROSPECTION_SECRET": "s3cret-value"})
    assert validated.returncode == 0, validated.stdout + validated.stderr


# Alice may read resources, except what the template `notes://note/{title}` serves.
TEMPLATE_POLICY = """\
permit(principal, action, resource);
forbid(principal, action in [Action::"read_resource", Action::"list_resources"], resource)
  when { resource has template && resource.template && resource.uri == "notes://note/{title}" };
"""


def test_a_policy_forbidding_a_template_forbids_the_uris_it_serves(tmp_path: Path) -> None:
    """Before, the template was hidden from the list but `resources/read` of a URI it matches was decided on that
    URI alone, which no policy names: the read went through."""
    keys = api_keys_file(tmp_path / "keys.json", {"alice": ["staff"]})
    (tmp_path / "policy.cedar").write_text(TEMPLATE_POLICY)
    config = {
        "backends": [demo_backend("notes")],
        "auth": {
            "incoming": {"mode": "api_keys", "api_keys": {"file": "keys.json"}},
            "authorization": {"policies": "policy.cedar"},
        },
    }
    with (
        running_gateway(write_config(tmp_path, config), "--log-level", "warning") as gateway,
        httpx2.Client(timeout=30) as http,
    ):
        headers = session_headers(http, gateway, keys["alice"])
        listed = http.post(
            gateway.url, json={"jsonrpc": "2.0", "id": 1, "method": "resources/templates/list"}, headers=headers
        )
        assert "notes://note/{title}" not in listed.text
        denied = read(http, gateway, headers, 2, "notes://note/groceries")
        unknown = read(http, gateway, headers, 4, "nowhere://note/groceries")  # a URI nothing serves
        assert "error" in denied, denied  # not read, and answered as if nothing served it
        assert json.dumps(denied).replace("notes://", "nowhere://").replace('"id": 2', '"id": 4') == json.dumps(unknown)
        allowed = read(http, gateway, headers, 3, "notes://all")  # a listed resource, no template: still read
        assert "result" in allowed, allowed
