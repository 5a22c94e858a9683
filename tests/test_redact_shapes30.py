"""Audit redaction (session 30) blanks the secret shapes it used to write as they were: presigned URLs' query
signatures (`X-Amz-Signature=`, `Signature=`, `sig=`, `X-Goog-Signature=`), the `value` of a name/value pair whose
name is a secret's (`{"name": "X-Api-Key", "value": …}`), the keys `pwd`, `auth` and `session_id`, the value
after `aws_secret_access_key` in free text, and well-known token prefixes (`ghp_`, `gho_`, `github_pat_`,
`xoxb-`, `xoxp-`, `sk-`, `AKIA`, `glpat-`): in objects, in JSON held in a string, and in free text. Their
harmless look-alikes (`author`, `Content-Type`'s value, a signature in prose, `sk-learn` slugs) are kept, and a
real gateway's audit `data` carries none of the secrets."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.support import demo_backend, raw_session, running_gateway, write_config
from vmcp_opt.telemetry.redact import EDGE_CHARS, REDACTED, redacted, redacted_within

MARK = "Zq7Sekret"  # in every secret below, and in nothing harmless
GITHUB = f"ghp_{MARK}0123456789abcdefghijklmn"
GITHUB_OAUTH = f"gho_{MARK}0123456789abcdefghijklmn"
GITHUB_PAT = f"github_pat_11{MARK}_0123456789abcdefghij"
SLACK_BOT = f"xoxb-1234-5678-{MARK}"
SLACK_USER = f"xoxp-1234-5678-{MARK}"
OPENAI = f"sk-proj-{MARK}0123456789abcdef"
GITLAB = f"glpat-{MARK}0123456789abcdef"
AWS_KEY_ID = "AKIAZQ7SEKRET0123456"  # AKIA + 16 capitals and digits
TOKENS = (GITHUB, GITHUB_OAUTH, GITHUB_PAT, SLACK_BOT, SLACK_USER, OPENAI, GITLAB, AWS_KEY_ID)
PRESIGNED = (
    f"https://bucket.s3.amazonaws.com/o?X-Amz-Credential=x&X-Amz-Signature={MARK}1",
    f"https://storage.googleapis.com/b/o?X-Goog-Algorithm=GOOG4&X-Goog-Signature={MARK}2",
    f"https://d111.cloudfront.net/o?Expires=1&Signature={MARK}3&Key-Pair-Id=K",
    f"https://acct.blob.core.windows.net/c/b?sv=2022&sig={MARK}4",
)
# A tool's arguments, as an object: every shape the audit used to write as it was.
SHAPED: dict[str, Any] = {
    "headers": [
        {"name": "Content-Type", "value": "application/json"},
        {"name": "X-Api-Key", "value": f"{MARK}5"},
        {"Name": "Authorization", "Value": f"{MARK}6"},
    ],
    "env": [{"key": "DB_PASSWORD", "value": f"{MARK}7"}],
    "pwd": f"{MARK}8",
    "auth": {"user": "bob", "pass": f"{MARK}9"},
    "session_id": f"{MARK}10",
    "urls": list(PRESIGNED),
    "tokens": list(TOKENS),
    "note": f"aws_access_key_id {AWS_KEY_ID} aws_secret_access_key {MARK}11",
}
FREE_TEXT = "\n".join(
    [
        "deploy notes:",
        *(f"- {url}" for url in PRESIGNED),
        'headers = [{"name": "X-Api-Key", "value": "' + MARK + '5"}]',
        "headers = [{'name': 'Authorization', 'value': '" + MARK + "6'}]",
        f"pwd={MARK}8 auth: {MARK}9 session_id = {MARK}10",
        f"aws configure set aws_secret_access_key {MARK}11",
        f"AWS_SECRET_ACCESS_KEY {MARK}12",
        "tokens: " + ", ".join(TOKENS),
    ]
)
# What ordinary prose and JSON hold that looks a little like the shapes above: kept as it is.
HARMLESS: dict[str, Any] = {
    "author": "Jane Doe",
    "authentication": "none",
    "oauth": {"issuer": "https://issuer.example"},
    "session_idle_timeout": 300,
    "signature": "def save_note(title: str, text: str) -> str",
    "description": "Lists files under /home/user/sk-learn-notes/ and reads the task-abcdefghijklmnopqrstuvwxyz file.",
    "path": "/srv/data/ghp_short/glpat-/AKIA/report.csv",
    "headers": [{"name": "Content-Type", "value": "application/json"}, {"name": "Accept", "value": "*/*"}],
    "search": "https://example.com/search?q=design&sign=1&signup=yes&page=2",
    "prose": (
        "The function signature: takes two ints. Sign here, Signature: Jane. The author used the auth flow of "
        "sk-learn-introduction-to-machine-learning, cd $HOME, and a session started at noon; xoxb- and ghp_ are "
        "prefixes, AKIA is one too, and aws_secret_access_key is a setting's name."
    ),
}


def leaked(value: Any) -> str:
    """The redacted value's JSON where a secret shows through, or ''."""
    written = json.dumps(value)
    return written if MARK in written or AWS_KEY_ID in written or "ZQ7SEKRET" in written else ""


@pytest.mark.parametrize(
    "value",
    [SHAPED, {"arguments": json.dumps(SHAPED)}, {"text": FREE_TEXT}, {"script": json.dumps(FREE_TEXT)}],
    ids=["object", "JSON in a string", "free text", "escaped free text"],
)
def test_the_shapes_are_redacted_in_objects_json_strings_and_free_text(value: dict[str, Any]) -> None:
    assert not leaked(redacted(value))
    assert not leaked(redacted_within(value, 4096).value)


def test_each_token_and_signature_leaves_its_neighbours_as_they_were() -> None:
    for token in TOKENS:
        assert redacted(f"use {token} here") == f"use {REDACTED} here"
    assert (
        redacted(PRESIGNED[0])
        == f"https://bucket.s3.amazonaws.com/o?X-Amz-Credential={REDACTED}&X-Amz-Signature={REDACTED}"
    )
    assert redacted(PRESIGNED[2]) == f"https://d111.cloudfront.net/o?Expires=1&Signature={REDACTED}&Key-Pair-Id=K"
    assert redacted(f"aws_secret_access_key {MARK}") == f"aws_secret_access_key {REDACTED}"
    assert redacted({"name": "X-Api-Key", "value": "v", "note": "kept"}) == {
        "name": "X-Api-Key",
        "value": REDACTED,
        "note": "kept",
    }


def test_harmless_look_alikes_are_kept() -> None:
    assert redacted(HARMLESS) == HARMLESS
    assert redacted({"arguments": json.dumps(HARMLESS)}) == {"arguments": json.dumps(HARMLESS)}
    as_text = json.dumps(HARMLESS, indent=1) + "\n" + HARMLESS["prose"]
    assert len(as_text) > 0 and redacted({"text": "x" * 70_000 + as_text}) == {"text": "x" * 70_000 + as_text}


def test_a_token_cut_at_the_edge_leaks_no_part_of_itself() -> None:
    """The audit log cuts a string `EDGE_CHARS` past its limit: a token the cut falls inside is blanked whole."""
    limit = 100
    cut_at = limit - len('{"text": ') + EDGE_CHARS  # where the cut falls in the string
    aws_secret = "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY"
    for lead, secret in [
        *(("", token) for token in (GITHUB, OPENAI, AWS_KEY_ID, SLACK_BOT)),
        ("aws_secret_access_key ", aws_secret),
    ]:
        head = "w" * (cut_at - len(lead) - 7) + " " + lead  # the cut falls 6 characters into the secret
        text = head + secret + " and more words after it" * 100
        assert len(head) < cut_at < len(head) + len(secret)
        kept = redacted_within({"text": text}, limit)
        assert not kept.whole and secret[:6] not in json.dumps(kept.value), kept.value["text"][-40:]


@pytest.mark.slow
def test_an_audited_call_carries_none_of_the_shapes(tmp_path: Path) -> None:
    audit = tmp_path / "audit.log"
    config = {
        "backends": [demo_backend("demo")],
        "telemetry": {"audit": {"enabled": True, "output": str(audit), "include_data": True, "flush_interval": 0}},
        "health": {"interval": 600},
    }
    texts = (json.dumps(SHAPED), FREE_TEXT)
    with running_gateway(write_config(tmp_path, config)) as gateway:
        headers = raw_session(gateway.url)
        for index, text in enumerate(texts):
            body = {
                "jsonrpc": "2.0",
                "id": index + 1,
                "method": "tools/call",
                "params": {"name": "demo_save_note", "arguments": {"title": f"t{index}", "text": text}},
            }
            answer = httpx2.post(gateway.url, json=body, headers=headers, timeout=60)
            assert answer.status_code == 200 and '"isError":true' not in answer.text, answer.text

        def calls() -> list[dict[str, Any]]:
            lines = audit.read_text().splitlines() if audit.exists() else []
            events = [json.loads(line) for line in lines]
            return [e for e in events if e["target"].get("name") == "demo_save_note"]

        deadline = time.monotonic() + 30  # a bound on the background writer, not a measure
        while len(events := calls()) < len(texts):
            assert time.monotonic() < deadline, "the calls' events were not written"
            time.sleep(0.1)
    assert not leaked([event["data"] for event in events])
    requests = [event["data"]["request"]["text"] for event in events]
    assert json.loads(requests[0])["headers"][0] == {"name": "Content-Type", "value": "application/json"}
    assert requests[1].startswith("deploy notes:") and REDACTED in requests[1]
