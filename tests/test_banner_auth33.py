"""The banner's "try it" line works as printed when callers must show a credential: the inspector's CLI sends no
header, so a gateway checking API keys suggests curl with the key from `$VMCP_CREDENTIAL`, and never prints it."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import httpx2

from tests.support import DEMO_SERVER, api_keys_file, running_gateway, wait_until, write_config


def _replayed(command: str, credential: str) -> httpx2.Response:
    """The printed curl command sent as curl would send it, with `$VMCP_CREDENTIAL` set to `credential`."""
    words = shlex.split(command)
    assert words[:2] == ["curl", "-s"], command
    url, headers, body = words[2], {}, ""
    rest = iter(words[3:])
    for flag in rest:
        value = next(rest)
        if flag == "-H":
            name, _, text = value.partition(": ")
            headers[name] = text.replace("$VMCP_CREDENTIAL", credential)
        else:
            assert flag == "-d", command
            body = value
    return httpx2.post(url, headers=headers, content=body, timeout=30)


def test_an_api_key_gateway_suggests_a_command_that_sends_the_key(tmp_path: Path) -> None:
    keys = api_keys_file(tmp_path / "keys.json", {"alice": ["dev"]})
    backend = {"name": "demo", "command": sys.executable, "args": [str(DEMO_SERVER)]}
    auth = {"incoming": {"mode": "api_keys", "api_keys": {"file": "keys.json"}}}
    with running_gateway(write_config(tmp_path, {"backends": [backend], "auth": auth})) as gateway:
        wait_until(lambda: "try it:" in gateway.output(), 60, gateway.output)
        line = next(line for line in gateway.output().splitlines() if "try it:" in line)
        command = line.split("try it:", 1)[1].strip()
        assert "--cli" not in command and '"Authorization: Bearer $VMCP_CREDENTIAL"' in command, command
        assert keys["alice"] not in gateway.output()
        answered = _replayed(command, keys["alice"])
        refused = _replayed(command, "vmcp_not-a-key")
    assert answered.status_code == 200, answered.text
    if answered.headers["content-type"].startswith("application/json"):
        initialized = answered.json()
    else:  # an SSE stream: its message event
        initialized = next(json.loads(line[5:]) for line in answered.text.splitlines() if line.startswith("data: {"))
    assert initialized["id"] == 1 and "serverInfo" in initialized["result"], initialized
    assert refused.status_code == 401, refused.text
