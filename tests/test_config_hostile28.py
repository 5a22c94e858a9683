"""The `vmcp` command on hostile files: a self-referencing alias, nesting past any parser's stack, an alias bomb,
a non-UTF-8 docs file. Each ends in one line naming the file (and the line), never a traceback or a hang."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import DEMO_SERVER

VMCP = Path(sys.executable).parent / "vmcp"  # the console script a user runs

# Nine levels of ten aliases: 10^9 values in a few hundred bytes.
ALIAS_BOMB = "\n".join(
    ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    + [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
)


def vmcp(*args: str) -> subprocess.CompletedProcess[str]:
    # The timeout is the failure condition of a hang (the bomb kept `validate` busy past 30 s), not a measure.
    return subprocess.run(
        [str(VMCP), *args], capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, check=False
    )


def refusal(result: subprocess.CompletedProcess[str]) -> str:
    """The one problem line of a refused config (after the `invalid configuration (...)` header)."""
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 2 and lines[0].startswith("invalid configuration"), result.stderr
    return lines[1].strip()


HOSTILE = {
    "self-alias.yaml": ("a: &a [*a]\n", "line 1: alias *a is inside the value &a it names"),
    "self-merge.yaml": (
        "backends:\n  - &b\n    name: t\n    <<: *b\n",
        "line 4: alias *b is inside the value &b it names",
    ),
    "deep.yaml": ("a: " + "[" * 10_000 + "]" * 10_000 + "\n", "line 1: nested more than 100 levels deep"),
    # Within the parsers' stack, but deeper than any config: refused before any later walk of it can recurse
    # (the gateway itself refuses call arguments past 199 levels: vmcp_opt/argument_sendable.py).
    "past-the-bound.yaml": (
        "backends:\n  - name: t\n    command: python\n    env:\n      A: " + "[" * 400 + "]" * 400 + "\n",
        "line 5: nested more than 100 levels deep",
    ),
    "deep.json": ('{"a":\n ' + "[" * 100_000 + "]" * 100_000 + "}", "line 2: nested more than 100 levels deep"),
    "past-the-bound.json": (
        '{"backends": [{"name": "t", "command": "python",\n "env": {"A": ' + "[" * 600 + "]" * 600 + "}}]}",
        "line 2: nested more than 100 levels deep",
    ),
    "bomb.yaml": (ALIAS_BOMB + "\n", "line 5: the aliases up to here repeat more than 100000 values"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_a_hostile_config_is_refused_in_one_line_naming_the_file(tmp_path: Path, name: str) -> None:
    text, problem = HOSTILE[name]
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    line = refusal(vmcp("validate", "-c", str(path)))
    assert line.startswith(f"{path}: {problem}"), line
    assert line.endswith("; refused"), line


@pytest.mark.parametrize("name", ["self-alias.yaml", "bomb.yaml", "deep.json"])
def test_serve_refuses_a_hostile_config_as_validate_does(tmp_path: Path, name: str) -> None:
    text, problem = HOSTILE[name]
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    line = refusal(vmcp("serve", "-c", str(path), "--port", "0"))
    assert line.startswith(f"{path}: {problem}"), line


def test_a_discovered_client_file_nested_past_the_parser_is_refused_in_one_line(tmp_path: Path) -> None:
    client = tmp_path / "claude_desktop_config.json"
    client.write_text('{"mcpServers": ' + "[" * 100_000 + "]" * 100_000 + "}", encoding="utf-8")
    path = tmp_path / "vmcp.yaml"
    path.write_text(
        f"discovery: {{mode: discovered, path: {client}}}\noptimizer: {{enabled: false}}\n", encoding="utf-8"
    )
    line = refusal(vmcp("validate", "-c", str(path)))
    assert line == f"discovery.path: {client}: nested too deep to read; refused", line


def test_aliases_as_a_real_config_uses_them_still_load(tmp_path: Path) -> None:
    # One `env` block shared by a hundred backends, a few levels deep: far inside both bounds.
    env = "env: &env {A: '1', B: '2'}"
    backends = "\n".join(
        f"  - {{name: b{i}, command: python, args: [demo_server.py], cwd: {DEMO_SERVER.parent}, env: *env}}"
        for i in range(1, 100)
    )
    path = tmp_path / "vmcp.yaml"
    path.write_text(
        f"backends:\n  - {{name: b0, command: python, args: [demo_server.py], cwd: {DEMO_SERVER.parent}, {env}}}\n"
        f"{backends}\noptimizer: {{enabled: false}}\n",
        encoding="utf-8",
    )
    checked = vmcp("validate", "-c", str(path))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.startswith("valid: 100 backends"), checked.stdout


def test_config_docs_check_calls_a_non_utf8_file_stale(tmp_path: Path) -> None:
    stale = tmp_path / "configuration.md"
    stale.write_bytes(b"\xff\xfe old docs")
    checked = vmcp("config-docs", "--check", "-o", str(stale))
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert "Traceback" not in checked.stderr, checked.stderr
    assert checked.stderr.splitlines() == [f"{stale} is stale: run `vmcp config-docs --output {stale}`"]


@pytest.mark.parametrize(
    ("content", "reason"),
    [("[" * 100_000 + "]" * 100_000, "nested too deep"), ("\xff\xfe not text", "can't decode")],
    ids=["deep", "not-utf8"],
)
def test_a_local_models_unreadable_config_json_is_one_line(tmp_path: Path, content: str, reason: str) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_bytes(content.encode("latin-1"))
    config = tmp_path / "config.yaml"
    config.write_text(f"backends: []\noptimizer:\n  enabled: true\n  model: {model}\n", encoding="utf-8")
    line = refusal(vmcp("validate", "--config", str(config)))
    assert line.startswith(f"optimizer.model: {model / 'config.json'}: unreadable") and reason in line, line
