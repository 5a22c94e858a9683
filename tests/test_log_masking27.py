"""Secret query values in the trace exporter's log lines, over real processes (`vmcp serve` exporting to a local
collector that refuses the spans, and a process logging as the gateway configures its log):

- the value of a secret-named query parameter is masked whole (a `,` or `%2C` inside it included), and the text
  around the URL survives: the punctuation after it (`,` `.` `;` `)` `!` `'` `"`) was once masked with the secret;
- the masking stays linear on a long line: the old pattern backtracked over every run of characters before a `?`
  (quadratic: about a minute for a 64 KB line, hours for a megabyte).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from tests.support import GatedServer, JsonAnswers, demo_backend, gated, raw_session, running_gateway, write_config
from tests.test_obs_telemetry_limits import poll

pytestmark = [pytest.mark.slow]

SECRETS = ("SECRETONE", "SECRETTWO", "SECRETTHREE", "SECRETFOUR", "SECRETFIVE", "SEC,RET", "%2CSIX", "PASSWORD7")
# What the collector says when it refuses the spans (an HTTP reason phrase): the exporter logs it whole.
REASON = (
    "rejected http://c:4318/v1/traces?token=SECRETONE, then http://c/x?api_key=SECRETTWO. "
    "(see http://c/x?sig=SECRETTHREE); \"http://c/x?password=SECRETFOUR\" or 'http://c/x?auth=SECRETFIVE' "
    "and http://c/x?region=eu&token=SEC,RET%2CSIX&page=2! by http://user:PASSWORD7@c/x?a=1, done"
)
MASKED = (
    "rejected http://c:4318/v1/traces?token=***, then http://c/x?api_key=***. "
    "(see http://c/x?sig=***); \"http://c/x?password=***\" or 'http://c/x?auth=***' "
    "and http://c/x?region=eu&token=***&page=2! by http://***@c/x?a=1, done"
)


class Refusing(JsonAnswers):
    """A trace collector that refuses every batch with `REASON`: a 400 the exporter does not retry."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(400, REASON)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def collector() -> Iterator[str]:
    with gated(GatedServer(Refusing)) as server:
        yield server.base


def test_a_masked_url_keeps_the_punctuation_after_it_and_hides_its_secret_whole(tmp_path: Path, collector: str) -> None:
    config = {"backends": [demo_backend("notes")], "telemetry": {"tracing": {"enabled": True}}}
    env = {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"{collector}/v1/traces", "OTEL_BSP_SCHEDULE_DELAY": "50"}
    with running_gateway(write_config(tmp_path, config), env=env) as gateway:
        session = raw_session(gateway.url)
        listed = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
        assert httpx2.post(gateway.url, json=listed, headers=session, timeout=30).status_code == 200
        poll(lambda: "rejected http" in gateway.output(), "the exporter's error naming the collector's reason")
        output = gateway.output()
    assert MASKED in output, output
    for secret in SECRETS:
        assert secret not in output, (secret, output)


# The gateway's log set-up in a process of its own, logging as the OTLP exporter does (its records are the ones
# masked): each line holds the old pattern's worst case, a long run of characters before a `?` elsewhere.
LONG_LINES = textwrap.dedent(
    """
    import logging, sys
    from vmcp_opt.logs import configure
    configure("info", "plain", stream=sys.stdout)
    log = logging.getLogger("opentelemetry.exporter.otlp.proto.http.trace_exporter")
    run = "a" * 1_000_000
    log.warning("%s ?x http://c/v1?token=SECRETONE, then", run)
    log.warning("%s", "://" + run + " http://c/v1?" + "b" * 1_000_000 + "&sig=SECRETTWO.")
    """
)


def test_masking_a_long_line_takes_linear_time() -> None:
    done = subprocess.run(
        [sys.executable, "-c", LONG_LINES],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).parent.parent,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "http://c/v1?token=***, then" in done.stdout, done.stdout[-300:]
    assert "&sig=***." in done.stdout, done.stdout[-300:]
    assert "SECRETONE" not in done.stdout and "SECRETTWO" not in done.stdout
