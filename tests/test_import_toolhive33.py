"""`vmcp import toolhive`: a ToolHive vMCP config comes across as one of ours that `vmcp validate` accepts, with
every item that did not convert listed by its ToolHive path, and a converted backend and workflow serve.

The fixtures in tests/data/toolhive33/ are ToolHive's own examples/vmcp-config.yaml (stacklok/toolhive e25de16,
Apache-2.0, notice kept at their top): as published, and with its commented-out compositeTools and audit sections
uncommented. Before the importer, `vmcp validate` refused every section of that file (camelCase keys, incomingAuth,
outgoingAuth, compositeTools with Go templates) and there was no way across but rewriting it by hand.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from tests.support import http_demo_backend, running_gateway

pytestmark = pytest.mark.anyio

DATA = Path(__file__).parent / "data" / "toolhive33"
# The variables an imported config names, set for `vmcp validate` and `vmcp serve` as a user would.
SECRETS = {"VMCP_CLIENT_SECRET": "client-secret-for-test", "NOTES_X_API_KEY": "key-for-test"}


def vmcp(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VMCP_")}
    return subprocess.run(
        [sys.executable, "-m", "vmcp_opt", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**clean, **(env or {})},
        check=False,
    )


def imported(source: Path, out: Path) -> subprocess.CompletedProcess[str]:
    done = vmcp("import", "toolhive", str(source), "-o", str(out))
    assert "Traceback" not in done.stderr, done.stderr
    return done


def test_toolhives_example_imports_to_a_config_vmcp_validate_accepts(tmp_path: Path) -> None:
    out = tmp_path / "vmcp.yaml"
    done = imported(DATA / "vmcp-config.yaml", out)
    # groupRef workloads cannot be discovered here: reported, with what named them, and exit 1.
    assert done.returncode == 1, done.stderr
    assert "groupRef: workloads of a ToolHive group" in done.stderr
    assert "aggregation.tools[0]: no backend named 'github'" in done.stderr
    assert "VMCP_CLIENT_SECRET" in done.stderr  # the variable to set, by name
    config = yaml.safe_load(out.read_text())
    oauth = config["auth"]["incoming"]["oauth"]
    assert (oauth["issuer"], oauth["resource"]) == (
        "https://keycloak.example.com/realms/myrealm",
        "http://localhost:4483/mcp",
    )
    assert oauth["audiences"] == ["vmcp"] and oauth["client_secret_env"] == "VMCP_CLIENT_SECRET"
    assert config["aggregation"] == {"conflict_resolution": "prefix", "prefix_format": "{backend}_{name}"}
    assert config["timeouts"] == {"call": 30.0}
    assert config["failure"] == {
        "mode": "fail",
        "circuit_breaker": {"enabled": True, "failure_threshold": 5, "cooldown": 60.0},
    }
    assert config["optimizer"] == {"enabled": False}  # ToolHive lists every tool unless an optimizer is set
    # Its inline Cedar policy, written beside the config, its MCP method name made our action name.
    assert config["auth"]["authorization"] == {"policies": "vmcp.cedar"}
    assert 'action == Action::"call_tool"' in (tmp_path / "vmcp.cedar").read_text()
    checked = vmcp("validate", "-c", str(out), env=SECRETS)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # Without -o the same config goes to stdout.
    printed = vmcp("import", "toolhive", str(DATA / "vmcp-config.yaml"))
    assert printed.returncode == 1 and yaml.safe_load(printed.stdout)["timeouts"] == {"call": 30.0}


def test_go_templates_beyond_field_references_are_reported_and_their_workflow_left_out(tmp_path: Path) -> None:
    out = tmp_path / "vmcp.yaml"
    done = imported(DATA / "vmcp-config-composite.yaml", out)
    assert done.returncode == 1, done.stderr
    for path in (
        "compositeTools[0].steps[2].arguments.environment: Go template beyond a field reference",
        "compositeTools[0].steps[2].condition: Go template beyond a field reference",
        "audit.includeRequestData: one include_data covers requests and responses together; left off",
    ):
        assert path in done.stderr, done.stderr
    text = out.read_text()
    config = yaml.safe_load(text)
    assert "workflows" not in config  # left out whole, as a commented-out block to finish by hand
    assert "# TODO(import)" in text and "#       pr: '{{ params.pr_number }}'" in text
    assert config["telemetry"]["audit"] == {
        "enabled": True,
        "include": ["mcp_initialize", "mcp_tool_call"],
        "max_data_bytes": 10000,
        "output": "/var/log/vmcp/audit.log",
    }
    checked = vmcp("validate", "-c", str(out), env=SECRETS)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def toolhive_config(backend_url: str) -> dict[str, Any]:
    """A small ToolHive static-mode config: one backend with a literal header, a filter, a rename, a workflow."""
    step_args = {"title": "{{.params.title}}", "text": "{{.params.text}}"}
    return {
        "name": "notes-vmcp",
        "backends": [{"name": "notes", "url": backend_url, "transport": "streamable-http"}],
        "outgoingAuth": {
            "source": "inline",
            "backends": {
                "notes": {
                    "type": "header_injection",
                    "headerInjection": {"headerName": "X-Api-Key", "headerValue": "literal-s3cret-in-toolhive"},
                }
            },
        },
        "aggregation": {
            "conflictResolution": "prefix",
            "conflictResolutionConfig": {"prefixFormat": "{workload}_"},
            "tools": [
                {
                    "workload": "notes",
                    "filter": ["save_note", "search_notes"],
                    "overrides": {"search_notes": {"name": "find_notes", "description": "Find notes by words."}},
                }
            ],
        },
        "operational": {"timeouts": {"default": "30s", "perWorkload": {"notes": "1m30s"}}},
        "compositeTools": [
            {
                "name": "save_and_find",
                "description": "Save a note, then find it again by its title.",
                "parameters": {
                    "type": "object",
                    "properties": {"title": {"type": "string"}, "text": {"type": "string"}},
                    "required": ["title", "text"],
                },
                "steps": [
                    {"id": "save", "tool": "notes.save_note", "arguments": step_args},
                    {
                        "id": "find",
                        "tool": "notes.search_notes",
                        "arguments": {"query": "{{.params.title}}"},
                        "dependsOn": ["save"],
                    },
                ],
                "output": {
                    "properties": {
                        "saved": {
                            "type": "string",
                            "description": "What the save said",
                            "value": "{{.steps.save.output.result}}",
                        },
                        "found": {"type": "array", "description": "Titles", "value": "{{.steps.find.output.result}}"},
                    }
                },
            }
        ],
    }


async def test_a_converted_backend_and_workflow_serve_through_a_real_gateway(tmp_path: Path) -> None:
    with http_demo_backend() as backend_url:
        source = tmp_path / "toolhive.json"  # JSON is read as well as YAML
        source.write_text(json.dumps(toolhive_config(backend_url)))
        out = tmp_path / "vmcp.yaml"
        done = imported(source, out)
        assert done.returncode == 0, done.stderr  # converted fully
        assert "NOTES_X_API_KEY" in done.stderr
        assert "literal-s3cret-in-toolhive" not in out.read_text() + done.stderr + done.stdout
        backend = yaml.safe_load(out.read_text())["backends"][0]
        assert backend["auth"] == {"type": "header", "headers": {"X-Api-Key": {"env": "NOTES_X_API_KEY"}}}
        assert backend["call_timeout"] == 90.0
        env = {**SECRETS, "VMCP_SERVER__STARTUP_WAIT": "60"}
        with running_gateway(out, env=env) as gateway:
            async with Client(streamable_http_client(gateway.url)) as client:
                names = {tool.name for tool in (await client.list_tools()).tools}
                result = await client.call_tool("save_and_find", {"title": "ada", "text": "first program"})
        # The filter kept two tools, one renamed; the workflow's steps found them under their served names.
        assert names == {"notes_save_note", "find_notes", "save_and_find"}
        assert not result.is_error, result
        assert result.structured_content == {"saved": "saved note 'ada' (13 characters)", "found": ["ada"]}


# A few hundred bytes whose aliases expand to 10^9 values: refused before the conversion walks them.
LAUGHS = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 9)
)


@pytest.mark.parametrize(
    ("content", "said"),
    [
        (None, "cannot read"),
        ("key: [unclosed", "is not YAML or JSON"),
        ("- a list\n", "holds no mapping"),
        ("backends: 5\n", "is not a ToolHive vMCP config this importer can read"),
        ("apiVersion: toolhive.stacklok.dev/v1beta1\nkind: VirtualMCPServer\n", "is a Kubernetes VirtualMCPServer"),
        ("a: " + "[" * 5000 + "]" * 5000 + "\n", "nests too deep"),
        (LAUGHS, "once its YAML aliases are expanded"),
        # Shallow enough for the YAML reader, too deep for writing the output back out: refused when read.
        ("a: " + "[" * 400 + "]" * 400 + "\n", "nests deeper than 64 levels"),
        (
            "compositeTools: [{name: w, steps: [{id: s, tool: a.t, arguments: "
            + "{a: " * 400
            + "1"
            + "}" * 400
            + "}]}]",
            "nests deeper than 64 levels",
        ),
    ],
)
def test_unreadable_input_is_a_clear_error_with_exit_2(tmp_path: Path, content: str | None, said: str) -> None:
    source = tmp_path / "toolhive.yaml"
    if content is not None:
        source.write_text(content)
    done = vmcp("import", "toolhive", str(source))
    assert done.returncode == 2, done.stderr
    assert said in done.stderr and "Traceback" not in done.stderr
    assert done.stdout == ""


def test_an_existing_output_is_not_overwritten_without_force(tmp_path: Path) -> None:
    out = tmp_path / "vmcp.yaml"
    out.write_text("mine: true\n")
    done = vmcp("import", "toolhive", str(DATA / "vmcp-config.yaml"), "-o", str(out))
    assert done.returncode == 2 and "exists; give --force" in done.stderr
    assert out.read_text() == "mine: true\n" and not (tmp_path / "vmcp.cedar").exists()
    forced = vmcp("import", "toolhive", str(DATA / "vmcp-config.yaml"), "-o", str(out), "--force")
    assert forced.returncode == 1 and "timeouts" in yaml.safe_load(out.read_text())


def deny_all_source(tmp_path: Path, backend_url: str, authz: dict[str, Any]) -> Path:
    source = tmp_path / "toolhive.json"
    document = {
        "backends": [{"name": "notes", "url": backend_url}],
        "incomingAuth": {"type": "anonymous", "authz": authz},
    }
    source.write_text(json.dumps(document))
    return source


@pytest.mark.parametrize("authz", [{"type": "cedar", "policies": []}, {"type": "cedar"}])
async def test_an_empty_cedar_policy_list_imports_as_deny_all_not_as_open(
    tmp_path: Path, authz: dict[str, Any]
) -> None:
    """Cedar permits nothing no policy permits: ToolHive serves no tool here, and neither may the import."""
    with http_demo_backend() as backend_url:
        out = tmp_path / "vmcp.yaml"
        done = imported(deny_all_source(tmp_path, backend_url, authz), out)
        assert done.returncode == 1, done.stderr
        assert "incomingAuth.authz.policies: none given, so ToolHive's Cedar permits nothing" in done.stderr
        assert yaml.safe_load(out.read_text())["auth"]["authorization"] == {"policies": "vmcp.cedar"}
        assert "forbid(principal, action, resource);" in (tmp_path / "vmcp.cedar").read_text()
        with running_gateway(out, env={"VMCP_SERVER__STARTUP_WAIT": "60"}) as gateway:
            async with Client(streamable_http_client(gateway.url)) as client:
                names = {tool.name for tool in (await client.list_tools()).tools}
                with pytest.raises(MCPError, match="Unknown tool"):
                    await client.call_tool("notes_save_note", {"title": "t", "text": "x"})
        assert not {name for name in names if name.startswith("notes_")}, names


def test_two_tool_entries_for_one_workload_keep_the_stricter_filter_and_are_reported(tmp_path: Path) -> None:
    """ToolHive refuses the file ("duplicate workload configuration"); the later entry must not widen the first."""
    source = tmp_path / "toolhive.yaml"
    source.write_text(
        "backends: [{name: notes, url: 'http://127.0.0.1:9/mcp'}]\n"
        "aggregation:\n"
        "  tools:\n"
        "    - {workload: notes, filter: [save_note, search_notes], overrides: {search_notes: {name: find}}}\n"
        "    - {workload: notes, filter: [search_notes, delete_note], excludeAll: true}\n"
    )
    out = tmp_path / "vmcp.yaml"
    done = imported(source, out)
    assert done.returncode == 1, done.stderr
    assert "aggregation.tools[1]: a second entry for workload 'notes', which ToolHive refuses" in done.stderr
    tools = yaml.safe_load(out.read_text())["aggregation"]["tools"]["notes"]
    assert tools == {
        "include": ["search_notes"],
        "workflow_only": ["*"],
        "overrides": {"search_notes": {"name": "find"}},
    }


def test_a_template_of_many_unclosed_braces_is_left_out_in_linear_time(tmp_path: Path) -> None:
    """A megabyte of `{{` with no `}}`: a lazy regex retried from each one (hours); one scan stops at the first."""
    source = tmp_path / "toolhive.json"
    step = {"id": "s", "tool": "notes.t", "arguments": {"x": "{{" * 500_000}}
    document = {
        "backends": [{"name": "notes", "url": "http://127.0.0.1:9/mcp"}],
        "compositeTools": [{"name": "w", "steps": [step]}],
    }
    source.write_text(json.dumps(document))
    done = imported(source, tmp_path / "vmcp.yaml")  # the subprocess's timeout is the bound, not a measurement
    assert done.returncode == 1, done.stderr[:2000]
    assert "compositeTools[0].steps[0].arguments.x: Go template beyond a field reference" in done.stderr
    assert len(done.stderr) < 10_000  # the megabyte template is named by its start and length, not printed whole
