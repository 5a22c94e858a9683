"""`vmcp validate`'s lines for a misspelt key (the key meant, from the model at that place) and a bad backend
name (the rule in words, not the regex)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BAD_NAME = (
    "is not a backend name: one is 1 to 48 ASCII letters, digits, '_' or '-', starting with a letter or digit "
    "(by default it prefixes its tools' and prompts' names)"
)


def validate(path: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {name: value for name, value in os.environ.items() if not name.upper().startswith("VMCP_")}
    return subprocess.run(
        [sys.executable, "-m", "vmcp_opt", "validate", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**clean, **(env or {})},
        stdin=subprocess.DEVNULL,
    )


def problems(result: subprocess.CompletedProcess[str]) -> list[str]:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    return result.stderr.splitlines()[1:]


def test_a_misspelt_key_names_the_key_meant_at_its_place_and_an_unlike_one_keeps_the_plain_line(
    tmp_path: Path,
) -> None:
    path = tmp_path / "vmcp.yaml"
    path.write_text(
        "optimiser: {enabled: false}\n"
        "limits: {max_session: 3}\n"
        "backends:\n"
        "  - {name: files, comand: python}\n"
        "  - {name: web, transport: streamable-http, url: 'http://127.0.0.1:9/mcp', auth: {tpye: bearer}}\n"
        "aggregation: {tools: {files: {includ: ['*']}}}\n"
        "workflows:\n"
        "  - {name: w, description: d, steps: [{id: a, tool: t, on_error: {actoin: abort}}]}\n"
        "frobnicate: 1\n",
        encoding="utf-8",
    )
    assert sorted(problems(validate(path))) == [
        "  aggregation.tools.files.includ: unknown key (did you mean 'include'?)",
        "  backends[0].comand: unknown key (did you mean 'command'?)",
        "  backends[1].auth.tpye: unknown key (did you mean 'type'?)",
        "  frobnicate: unknown key (check the spelling; unknown keys are not allowed)",
        "  limits.max_session: unknown key (did you mean 'max_sessions'?)",
        "  optimiser: unknown key (did you mean 'optimizer'?)",
        "  workflows[0].steps[0].on_error.actoin: unknown key (did you mean 'action'?)",
    ]


def test_a_misspelt_key_from_a_variable_names_the_variable_meant(tmp_path: Path) -> None:
    path = tmp_path / "vmcp.yaml"
    path.write_text("backends: []\n", encoding="utf-8")
    env = {"VMCP_LIMITS__MAX_SESSION": "3", "VMCP_SERVER": '{"prot": 8001}'}
    assert sorted(problems(validate(path, env))) == [
        "  limits.max_session (from VMCP_LIMITS__MAX_SESSION): unknown key (did you mean VMCP_LIMITS__MAX_SESSIONS?)",
        "  server.prot (from VMCP_SERVER): unknown key (did you mean 'port'?)",
    ]


def test_a_bad_backend_name_is_refused_in_words(tmp_path: Path) -> None:
    path = tmp_path / "vmcp.yaml"
    path.write_text(
        "backends:\n"
        "  - {name: 'my files', command: python}\n"
        "  - {name: _files, command: python}\n"
        f"  - {{name: {'f' * 49}, command: python}}\n"
        f"  - {{name: {'f' * 48}, command: python}}\n"
        "  - {name: files-2_b, command: python}\n",
        encoding="utf-8",
    )
    assert problems(validate(path)) == [
        f"  backends[0].name: 'my files' {BAD_NAME}",
        f"  backends[1].name: '_files' {BAD_NAME}",
        f"  backends[2].name: '{'f' * 49}' {BAD_NAME}",
    ]
