"""`vmcp index build | stats | search` over tool records from a JSON-lines file."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
from typer.testing import CliRunner

from vmcp_opt.optimizer import index_cli
from vmcp_opt.optimizer.index_cli import hooks, index_app
from vmcp_opt.optimizer.jsonl_records import read_jsonl, record_tool
from vmcp_opt.optimizer.listing import Listing, save_listing
from vmcp_opt.optimizer.tokens import tools_list_tokens

from .test_optimizer_index import CATALOGUE

runner = CliRunner()


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path]:
    config = tmp_path / "vmcp.yaml"
    config.write_text(f"optimizer:\n  index_dir: {tmp_path / 'indexes'}\n", encoding="utf-8")
    tools = tmp_path / "tools.jsonl"
    tools.write_text("\n".join(json.dumps(asdict(record)) for record in CATALOGUE) + "\n", encoding="utf-8")
    return config, tools


def test_jsonl_round_trips_tool_records(setup: tuple[Path, Path]) -> None:
    assert read_jsonl(setup[1]) == CATALOGUE


def test_build_then_stats_then_search(setup: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    config, tools = setup
    built = runner.invoke(index_app, ["build", "-c", str(config), "--from-jsonl", str(tools)])
    assert built.exit_code == 0, built.output
    assert f"embedded {len(CATALOGUE)}, reused 0" in built.output

    monkeypatch.setattr(hooks, "meta_tool_tokens", lambda settings: 100)
    stats = runner.invoke(index_app, ["stats", "-c", str(config), "--from-jsonl", str(tools)])
    assert stats.exit_code == 0, stats.output
    full = tools_list_tokens([record_tool(record) for record in CATALOGUE])
    assert f"{full:,} tokens" in stats.output
    assert "100 tokens" in stats.output
    assert f"{len(CATALOGUE)}/{len(CATALOGUE)} tools with vectors" in stats.output

    found = runner.invoke(
        index_app, ["search", "show the git commit logs", "-c", str(config), "--from-jsonl", str(tools), "--keyword"]
    )
    assert found.exit_code == 0, found.output
    first_row = next(line for line in found.output.splitlines() if re.search(r"│\s+1\s+│", line))
    assert "git_git_log" in first_row


def test_missing_tool_source_is_a_clear_error(setup: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "vmcp_opt.server.catalog_source", None)
    result = runner.invoke(index_app, ["stats", "-c", str(setup[0])])
    assert result.exit_code == 2


def test_stats_and_search_read_the_saved_catalogue_without_asking_the_backends(
    setup: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    config, _ = setup
    save_listing(config.parent / "indexes", Listing(list(CATALOGUE), 12345, "all-MiniLM-L6-v2"))
    asked: list[str] = []

    async def backends(settings: object) -> Listing:
        asked.append("backends")
        return Listing(list(CATALOGUE[:2]), 77, "all-MiniLM-L6-v2")

    monkeypatch.setattr(hooks, "collect_listing", backends)
    stats = runner.invoke(index_app, ["stats", "-c", str(config)])
    assert stats.exit_code == 0, stats.output
    assert "12,345 tokens" in stats.output  # the figure the gateway saved, not a recount of fewer fields
    assert "--refresh asks the backends" in stats.output
    found = runner.invoke(index_app, ["search", "show the git commit logs", "-c", str(config), "--keyword"])
    assert found.exit_code == 0, found.output
    assert asked == []

    refreshed = runner.invoke(index_app, ["stats", "-c", str(config), "--refresh"])
    assert refreshed.exit_code == 0, refreshed.output
    assert asked == ["backends"]
    assert "77 tokens" in refreshed.output
    assert re.search(r"^\s*tools\s+2\s*$", refreshed.output, re.MULTILINE)


def test_a_catalogue_smaller_than_the_meta_tools_says_more_not_negative_fewer(
    setup: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    config, _ = setup
    save_listing(config.parent / "indexes", Listing(list(CATALOGUE[:1]), 50, "all-MiniLM-L6-v2"))
    monkeypatch.setattr(hooks, "meta_tool_tokens", lambda settings: 100)
    stats = runner.invoke(index_app, ["stats", "-c", str(config)])
    assert stats.exit_code == 0, stats.output
    assert "(100.0% more" in stats.output
    assert "fewer" not in stats.output


def vmcp_index(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "vmcp_opt", "index", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_search_table_names_find_tools_score_score_and_the_ranking_value_fused(setup: tuple[Path, Path]) -> None:
    config, tools = setup
    found = vmcp_index("search", "show the git commit logs", "-c", str(config), "--from-jsonl", str(tools), "--keyword")
    assert found.returncode == 0, found.stderr
    header = next(line for line in found.stdout.splitlines() if "rank" in line)  # unwrapped: not a terminal
    assert [cell.strip() for cell in header.strip("┃ ").split("┃")] == [
        "rank",
        "name",
        "backend",
        "score",
        "fused",
        "description",
    ]
    first = next(line for line in found.stdout.splitlines() if re.search(r"│\s+1\s+│", line))
    score, fused = (float(cell) for cell in first.split("│")[4:6])
    assert score == pytest.approx(fused)  # keywords only: find_tool's score is the ranking's own

    usage = vmcp_index("search", "--help").stdout
    assert "How many tools to show." in " ".join(usage.replace("│", " ").split())  # however the help wraps


def test_a_jsonl_file_that_is_missing_or_a_directory_is_one_line_naming_it(
    setup: tuple[Path, Path], tmp_path: Path
) -> None:
    config, _ = setup
    for path, reason in (
        (tmp_path / "none.jsonl", "no such file"),
        (tmp_path, "is a directory, not a JSON-lines file"),
    ):
        result = vmcp_index("stats", "-c", str(config), "--from-jsonl", str(path))
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stdout + result.stderr
        assert f"--from-jsonl: {path}: {reason}" in result.stderr.splitlines()


@pytest.mark.parametrize("command", [("usage",), ("stats",), ("search", "notes", "--keyword")])
def test_an_index_dir_that_is_a_file_is_one_line_naming_it(
    setup: tuple[Path, Path], tmp_path: Path, command: tuple[str, ...]
) -> None:
    """`usage` used to say "no usage history yet" of a file given as the index directory."""
    config, _ = setup
    a_file = tmp_path / "not-a-dir"
    a_file.write_text("x")
    result = vmcp_index(*command, "-c", str(config), "--index-dir", str(a_file))
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.splitlines() == [f"--index-dir: {a_file} is a file, not a directory"]


def test_a_record_without_a_required_field_names_the_field_and_the_line(setup: tuple[Path, Path]) -> None:
    config, tools = setup
    tools.write_text('{"name": "a", "backend": "b"}\n\n{"name": "c", "description": "no backend"}\n', encoding="utf-8")
    result = vmcp_index("stats", "-c", str(config), "--from-jsonl", str(tools))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    expected = (
        f"--from-jsonl: {tools}:3: not a tool record: missing 'backend' (every record needs 'name' and 'backend')"
    )
    assert expected in result.stderr.splitlines()


@pytest.mark.parametrize("command", [["stats"], ["search", "git log", "--keyword"]])
def test_a_misspelt_model_is_a_config_error_not_a_traceback(
    setup: tuple[Path, Path], tmp_path: Path, command: list[str]
) -> None:
    _, tools = setup
    config = tmp_path / "bad-model.yaml"
    config.write_text(f"optimizer:\n  model: nosuchmodel\n  index_dir: {tmp_path / 'indexes'}\n", encoding="utf-8")
    result = vmcp_index(*command, "-c", str(config), "--from-jsonl", str(tools))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert f"invalid configuration ({config}):" in result.stderr
    assert "  optimizer.model: model 'nosuchmodel': not a registry id" in result.stderr


def test_a_model_error_past_the_config_check_ends_the_command_with_its_reason(
    setup: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, tools = setup
    config = tmp_path / "bad-model.yaml"
    config.write_text(f"optimizer:\n  model: nosuchmodel\n  index_dir: {tmp_path / 'indexes'}\n", encoding="utf-8")
    monkeypatch.setattr(index_cli, "model_problem", lambda spec: None)  # as if the model went after the check
    result = runner.invoke(index_app, ["stats", "-c", str(config), "--from-jsonl", str(tools)])
    assert result.exit_code == 2, result.output
    assert "optimizer.model: model 'nosuchmodel': not a registry id" in result.output


def test_build_exits_non_zero_when_the_index_cannot_be_saved(setup: tuple[Path, Path], tmp_path: Path) -> None:
    config, tools = setup
    (tmp_path / "afile").write_text("x")
    built = runner.invoke(
        index_app,  # a directory under a file: it cannot be made
        ["build", "-c", str(config), "--from-jsonl", str(tools), "--index-dir", str(tmp_path / "afile" / "idx")],
    )
    assert built.exit_code == 2
    assert "cannot write the index" in built.output and "embedded" not in built.output


@pytest.mark.parametrize(
    ("record", "problem"),
    [
        ({"name": "a", "backend": "b", "inputSchema": "x"}, "'inputSchema' must be an object, got a string"),
        ({"name": "a", "backend": "b", "description": 5}, "'description' must be a string, got a number"),
        ({"name": ["a"], "backend": "b"}, "'name' must be a string, got an array"),
    ],
)
def test_a_wrongly_typed_jsonl_field_is_one_line_naming_it(
    setup: tuple[Path, Path], tmp_path: Path, record: dict[str, object], problem: str
) -> None:
    config, _ = setup
    tools = tmp_path / "typed.jsonl"
    tools.write_text(json.dumps(record) + "\n", encoding="utf-8")
    stats = runner.invoke(index_app, ["stats", "-c", str(config), "--from-jsonl", str(tools)])
    assert stats.exit_code == 2
    assert f"--from-jsonl: {tools}:1: not a tool record: {problem}" in " ".join(stats.output.split())


def test_an_empty_jsonl_file_has_no_records_and_a_tokenless_one_has_stats(
    setup: tuple[Path, Path], tmp_path: Path
) -> None:
    config, _ = setup
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    stats = runner.invoke(index_app, ["stats", "-c", str(config), "--from-jsonl", str(empty)])
    assert stats.exit_code == 2 and "no tool records" in stats.output
    tokenless = tmp_path / "tiny.jsonl"  # `a` is a stopword and one character: no keyword token at all
    tokenless.write_text(json.dumps({"name": "a", "backend": "b"}) + "\n", encoding="utf-8")
    stats = runner.invoke(index_app, ["stats", "-c", str(config), "--from-jsonl", str(tokenless)])
    assert stats.exit_code == 0, stats.output


@pytest.mark.parametrize(
    "description",
    [
        "Send an alarm for files under C:[/dir] paths",
        "Send an alarm [bold red]NOW[/bold red] [link=https://evil.example]click[/link] \x1b[2J\x1b]0;pwned\x07 done",
    ],
)
def test_search_prints_a_backends_text_literally_with_control_characters_escaped(
    tmp_path: Path, description: str
) -> None:
    config = tmp_path / "vmcp.yaml"
    config.write_text(f"optimizer:\n  index_dir: {tmp_path / 'indexes'}\n", encoding="utf-8")
    tools = tmp_path / "tools.jsonl"
    record = {"name": "mk_[b]alarm[/b]", "backend": "mk", "description": description, "input_schema": {}}
    tools.write_text(json.dumps(record) + "\n", encoding="utf-8")
    command = [sys.executable, "-m", "vmcp_opt", "index", "search", "send an alarm", "-c", str(config)]
    found = subprocess.run(
        [*command, "--from-jsonl", str(tools), "--keyword"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "400"},
    )
    assert found.returncode == 0, found.stderr
    assert "mk_[b]alarm[/b]" in found.stdout
    assert description.replace("\x1b", "\\x1b").replace("\x07", "\\x07") in found.stdout
    assert "\x1b" not in found.stdout and "\x07" not in found.stdout


def test_validate_refuses_repeated_pattern_and_meta_tool_pinned_entries(tmp_path: Path) -> None:
    config = tmp_path / "vmcp.yaml"
    config.write_text(
        "backends: []\noptimizer:\n  pinned: [demo_whoami, demo_whoami, 'demo_*', find_tool]\n", encoding="utf-8"
    )
    done = subprocess.run(
        [sys.executable, "-m", "vmcp_opt", "validate", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "400"},
    )
    assert done.returncode != 0, done.stdout
    assert (
        "optimizer.pinned: each tool once, repeated: demo_whoami; routable tool names, not patterns: demo_*; "
        "find_tool: a meta-tool, always listed; leave it out"
    ) in done.stdout + done.stderr
