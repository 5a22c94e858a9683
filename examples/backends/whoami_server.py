"""A protected MCP backend for the per-backend credential tests: who does each request come from?

    python examples/backends/whoami_server.py --port 9101 --issuer http://127.0.0.1:9100 \\
        --audience http://127.0.0.1:9101/mcp --seen /tmp/seen.jsonl [--api-key-env WHOAMI_KEY]

Every HTTP request must carry `Authorization: Bearer <JWT>` signed by a key of the issuer's JWKS (found through
its OpenID metadata), with this server's `--audience` and the issuer's `iss`; or, with `--api-key-env`, an
`X-Api-Key` header equal to that variable's value. Anything else is answered 401. Each request it accepts or
refuses is appended to `--seen` as one JSON line: the claims' `sub`, `aud` and `client_id`, the SHA-256 of the
raw token (never the token), and the request's non-credential headers, so a test can say who reached it and
with what. The `whoami` tool returns the subject of the token its request carried.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from typing import Any

import httpx2
import jwt
import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from starlette.types import ASGIApp, Receive, Scope, Send

server = MCPServer("whoami", instructions="Says who the gateway called it as.")
CLAIMS_KEY = "whoami.claims"


@server.tool()
def whoami(ctx: Context) -> dict[str, Any]:
    """The subject, audience and client id of the token this call came with."""
    request = ctx.request_context.request
    claims = request.scope.get(CLAIMS_KEY, {}) if request is not None else {}  # none with --open
    return {"sub": claims.get("sub"), "aud": claims.get("aud"), "client_id": claims.get("client_id")}


class BearerCheck:
    def __init__(self, app: ASGIApp, issuer: str, audience: str, seen: str, api_key: str | None) -> None:
        self.app, self.issuer, self.audience, self.seen, self.api_key = app, issuer, audience, seen, api_key
        metadata = httpx2.get(f"{issuer}/.well-known/openid-configuration", timeout=10).json()
        self.jwks = jwt.PyJWKClient(metadata["jwks_uri"])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        record: dict[str, Any] = {"method": scope["method"]}
        record["headers"] = {k: v for k, v in headers.items() if k not in ("authorization", "x-api-key", "cookie")}
        claims = self.check(headers, record)
        self.record(record)
        if claims is None:
            body = b'{"error": "invalid_token"}'
            await send(
                {
                    "type": "http.response.start",
                    "status": 401,
                    "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        scope[CLAIMS_KEY] = claims
        await self.app(scope, receive, send)

    def record(self, record: dict[str, Any]) -> None:
        with open(self.seen, "a", encoding="utf-8") as out:  # a test server: a small blocking append is fine
            out.write(json.dumps(record) + "\n")

    def check(self, headers: dict[str, str], record: dict[str, Any]) -> dict[str, Any] | None:
        key = headers.get("x-api-key")
        if key is not None:
            record["api_key_sha256"] = hashlib.sha256(key.encode()).hexdigest()
            return {"sub": "api-key"} if self.api_key is not None and key == self.api_key else None
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            record["refused"] = "no bearer token"
            return None
        record["token_sha256"] = hashlib.sha256(token.encode()).hexdigest()
        try:
            unverified = jwt.decode(token, options={"verify_signature": False})
            record.update({k: unverified.get(k) for k in ("sub", "aud", "client_id")})
            claims: dict[str, Any] = jwt.decode(
                token,
                self.jwks.get_signing_key_from_jwt(token).key,
                algorithms=["RS256", "ES256", "PS256"],
                audience=self.audience,
                issuer=self.issuer,
            )
        except jwt.PyJWTError as exc:
            record["refused"] = type(exc).__name__
            return None
        return claims


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--issuer")
    parser.add_argument("--audience")
    parser.add_argument("--seen", help="a JSON-lines file each request is recorded in")
    parser.add_argument("--api-key-env", help="also accept X-Api-Key equal to this variable's value")
    parser.add_argument("--open", action="store_true", help="check nothing (a baseline for bench/credentials.py)")
    args = parser.parse_args()
    if args.open:
        uvicorn.run(server.streamable_http_app(), host="127.0.0.1", port=args.port, log_level="warning")
        return
    api_key = os.environ[args.api_key_env] if args.api_key_env else None
    app = BearerCheck(server.streamable_http_app(), args.issuer, args.audience, args.seen, api_key)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
