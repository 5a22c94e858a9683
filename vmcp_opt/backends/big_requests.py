"""A big tools/call handed to the SDK with its arguments as they are, so that sending it does not copy them on the
event loop.

`ClientSession.send_request` first turns the request model into JSON-ready data (`model_dump(mode="json")`): a
copy of every value, with the GIL held throughout, so a worker thread would hold the loop just as long (measured:
a 600 ms dump in a thread, the loop's longest wait 530 ms). A 3.9 MB tools/call of 400,000 one-number lists held the
loop 0.3 to 0.6 s there. The copy gives the wire nothing: the arguments are JSON data already (parsed from the client's
JSON, or built from such by the optimizer and workflows), and the transport serialises the message again, in JSON
mode, on its way out (stdio: `model_dump_json`; streamable HTTP and SSE: `model_dump(mode="json")`), which turns
what JSON lacks (NaN, a tuple) into the same JSON as the copy would. So `as_given` hands the SDK a request whose dump
keeps the arguments' objects, and only when they pass `INLINE_CHARS` (backends/results.py): below it the copy is a
few milliseconds and a request goes exactly as the SDK dumps it.

The client's `_meta` is forwarded too (routing/exchange.py `forwarded_meta`), up to `limits.max_request_values`
values: a big one is kept the same way, but as a copy of its top level (the SDK's 2026-07-28 stamp writes its
protocol keys into the dumped `_meta`, which must not reach the request's own).
"""

from __future__ import annotations

from typing import Any

import mcp_types as types

from vmcp_opt.backends.results import INLINE_CHARS, json_size

# What `ClientSession.send_request` asks of the request model; any other dump is pydantic's own.
_SDK_SEND_DUMP: dict[str, Any] = {"by_alias": True, "mode": "json", "exclude_none": True}


class _CallWithArgumentsAsGiven(types.CallToolRequest):
    """A tools/call whose dump for the SDK's send leaves its big arguments' and `_meta`'s objects in place rather
    than copying them."""

    def model_dump(self, **kwargs: Any) -> dict[str, Any]:
        big = _big_fields(self.params) if kwargs == _SDK_SEND_DUMP else set()
        if not big:
            return super().model_dump(**kwargs)
        dumped = super().model_dump(**kwargs, exclude={"params": big})
        if "arguments" in big:
            dumped["params"]["arguments"] = self.params.arguments
        if "meta" in big:
            dumped["params"]["_meta"] = dict(self.params.meta or {})  # a copy: the SDK's stamp writes keys into it
        return dumped


def _big_fields(params: types.CallToolRequestParams) -> set[str]:
    """Which of `params`' `arguments` and `meta` take more than about `INLINE_CHARS` as JSON."""
    return {
        field
        for field, value in (("arguments", params.arguments), ("meta", params.meta))
        if value is not None and json_size(value, INLINE_CHARS) is None
    }


def as_given(request: types.Request[Any, Any]) -> types.Request[Any, Any]:
    """`request` to pass to `ClientSession.send_request`: a tools/call whose arguments or `_meta` take more than
    about `INLINE_CHARS` as JSON is sent without the SDK's copy of them; any other request is returned unchanged.

    Each size walk stops at `INLINE_CHARS`: a few thousand values at most, whatever they hold."""
    if not isinstance(request, types.CallToolRequest) or type(request) is not types.CallToolRequest:  # no subclass
        return request
    if not _big_fields(request.params):
        return request
    return _CallWithArgumentsAsGiven.model_construct(request.model_fields_set, **dict(request))
