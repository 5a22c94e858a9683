"""A hostile 2025-11-25 stdio backend for tests/test_backend_listing_bounds25.py (the standard library only).

Its `resources/list` answers as its mode says: `endless`, `PAGING_PER` resources a page and a new cursor with
every one; `one`, one resource and no cursor; `hang`, no answer at all; `two`, two resources and no cursor. It
starts in `PAGING_MODE`; the tools `grow` (to `endless`), `hang` and `heal` (to `two`) switch it and announce
the change (`notifications/resources/list_changed`); `stats` reports how many `resources/list` requests came.
`PAGING_LONG_NAME=1`: its server name is 1.6 million characters of terminal escapes and bidirectional overrides.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

HOSTILE_NAME = "\x1b]0;pwned\x07\x1b[2J\u202eX" * 100_000
SWITCHES = {"grow": "endless", "hang": "hang", "heal": "two"}


def send(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps({"jsonrpc": "2.0", **message}) + "\n")
    sys.stdout.flush()


def page(mode: str, cursor: str | None, per: int) -> dict[str, Any]:
    if mode == "one":
        return {"resources": [{"uri": "page://one", "name": "one"}]}
    if mode == "two":
        return {"resources": [{"uri": f"page://two/{i}", "name": f"two{i}"} for i in range(2)]}
    number = int(cursor or "0")
    resources = [{"uri": f"page://{number}/{i}", "name": f"r{i}"} for i in range(per)]
    return {"resources": resources, "nextCursor": str(number + 1)}


def initialize() -> dict[str, Any]:
    name = HOSTILE_NAME if os.environ.get("PAGING_LONG_NAME") == "1" else "paging"
    capabilities = {"tools": {}, "resources": {"listChanged": True}}
    return {"protocolVersion": "2025-11-25", "capabilities": capabilities, "serverInfo": {"name": name, "version": "1"}}


def main() -> None:
    mode, per, asked = os.environ.get("PAGING_MODE", "one"), int(os.environ.get("PAGING_PER", "100")), 0
    tools = [{"name": name, "inputSchema": {"type": "object"}} for name in ("stats", *SWITCHES)]
    for line in sys.stdin:
        request = json.loads(line)
        if "id" not in request:
            continue
        method, params = request.get("method"), request.get("params") or {}
        result: dict[str, Any]
        if method == "initialize":
            result = initialize()
        elif method == "tools/list":
            result = {"tools": tools}
        elif method == "resources/list":
            asked += 1
            if mode == "hang":
                continue  # never answered: the gateway must give up on its own
            result = page(mode, params.get("cursor"), per)
        elif method == "resources/templates/list":
            result = {"resourceTemplates": []}
        elif method == "tools/call" and params.get("name") in SWITCHES:
            mode = SWITCHES[params["name"]]
            send({"method": "notifications/resources/list_changed"})
            result = {"content": [{"type": "text", "text": mode}]}
        elif method == "tools/call":
            result = {"content": [{"type": "text", "text": json.dumps({"resources/list": asked})}]}
        else:
            result = {}
        send({"id": request["id"], "result": result})


if __name__ == "__main__":
    main()
