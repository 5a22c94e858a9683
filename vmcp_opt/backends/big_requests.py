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
"""

from __future__ import annotations

from typing import Any

import mcp_types as types

from vmcp_opt.backends.results import INLINE_CHARS, json_size

# What `ClientSession.send_request` asks of the request model; any other dump is pydantic's own.
_SDK_SEND_DUMP: dict[str, Any] = {"by_alias": True, "mode": "json", "exclude_none": True}


class _CallWithArgumentsAsGiven(types.CallToolRequest):
    """A tools/call whose dump for the SDK's send leaves its arguments' objects in place rather than copying them."""

    def model_dump(self, **kwargs: Any) -> dict[str, Any]:
        arguments = self.params.arguments
        if kwargs != _SDK_SEND_DUMP or arguments is None:
            return super().model_dump(**kwargs)
        dumped = super().model_dump(**kwargs, exclude={"params": {"arguments"}})
        dumped["params"]["arguments"] = arguments
        return dumped


def as_given(request: types.Request[Any, Any]) -> types.Request[Any, Any]:
    """`request` to pass to `ClientSession.send_request`: a tools/call whose arguments take more than about
    `INLINE_CHARS` as JSON is sent without the SDK's copy of them; any other request is returned unchanged.

    The size walk stops at `INLINE_CHARS`: a few thousand values at most, whatever the arguments hold."""
    if not isinstance(request, types.CallToolRequest) or type(request) is not types.CallToolRequest:  # no subclass
        return request
    arguments = request.params.arguments
    if arguments is None or json_size(arguments, INLINE_CHARS) is not None:
        return request
    return _CallWithArgumentsAsGiven.model_construct(request.model_fields_set, **dict(request))
