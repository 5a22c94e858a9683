"""docs/architecture.md and examples/ stay true to the code: example configs load, named code exists, and the
request path the page draws is the order the HTTP app wraps its layers in."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support import EXAMPLES, ROOT, api_keys_file, write_config

ARCHITECTURE = ROOT / "docs" / "architecture.md"
PACKAGE = ROOT / "vmcp_opt"
# Names the page gives as history ("split along their seams", "then ... now ..."), or that live in the SDK.
HISTORICAL = {"server/round_trips.py", "server/gateway.py", "config.py", "mcp/server/_streamable_http_modern.py"}
CONFIG_SUFFIXES = (".yaml", ".yml")


def _example_configs() -> list[Path]:
    return sorted(p for p in EXAMPLES.rglob("*") if p.suffix in CONFIG_SUFFIXES)


@pytest.mark.parametrize("config", _example_configs(), ids=lambda p: str(p.relative_to(EXAMPLES)))
def test_every_example_config_passes_vmcp_validate(config: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "vmcp_opt", "validate", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("valid:"), result.stdout


def _source_text() -> str:
    return "\n".join(p.read_text() for p in PACKAGE.rglob("*.py"))


def test_every_module_the_architecture_page_names_exists() -> None:
    text = ARCHITECTURE.read_text()
    named = set(re.findall(r"\b[a-z_]+(?:/[a-z_0-9]+)*\.py\b", text)) - HISTORICAL
    modules = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*.py")]
    # A bare file name is written where its package is clear from the sentence: some module must have it.
    missing = sorted(
        n
        for n in named
        if not (ROOT / n).is_file() and not (PACKAGE / n).is_file() and not any(m.endswith("/" + n) for m in modules)
    )
    assert missing == []


def test_every_attribute_the_architecture_page_names_is_in_the_code() -> None:
    text, source = ARCHITECTURE.read_text(), _source_text()
    dotted = set(re.findall(r"`([A-Z][A-Za-z0-9]+\.[a-z_][a-z_0-9]*)(?:\(\))?`", text))
    ours = {d for d in dotted if re.search(rf"\bclass {d.split('.')[0]}\b", source)}  # the rest are the SDK's
    assert len(ours) > 20, ours
    assert sorted(d for d in ours if not re.search(rf"\b{d.split('.')[1]}\b", source)) == []


def _asgi_layers(config: Path) -> list[str]:
    """The modules of the HTTP app's layers, outermost first, as `create_app` wraps them."""
    from vmcp_opt.config import load_config
    from vmcp_opt.gateway import Gateway
    from vmcp_opt.server.http import create_app

    app = create_app(Gateway(load_config(config)))
    layers = [m.cls.__module__ for m in app.user_middleware]
    node: Any = next(r for r in app.routes if getattr(r, "path", None) == "/mcp").endpoint
    while node is not None and not type(node).__module__.startswith("vmcp_opt.server.handlers"):
        layers.append(type(node).__module__)
        node = getattr(node, "app", None)
    return [m.removeprefix("vmcp_opt.").replace(".", "/") + ".py" for m in layers if m.startswith("vmcp_opt.")]


def test_the_request_path_lists_the_http_layers_in_the_order_the_app_wraps_them(tmp_path: Path) -> None:
    api_keys_file(tmp_path / "keys.json", {"ada": []})
    config = write_config(
        tmp_path,
        {
            "backends": [],
            "auth": {"incoming": {"mode": "api_keys", "api_keys": {"file": "keys.json"}}},
            "rate_limits": {"per_caller": {"rate": 10, "burst": 10}},
        },
    )
    layers = _asgi_layers(config)
    # Authentication and the rate-limit gate are in the chain only when configured: the walk must see them.
    assert {"server/authentication.py", "server/rate_limit_gate.py"} <= set(layers), layers
    diagram = ARCHITECTURE.read_text().split("## The request path", 1)[1].split("```")[1]
    drawn = [line.split()[0] for line in diagram.splitlines() if line.startswith("server/")]
    assert [m for m in drawn if m in layers] == layers
