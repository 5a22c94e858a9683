"""docs/configuration.md is generated from the config model: it must be what `vmcp config-docs` writes now."""

from __future__ import annotations

import subprocess
import sys

from tests.support import ROOT
from vmcp_opt.config_docs import render, sections

REFERENCE = ROOT / "docs" / "configuration.md"


def test_the_committed_reference_is_what_the_config_model_generates() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "vmcp_opt", "config-docs", "--check", "--output", str(REFERENCE)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, f"{result.stderr}(regenerate: vmcp config-docs --output docs/configuration.md)"


def test_every_setting_has_a_type_a_default_and_a_description() -> None:
    undocumented = [s.path for section in sections() for s in section.settings if not (s.type and s.description)]
    assert undocumented == [], "describe them with a comment above the field in vmcp_opt/config.py"


def test_a_setting_row_names_its_type_default_and_environment_variable() -> None:
    rows = render().splitlines()
    assert any(row.startswith("| `optimizer.enabled` | bool | `true` | VMCP_OPTIMIZER__ENABLED |") for row in rows)
    assert any(row.startswith("| `server.port` | int (>= 0, <= 65535) | `8000` | VMCP_SERVER__PORT |") for row in rows)
    assert any(row.startswith("| `backends[].name` |") and "| required |  |" in row for row in rows)
