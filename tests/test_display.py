"""Untrusted text shown in messages and logs cannot move the cursor, forge a line or reorder what is shown."""

from __future__ import annotations

from vmcp_opt.display import printable, shorten


def test_controls_and_bidirectional_overrides_are_escaped() -> None:
    assert printable("a\nb\x1b[31mc\x00") == "a\\nb\\x1b[31mc\\x00"
    # "evil\u202e" + "txt.exe" would show as "evilexe.txt": the override is written out instead.
    assert printable("evil\u202etxt.exe") == "evil\\u202etxt.exe"
    assert printable("x\u2066y\u2069\u200f") == "x\\u2066y\\u2069\\u200f"
    assert printable("Code review, 東京, émoji 🚀") == "Code review, 東京, émoji 🚀"  # left as written


def test_a_cut_says_how_long_the_whole_was() -> None:
    assert shorten("a" * 100, 10) == "aaaaaaaaaa… (100 characters)"
