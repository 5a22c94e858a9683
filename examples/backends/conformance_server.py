"""An MCP server with everything the official conformance suite's server scenarios ask for.

`@modelcontextprotocol/conformance server --url ...` runs its scenarios against it directly, or against
vmcp-opt in front of it, so the same suite proves the gateway passes everything through. Beyond the
suite it has the tools the relay tests need: roots, resource links, structured content, a resource
update trigger, a slow cancellable tool and a tool that changes the tool list.

    python examples/backends/conformance_server.py                       # stdio
    python examples/backends/conformance_server.py --http --port 9100    # http://127.0.0.1:9100/mcp
"""

from __future__ import annotations

import argparse
import json
import logging
import weakref
from typing import Any

import anyio
import mcp_types as types
from mcp.server.connection import Connection
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import NotificationOptions, Server
from mcp.server.stdio import stdio_server
from mcp.shared.exceptions import MCPError
from mcp.shared.message import ServerMessageMetadata
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from vmcp_opt.server.event_store import BoundedEventStore

Ctx = ServerRequestContext[Any, Any]

# A 1x1 PNG and a minimal WAV header.
IMAGE_PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
AUDIO_WAV = "UklGRiYAAABXQVZFZm10IBAAAAABAAEAQB8AAAB9AAACABAAZGF0YQIAAAA="
LEVELS = ["debug", "info", "notice", "warning", "error", "critical", "alert", "emergency"]
JSON_SCHEMA_2020_12 = "https://json-schema.org/draft/2020-12/schema"

NO_ARGS: dict[str, Any] = {"type": "object", "properties": {}}


def _tool(name: str, description: str, schema: dict[str, Any] | None = None, **extra: Any) -> types.Tool:
    return types.Tool(name=name, description=description, input_schema=schema or NO_ARGS, **extra)


TOOLS = [
    _tool("test_simple_text", "Returns simple text content."),
    _tool("test_image_content", "Returns an image (1x1 PNG)."),
    _tool("test_audio_content", "Returns audio (WAV)."),
    _tool("test_embedded_resource", "Returns an embedded text resource."),
    _tool("test_multiple_content_types", "Returns text, image and an embedded resource."),
    _tool("test_resource_link", "Returns a link to a resource."),
    _tool(
        "test_structured_content",
        "Returns structured content matching its output schema.",
        output_schema={
            "type": "object",
            "properties": {"temperature": {"type": "number"}, "unit": {"type": "string"}},
            "required": ["temperature", "unit"],
        },
        annotations=types.ToolAnnotations(read_only_hint=True, title="Structured weather"),
    ),
    _tool("test_tool_with_logging", "Sends three info log messages while it runs."),
    _tool("test_error_handling", "Always fails with isError: true."),
    _tool("test_tool_with_progress", "Reports progress 0, 50, 100 of 100."),
    _tool(
        "test_sampling",
        "Asks the client's LLM (sampling/createMessage) and returns its answer.",
        {"type": "object", "properties": {"prompt": {"type": "string"}}, "required": ["prompt"]},
    ),
    _tool(
        "test_elicitation",
        "Asks the user for a username and email (elicitation/create).",
        {"type": "object", "properties": {"message": {"type": "string"}}, "required": ["message"]},
    ),
    _tool("test_elicitation_sep1034_defaults", "Elicitation whose fields all have defaults (SEP-1034)."),
    _tool("test_elicitation_sep1330_enums", "Elicitation with every enum schema form (SEP-1330)."),
    _tool("test_elicitation_url", "URL-mode elicitation: sends the user to a URL, returns the action taken."),
    _tool("test_roots", "Asks the client for its roots (roots/list)."),
    _tool(
        "json_schema_2020_12_tool",
        "Tool with JSON Schema 2020-12 features",
        {
            "$schema": JSON_SCHEMA_2020_12,
            "type": "object",
            "$defs": {
                "address": {"type": "object", "properties": {"street": {"type": "string"}, "city": {"type": "string"}}}
            },
            "properties": {"name": {"type": "string"}, "address": {"$ref": "#/$defs/address"}},
            "additionalProperties": False,
        },
    ),
    _tool("test_reconnection", "Closes its SSE stream mid-call, then answers (SSE polling, SEP-1699)."),
    _tool(
        "test_update_resource",
        "Changes a resource and notifies the sessions subscribed to it.",
        {"type": "object", "properties": {"uri": {"type": "string"}}, "required": ["uri"]},
    ),
    _tool(
        "test_slow",
        "Sleeps for the given seconds (cancellation tests); reports whether it was cancelled.",
        {"type": "object", "properties": {"seconds": {"type": "number"}}},
    ),
    _tool("test_cancelled_calls", "How many test_slow calls were cancelled by their caller so far."),
    _tool("test_running_calls", "How many test_slow calls are running now (a test cancels one once it runs)."),
    _tool("test_add_tool", "Adds a tool, so the tool list changes (list_changed tests)."),
    _tool(
        "test_input_required",
        "2026-07-28 only: answers InputRequiredResult (request_state only) first, then the state it got back.",
    ),
]

RESOURCES = [
    types.Resource(
        uri="test://static-text",
        name="static-text",
        description="A static text resource",
        mime_type="text/plain",
        annotations=types.Annotations(audience=["user"], priority=0.5),
    ),
    types.Resource(uri="test://static-binary", name="static-binary", description="A PNG", mime_type="image/png"),
    types.Resource(
        uri="test://watched-resource",
        name="watched-resource",
        description="A resource that can be subscribed to",
        mime_type="text/plain",
    ),
]
TEMPLATES = [
    types.ResourceTemplate(
        uri_template="test://template/{id}/data",
        name="template-data",
        description="Data by id",
        mime_type="application/json",
    )
]
PROMPTS = [
    types.Prompt(name="test_simple_prompt", description="A simple prompt without arguments"),
    types.Prompt(
        name="test_prompt_with_arguments",
        description="A prompt with two required arguments",
        arguments=[
            types.PromptArgument(name="arg1", description="First test argument", required=True),
            types.PromptArgument(name="arg2", description="Second test argument", required=True),
        ],
    ),
    types.Prompt(
        name="test_prompt_with_embedded_resource",
        description="A prompt embedding a resource",
        arguments=[types.PromptArgument(name="resourceUri", description="URI to embed", required=True)],
    ),
    types.Prompt(name="test_prompt_with_image", description="A prompt with an image"),
]
COMPLETIONS = {"arg1": ["paris", "park", "party"], "arg2": ["red", "green", "blue"], "id": ["1", "2", "123"]}


class ConformanceBackend:
    def __init__(self) -> None:
        self.watched_text = "Watched resource content"
        self.extra_tools: list[types.Tool] = []
        self.cancelled_calls = 0
        self.running_calls = 0
        # Per connection: the minimum log level, and the subscribed URIs.
        self.levels: weakref.WeakKeyDictionary[Connection, str] = weakref.WeakKeyDictionary()
        self.subscribers: dict[str, weakref.WeakSet[Connection]] = {}
        self.server = self._build()

    def _build(self) -> Server[Any]:
        server: Server[Any] = Server(
            "mcp-conformance-backend",
            version="1.0.0",
            instructions="Implements the MCP conformance suite's server scenarios.",
            on_list_tools=self.list_tools,
            on_call_tool=self.call_tool,
            on_list_resources=self.list_resources,
            on_list_resource_templates=self.list_templates,
            on_read_resource=self.read_resource,
            on_subscribe_resource=self.subscribe,
            on_unsubscribe_resource=self.unsubscribe,
            on_list_prompts=self.list_prompts,
            on_get_prompt=self.get_prompt,
            on_completion=self.complete,
        )
        server.add_request_handler("logging/setLevel", types.SetLevelRequestParams, self.set_level)
        return server

    def initialization_options(self) -> Any:
        return self.server.create_initialization_options(
            NotificationOptions(tools_changed=True, resources_changed=True, prompts_changed=True)
        )

    # --- tools -----------------------------------------------------------------------------------

    async def list_tools(self, ctx: Ctx, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        return types.ListToolsResult(tools=TOOLS + self.extra_tools)

    async def call_tool(
        self, ctx: Ctx, params: types.CallToolRequestParams
    ) -> types.CallToolResult | types.InputRequiredResult:
        args = params.arguments or {}
        name = params.name
        if name == "test_input_required":
            return _input_required_round(ctx, params)
        if name == "test_simple_text":
            return _text("This is a simple text response for testing.")
        if name == "test_image_content":
            return types.CallToolResult(content=[_image()])
        if name == "test_audio_content":
            return types.CallToolResult(
                content=[types.AudioContent(type="audio", data=AUDIO_WAV, mime_type="audio/wav")]
            )
        if name == "test_embedded_resource":
            return types.CallToolResult(
                content=[_embedded("test://embedded-resource", "This is an embedded resource content.", "text/plain")]
            )
        if name == "test_multiple_content_types":
            return types.CallToolResult(
                content=[
                    types.TextContent(type="text", text="Multiple content types test:"),
                    _image(),
                    _embedded(
                        "test://mixed-content-resource", json.dumps({"test": "data", "value": 123}), "application/json"
                    ),
                ]
            )
        if name == "test_resource_link":
            link = types.ResourceLink(
                type="resource_link", uri="test://static-text", name="static-text", mime_type="text/plain"
            )
            return types.CallToolResult(content=[link])
        if name == "test_structured_content":
            data = {"temperature": 21.5, "unit": "celsius"}
            return types.CallToolResult(
                content=[types.TextContent(type="text", text=json.dumps(data))],
                structured_content=data,
                _meta={"example.com/source": "conformance"},
            )
        if name == "test_tool_with_logging":
            for step, text in enumerate(("Tool execution started", "Tool processing data", "Tool execution completed")):
                if step:
                    await anyio.sleep(0.05)
                await self._log(ctx, "info", text)
            return _text("Tool with logging executed successfully")
        if name == "test_error_handling":
            return types.CallToolResult(
                content=[types.TextContent(type="text", text="This tool intentionally returns an error for testing")],
                is_error=True,
            )
        if name == "test_tool_with_progress":
            return await self._progress(ctx)
        if name == "test_sampling":
            return await self._sampling(ctx, str(args.get("prompt", "")))
        if name == "test_elicitation":
            schema = {
                "type": "object",
                "properties": {
                    "username": {"type": "string", "description": "User's response"},
                    "email": {"type": "string", "description": "User's email address"},
                },
                "required": ["username", "email"],
            }
            return await self._elicit(ctx, str(args.get("message", "")), schema, "User response")
        if name == "test_elicitation_sep1034_defaults":
            return await self._elicit(ctx, "Please provide user information", SEP1034_SCHEMA, "Elicitation completed")
        if name == "test_elicitation_sep1330_enums":
            return await self._elicit(ctx, "Please pick values", SEP1330_SCHEMA, "Elicitation completed")
        if name == "test_elicitation_url":
            capabilities = ctx.session.client_capabilities
            if capabilities is None or capabilities.elicitation is None or capabilities.elicitation.url is None:
                return _error("The client does not support URL elicitation")
            url_result = await ctx.session.elicit_url(
                "Please sign in", "https://example.com/authorize", "elicitation-1", related_request_id=ctx.request_id
            )
            return _text(f"URL elicitation completed: action={url_result.action}")
        if name == "test_roots":
            roots = await ctx.session.send_request(
                types.ListRootsRequest(),
                types.ListRootsResult,
                metadata=ServerMessageMetadata(related_request_id=ctx.request_id),
            )
            return _text("Roots: " + json.dumps([str(root.uri) for root in roots.roots]))
        if name == "json_schema_2020_12_tool":
            return _text(f"Hello {args.get('name', 'nobody')}")
        if name == "test_reconnection":
            await self._log(ctx, "info", "Before disconnect")
            if ctx.close_sse_stream is not None:
                await ctx.close_sse_stream()
                await anyio.sleep(0.2)  # the client reconnects with Last-Event-ID meanwhile
            return _text("Reconnection test completed")
        if name == "test_update_resource":
            return await self._update_resource(str(args.get("uri", "")))
        if name == "test_slow":
            self.running_calls += 1
            try:
                await anyio.sleep(float(args.get("seconds", 5.0)))
            except anyio.get_cancelled_exc_class():
                self.cancelled_calls += 1
                raise
            finally:
                self.running_calls -= 1
            return _text("finished")
        if name == "test_cancelled_calls":
            return _text(str(self.cancelled_calls))
        if name == "test_running_calls":
            return _text(str(self.running_calls))
        if name == "test_add_tool":
            self.extra_tools.append(_tool(f"added_tool_{len(self.extra_tools) + 1}", "Added at run time."))
            await ctx.session.send_tool_list_changed()
            return _text(f"now {len(TOOLS) + len(self.extra_tools)} tools")
        if any(tool.name == name for tool in self.extra_tools):
            return _text(f"{name} called")
        raise MCPError(types.INVALID_PARAMS, f"Unknown tool: {name}")

    async def _log(self, ctx: Ctx, level: str, text: str) -> None:
        minimum = self.levels.get(ctx.session._connection, "debug")
        if LEVELS.index(level) < LEVELS.index(minimum):
            return
        notification = types.LoggingMessageNotification(
            params=types.LoggingMessageNotificationParams(level=level, data=text, logger="conformance")
        )
        await ctx.session.send_notification(notification, related_request_id=ctx.request_id)

    async def _progress(self, ctx: Ctx) -> types.CallToolResult:
        meta: dict[str, Any] = dict(ctx.meta or {})
        token = meta.get("progress_token", meta.get("progressToken"))
        for step, value in enumerate((0, 50, 100)):
            if step:
                await anyio.sleep(0.05)
            if token is not None:
                await ctx.session.send_progress_notification(
                    token, value, 100, f"Completed step {value} of 100", related_request_id=str(ctx.request_id)
                )
        return _text(f"Progress reported under token {token!r}")

    async def _sampling(self, ctx: Ctx, prompt: str) -> types.CallToolResult:
        capabilities = ctx.session.client_capabilities
        if capabilities is None or capabilities.sampling is None:
            return _error("The client does not support sampling")
        request = types.CreateMessageRequest(
            params=types.CreateMessageRequestParams(
                messages=[types.SamplingMessage(role="user", content=types.TextContent(type="text", text=prompt))],
                max_tokens=100,
            )
        )
        result = await ctx.session.send_request(
            request, types.CreateMessageResult, metadata=ServerMessageMetadata(related_request_id=ctx.request_id)
        )
        content = result.content
        text = content.text if isinstance(content, types.TextContent) else "(non-text response)"
        return _text(f"LLM response: {text}")

    async def _elicit(self, ctx: Ctx, message: str, schema: dict[str, Any], label: str) -> types.CallToolResult:
        capabilities = ctx.session.client_capabilities
        if capabilities is None or capabilities.elicitation is None:
            return _error("The client does not support elicitation")
        result = await ctx.session.elicit_form(message, schema, related_request_id=ctx.request_id)
        return _text(f"{label}: action={result.action}, content={json.dumps(result.content or {})}")

    async def _update_resource(self, uri: str) -> types.CallToolResult:
        if uri == "test://watched-resource":
            self.watched_text = f"Watched resource content, changed at {anyio.current_time():.3f}"
        notified = 0
        for connection in list(self.subscribers.get(uri, ())):
            try:
                await connection.send_resource_updated(uri)
                notified += 1
            except Exception as exc:  # a subscriber gone away must not stop the others
                logging.getLogger(__name__).debug("resources/updated not delivered: %r", exc)
        return _text(f"notified {notified} subscriber(s) of {uri}")

    # --- resources -------------------------------------------------------------------------------

    async def list_resources(self, ctx: Ctx, params: types.PaginatedRequestParams | None) -> types.ListResourcesResult:
        return types.ListResourcesResult(resources=RESOURCES)

    async def list_templates(
        self, ctx: Ctx, params: types.PaginatedRequestParams | None
    ) -> types.ListResourceTemplatesResult:
        return types.ListResourceTemplatesResult(resource_templates=TEMPLATES)

    async def read_resource(self, ctx: Ctx, params: types.ReadResourceRequestParams) -> types.ReadResourceResult:
        uri = str(params.uri)
        if uri == "test://static-text":
            contents: types.TextResourceContents | types.BlobResourceContents = types.TextResourceContents(
                uri=uri, mime_type="text/plain", text="This is the content of the static text resource."
            )
        elif uri == "test://static-binary":
            contents = types.BlobResourceContents(uri=uri, mime_type="image/png", blob=IMAGE_PNG)
        elif uri == "test://watched-resource":
            contents = types.TextResourceContents(uri=uri, mime_type="text/plain", text=self.watched_text)
        elif uri.startswith("test://template/") and uri.endswith("/data"):
            item = uri.removeprefix("test://template/").removesuffix("/data")
            text = json.dumps({"id": item, "templateTest": True, "data": f"Data for ID: {item}"})
            contents = types.TextResourceContents(uri=uri, mime_type="application/json", text=text)
        else:
            raise MCPError(-32002, f"Resource not found: {uri}", {"uri": uri})
        return types.ReadResourceResult(contents=[contents])

    async def subscribe(self, ctx: Ctx, params: types.SubscribeRequestParams) -> types.EmptyResult:
        self.subscribers.setdefault(str(params.uri), weakref.WeakSet()).add(ctx.session._connection)
        return types.EmptyResult()

    async def unsubscribe(self, ctx: Ctx, params: types.UnsubscribeRequestParams) -> types.EmptyResult:
        self.subscribers.get(str(params.uri), weakref.WeakSet()).discard(ctx.session._connection)
        return types.EmptyResult()

    # --- prompts, completion, logging ------------------------------------------------------------

    async def list_prompts(self, ctx: Ctx, params: types.PaginatedRequestParams | None) -> types.ListPromptsResult:
        return types.ListPromptsResult(prompts=PROMPTS)

    async def get_prompt(self, ctx: Ctx, params: types.GetPromptRequestParams) -> types.GetPromptResult:
        args = params.arguments or {}
        if params.name == "test_simple_prompt":
            return _prompt(types.TextContent(type="text", text="This is a simple prompt for testing."))
        if params.name == "test_prompt_with_arguments":
            missing = [name for name in ("arg1", "arg2") if name not in args]
            if missing:
                raise MCPError(types.INVALID_PARAMS, f"Missing required arguments: {', '.join(missing)}")
            text = f"Prompt with arguments: arg1='{args['arg1']}', arg2='{args['arg2']}'"
            return _prompt(types.TextContent(type="text", text=text))
        if params.name == "test_prompt_with_embedded_resource":
            uri = args.get("resourceUri", "test://example-resource")
            return _prompt(
                _embedded(uri, "Embedded resource content for testing.", "text/plain"),
                types.TextContent(type="text", text="Please process the embedded resource above."),
            )
        if params.name == "test_prompt_with_image":
            return _prompt(_image(), types.TextContent(type="text", text="Please analyze the image above."))
        raise MCPError(types.INVALID_PARAMS, f"Unknown prompt: {params.name}")

    async def complete(self, ctx: Ctx, params: types.CompleteRequestParams) -> types.CompleteResult:
        candidates = COMPLETIONS.get(params.argument.name, [])
        values = [value for value in candidates if value.startswith(params.argument.value)]
        return types.CompleteResult(completion=types.Completion(values=values, total=len(values), has_more=False))

    async def set_level(self, ctx: Ctx, params: types.SetLevelRequestParams) -> types.EmptyResult:
        self.levels[ctx.session._connection] = params.level
        return types.EmptyResult()


SEP1034_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "description": "User name", "default": "John Doe"},
        "age": {"type": "integer", "description": "User age", "default": 30},
        "score": {"type": "number", "description": "User score", "default": 95.5},
        "status": {
            "type": "string",
            "description": "User status",
            "enum": ["active", "inactive", "pending"],
            "default": "active",
        },
        "verified": {"type": "boolean", "description": "Verification status", "default": True},
    },
    "required": [],
}
SEP1330_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "untitledSingle": {"type": "string", "enum": ["option1", "option2", "option3"]},
        "titledSingle": {
            "type": "string",
            "oneOf": [
                {"const": "value1", "title": "First Option"},
                {"const": "value2", "title": "Second Option"},
                {"const": "value3", "title": "Third Option"},
            ],
        },
        "legacyEnum": {
            "type": "string",
            "enum": ["opt1", "opt2", "opt3"],
            "enumNames": ["Option One", "Option Two", "Option Three"],
        },
        "untitledMulti": {"type": "array", "items": {"type": "string", "enum": ["option1", "option2", "option3"]}},
        "titledMulti": {
            "type": "array",
            "items": {
                "anyOf": [
                    {"const": "value1", "title": "First Choice"},
                    {"const": "value2", "title": "Second Choice"},
                    {"const": "value3", "title": "Third Choice"},
                ]
            },
        },
    },
    "required": [],
}


def _input_required_round(
    ctx: Ctx, params: types.CallToolRequestParams
) -> types.CallToolResult | types.InputRequiredResult:
    """A multi-round-trip of the server's own making: call again with this state, then get it echoed."""
    if ctx.protocol_version not in MODERN_PROTOCOL_VERSIONS:
        return _error("test_input_required needs the 2026-07-28 revision")
    if params.request_state is None:
        return types.InputRequiredResult(request_state="backend-step-1")
    return _text(f"resumed with request_state={params.request_state}")


def _text(text: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)])


def _error(text: str) -> types.CallToolResult:
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)], is_error=True)


def _image() -> types.ImageContent:
    return types.ImageContent(type="image", data=IMAGE_PNG, mime_type="image/png")


def _embedded(uri: str, text: str, mime_type: str) -> types.EmbeddedResource:
    return types.EmbeddedResource(
        type="resource", resource=types.TextResourceContents(uri=uri, mime_type=mime_type, text=text)
    )


def _prompt(*contents: Any) -> types.GetPromptResult:
    return types.GetPromptResult(messages=[types.PromptMessage(role="user", content=content) for content in contents])


async def serve_stdio(backend: ConformanceBackend) -> None:
    async with stdio_server() as (read, write):
        await backend.server.run(read, write, backend.initialization_options())


def serve_http(backend: ConformanceBackend, host: str, port: int) -> None:
    import uvicorn

    app = backend.server.streamable_http_app(event_store=BoundedEventStore(), retry_interval=100, host=host)
    uvicorn.run(app, host=host, port=port, log_level="warning")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--http", action="store_true", help="serve streamable HTTP at /mcp instead of stdio")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    options = parser.parse_args()
    backend = ConformanceBackend()
    if options.http:
        serve_http(backend, options.host, options.port)
    else:
        anyio.run(serve_stdio, backend)


if __name__ == "__main__":
    main()
