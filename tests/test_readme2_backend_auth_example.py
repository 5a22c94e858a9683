"""The README's "How each backend is reached: `backends[].auth`" examples, as a user copies them: the YAML block
and the `passthrough_headers` snippet beside it are accepted by `vmcp validate` where the README puts them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

README = Path(__file__).resolve().parent.parent / "README.md"


def backend_auth_section() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("### How each backend is reached: `backends[].auth`")
    return text[start : text.index("\n## ", start)]


def validate(tmp_path: Path, config: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "vmcp.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    # The example names its secrets by variable; set them as a user would before starting the gateway.
    env = {**os.environ, "CRM_KEY": "k-test", "VMCP_CLIENT_SECRET": "s-test"}
    return subprocess.run(
        [sys.executable, "-m", "vmcp_opt", "validate", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        stdin=subprocess.DEVNULL,
    )


def test_the_readme_backend_auth_examples_validate_where_the_readme_puts_them(tmp_path: Path) -> None:
    section = backend_auth_section()
    block = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert block is not None, "the section lost its YAML example"
    example = yaml.safe_load(block.group(1))
    snippet = re.search(r"`([^`]*passthrough_headers: \[X-Request-Id\][^`]*)`", section)
    assert snippet is not None, "the section lost its passthrough_headers example"
    # The snippet is a fragment of a backend entry: merged into the first (HTTP) backend as written.
    fragment = yaml.safe_load("{" + snippet.group(1) + "}")
    first = example["backends"][0]
    for key, value in fragment.items():
        first[key] = {**first.get(key, {}), **value} if isinstance(value, dict) else value

    done = validate(tmp_path, example)

    assert done.returncode == 0, done.stdout + done.stderr
    assert "valid: 3 backends (crm, reports, mail)" in done.stdout
