"""`vmcp validate`'s "did you mean" for the slips difflib's likeness ratio alone missed: a swapped or wrong
letter in a short key (`evn`, `ulr`), a value one letter off (`on_error: retyr`), a letter that made the ratio
prefer another key (`ixclude`: not `include`); and still none for a word that is not a slip of any key."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.test_config_hints import validate as run_validate
from vmcp_opt.config.suggestions import closest, edit_distance


def validate(path: Path, env: dict[str, str] | None = None) -> list[str]:
    """The problems `vmcp validate` lists for `path` (exit 2, no traceback), sorted."""
    done = run_validate(path, env)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    return sorted(done.stderr.splitlines()[1:])


def test_slips_far_for_difflib_name_the_key_or_value_meant_and_unrelated_words_get_none(tmp_path: Path) -> None:
    path = tmp_path / "vmcp.yaml"
    path.write_text(
        "tiemouts: {call: 5}\n"
        "server: {transport: stdoi}\n"
        "backends:\n"
        "  - {name: files, comand: python, evn: {A: b}}\n"
        "  - {name: web, transport: streamable-http, ulr: 'http://127.0.0.1:9/mcp'}\n"
        "aggregation: {tools: {files: {ixclude: ['x']}}}\n"
        "workflows:\n"
        "  - {name: w, description: d, steps: [{id: a, tool: t, on_error: retyr}]}\n"
        "  - {name: v, description: d, steps: [{id: a, tool: t, on_error: {action: retry, retyr: 2}}]}\n"
        "banana: 1\n",
        encoding="utf-8",
    )
    plain = "unknown key (check the spelling; unknown keys are not allowed)"
    assert validate(path, {"VMCP_SEVRER__PORT": "8001"}) == sorted(
        [
            "  tiemouts: unknown key (did you mean 'timeouts'?)",
            "  server.transport: Input should be 'streamable-http' or 'stdio' (did you mean 'stdio'?)",
            "  backends[0].comand: unknown key (did you mean 'command'?)",
            "  backends[0].evn: unknown key (did you mean 'env'?)",
            "  backends[1].ulr: unknown key (did you mean 'url'?)",
            "  backends[1].url: a streamable-http backend needs `url`",  # every problem of a backend in one pass
            "  aggregation.tools.files.ixclude: unknown key (did you mean 'exclude'?)",
            "  workflows[0].steps[0].on_error.action: Input should be 'abort', 'continue' or 'retry' "
            "(did you mean 'retry'?)",
            # No key `retry` in on_error (the action is a value); `retries` is too far from `retyr` to guess.
            f"  workflows[1].steps[0].on_error.retyr: {plain}",
            f"  banana: {plain}",
            "  VMCP_SEVRER__PORT: unknown config section 'sevrer' (did you mean VMCP_SERVER__PORT?)",
        ]
    )


@pytest.mark.parametrize(
    ("written", "known", "meant"),
    [
        ("retyr", ["retry", "delay"], ["retry"]),  # a swap in a five-letter name: one edit
        ("comand", ["command", "cwd"], ["command"]),
        ("tiemouts", ["timeouts", "health"], ["timeouts"]),
        ("timoeutz", ["timeouts", "health"], ["timeouts"]),  # two edits in a long name
        ("mornin", ["morning", "notes_save_note"], ["morning"]),
        ("banana", ["backends", "server", "timeouts", "limits"], []),
        ("id", ["ip"], []),  # two letters: too short to guess from one edit
        ("cat", ["cwd", "url", "env"], []),
    ],
)
def test_closest_takes_one_edit_on_short_names_two_on_long_ones(
    written: str, known: list[str], meant: list[str]
) -> None:
    assert closest(written, known) == meant


def test_edit_distance_counts_a_swap_as_one_edit_and_stops_past_the_limit() -> None:
    assert edit_distance("retyr", "retry", 1) == 1
    assert edit_distance("ulr", "url", 1) == 1
    assert edit_distance("abcdef", "badcfe", 2) == 3  # three swaps: past a limit of 2
    assert edit_distance("x" * 40, "y" * 40, 2) == 3
