"""The README's promise for `vmcp validate`: every problem of a config in one pass, a key written twice in one
mapping among them (not reported alone, leaving the user to find the others one run later)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def vmcp(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vmcp_opt", *args], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL
    )


def test_a_key_written_twice_is_listed_with_every_other_problem_in_one_pass(tmp_path: Path) -> None:
    path = tmp_path / "vmcp.yaml"
    path.write_text(
        "server: {port: 8000, prot: 1}\n"
        "backends:\n"
        "  - {name: a, transport: streamable-http, url: 'ftp://x'}\n"
        "  - {name: a, transport: sse}\n"
        "optimizer: {enabled: true, enabled: false}\n",
        encoding="utf-8",
    )
    for command in ("validate", "serve"):
        done = vmcp(command, "-c", str(path), *(("--port", "0") if command == "serve" else ()))
        assert done.returncode == 2, done.stdout + done.stderr
        said = done.stderr
        assert "line 5: key 'enabled' is already set on line 5 of the same mapping" in said, said
        assert "server.prot: unknown key (did you mean 'port'?)" in said, said
        assert "backends[0].url: must start with http:// or https://, got 'ftp://x'" in said, said
        assert "backends[1].url: a sse backend needs `url`" in said, said
        assert "backends: names must be unique, repeated: a" in said, said


def test_a_json_key_written_twice_is_listed_with_an_unset_variable(tmp_path: Path) -> None:
    path = tmp_path / "vmcp.json"
    path.write_text(
        '{"optimizer": {"enabled": false, "enabled": true},'
        ' "backends": [{"name": "d", "transport": "streamable-http", "url": "http://127.0.0.1:9/mcp",'
        ' "headers": {"Authorization": "Bearer ${VMCP_README_TEST_UNSET_TOKEN}"}}]}',
        encoding="utf-8",
    )
    done = vmcp("validate", "-c", str(path))
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.splitlines()[1:] == [
        f"  {path}: key 'enabled' is set twice in one object; JSON keeps only the last, so merge the two",
        "  backends[0].headers.Authorization: references ${VMCP_README_TEST_UNSET_TOKEN}, which is not set in the "
        "environment",
    ]
