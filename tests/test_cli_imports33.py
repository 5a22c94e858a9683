"""Each `vmcp` command imports what it needs when it runs: `vmcp --version` and `vmcp --help` load neither the
config models nor the MCP SDK (they took 0.8 s, now about 0.1 s), and `vmcp --help` still lists every command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# What a command that needs none of them should not pay for: the MCP SDK (~0.4 s), the embedding stack, the config
# models (pydantic, jsonschema).
HEAVY = ("mcp", "numpy", "torch", "onnxruntime", "vmcp_opt.config", "jsonschema")

# The real entry point (the `vmcp` script is these two lines), then the heavy modules this process holds.
RUN_AND_REPORT = """
import json, sys
heavy = json.loads(sys.argv[1])
sys.argv = ["vmcp", *sys.argv[2:]]
from vmcp_opt.cli import app
try:
    app()
except SystemExit as done:
    code = done.code or 0
else:
    code = 0
loaded = sorted({name for name in sys.modules if name in heavy or name.split(".")[0] in heavy})
print(json.dumps({"code": code, "loaded": loaded}), file=sys.stderr)
"""


def run_vmcp(*args: str) -> tuple[int, str, list[str]]:
    """Exit code, stdout and the heavy modules loaded of one `vmcp <args>` process."""
    done = subprocess.run(
        [sys.executable, "-c", RUN_AND_REPORT, json.dumps(HEAVY), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "COLUMNS": "200"},
    )
    report = json.loads(done.stderr.strip().splitlines()[-1])
    return report["code"], done.stdout, report["loaded"]


@pytest.mark.parametrize(
    "args",
    [("--version",), ("--help",), (), ("auth", "--help"), ("workflow", "--help"), ("models", "--help")],
    ids=lambda args: " ".join(args) or "vmcp",
)
def test_version_and_help_load_neither_the_config_nor_the_mcp_sdk(args: tuple[str, ...]) -> None:
    code, stdout, loaded = run_vmcp(*args)
    assert code in (0, 2) and stdout, (code, stdout)  # `vmcp` alone: its help, exit 2 (no_args_is_help)
    assert loaded == [], loaded


def test_auth_new_key_does_not_load_the_mcp_sdk() -> None:
    code, stdout, loaded = run_vmcp("auth", "new-key", "--subject", "alice")
    assert code == 0 and "key (shown once, give it to alice)" in stdout, stdout
    assert not [name for name in loaded if name.split(".")[0] == "mcp"], loaded


def test_help_lists_every_command_with_its_line_without_loading_them() -> None:
    code, stdout, _ = run_vmcp("--help")
    assert code == 0
    rows = {
        line.strip("│ ").split(maxsplit=1)[0]: line.strip("│ ").split(maxsplit=1)[1].strip()
        for line in stdout.split("Commands")[1].splitlines()[1:]
        if line.startswith("│")
    }
    assert rows == {
        "serve": "Start the gateway.",
        "validate": "Check a config file; print every bad field by its path and exit non-zero.",
        "backends": "Connect to each backend and print its state and tool/resource/prompt counts.",
        "config-docs": "The configuration reference: every setting, its type, default, environment variable and "
        "description.",
        "models": "Embedding models: the ONNX export the optimizer's encoder runs.",
        "workflow": "List the configured workflows, or run one and see each step.",
        "auth": "API keys, and who a credential is and what it may do.",
        "index": "Build, inspect and query the optimizer's tool index.",
        "eval": "Retrieval benchmarks: the optimizer against its rivals.",
        "import": "Convert another gateway's config (ToolHive vMCP) to ours.",
    }


def test_the_help_s_default_config_name_is_the_bundled_demo_s() -> None:
    from vmcp_opt.cli import DEFAULT_CONFIG_NAME
    from vmcp_opt.config import DEFAULT_CONFIG_PATH

    assert DEFAULT_CONFIG_PATH.name == DEFAULT_CONFIG_NAME


def test_a_lazily_loaded_sub_app_s_own_help_is_the_line_the_listing_shows() -> None:
    """The listing's line comes from `LAZY_HELP`; the sub-app's own help page says the same."""
    for name, line in (("auth", "API keys, and who"), ("workflow", "List the configured workflows")):
        code, stdout, _ = run_vmcp(name, "--help")
        assert code == 0 and line in stdout, stdout


# Ctrl-C's signal raised in the process itself as `vmcp <command>` imports what it needs (the config models):
# deterministically inside the second a user's Ctrl-C lands in right after typing the command.
INTERRUPTED_COMMAND_IMPORT = """
import os, signal, sys

signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal (see test_first_hour_config)

class InterruptOnImport:
    def find_spec(self, name, path=None, target=None):
        if name == "vmcp_opt.config":
            os.kill(os.getpid(), signal.SIGINT)
        return None

sys.meta_path.insert(0, InterruptOnImport())
sys.argv = ["vmcp", *sys.argv[1:]]
from vmcp_opt.cli import app
app()
"""


@pytest.mark.parametrize("args", [("serve", "--stdio"), ("validate",), ("index", "list")], ids=" ".join)
def test_ctrl_c_while_a_command_loads_what_it_needs_exits_130_quietly(args: tuple[str, ...]) -> None:
    """The imports moved into the commands run under typer's own Ctrl-C handling: 130 as when they were this
    module's, not click's "Aborted!" (exit 1) nor a traceback."""
    done = subprocess.run(
        [sys.executable, "-c", INTERRUPTED_COMMAND_IMPORT, *args], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert "Traceback" not in done.stderr and "Aborted" not in done.stderr, done.stderr
    assert done.returncode == 130 and done.stdout == "", (done.returncode, done.stdout)
