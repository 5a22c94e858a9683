"""Opaque access tokens checked at the authorization server (RFC 7662 token introspection).

Used for a token that is not a JWT when `oauth.introspection_url` is set. The gateway authenticates as its own
client (`client_id`, secret from `client_secret_env`), and accepts only an `active` token whose `iss` (when given)
is the issuer, whose `aud` holds one of the audiences the verifier accepts (auth/tokens.py: this gateway's resource,
or `oauth.audiences`; RFC 8707: required, so a token for another server is refused) and whose `exp`/`nbf` hold with
the configured skew. Answers are reused for `introspection_cache` seconds, never past the token's expiry; a token
the server does not know (`active: false`, or a 400 answer about the token) is refused from memory for up to
`NEGATIVE_TTL` seconds, so a client repeating a bad token does not make the gateway ask each time. Requests bringing
one token the gateway holds no answer for share one question (single_flight.py, by the token's digest), so it is
asked, and the budgets below paid, once. A token longer than `MAX_OPAQUE_TOKEN` is refused (401) unasked: no server
issues such an opaque token, and one whose request body it cannot parse answers 400, which reads as the gateway's
own fault. One HTTP client (its connections kept alive) serves every request; `aclose` ends it.

A made-up token is new every time, so no cache stops a client sending them from making the gateway ask the
server at the client's own request rate (the connection pool bounds requests in flight, not their rate).
`IntrospectionBudget` does: tokens the gateway holds no answer for are asked about at most
`introspection_rate` a second (after a burst of `introspection_burst`), past it refused with 503 (the
client retries) without asking. Within that, one client address gets at most `introspection_rate_per_address`
(after `introspection_burst_per_address`; `AddressBudgets`), past it 429: one client flooding made-up tokens
would otherwise use the whole rate, and a real user's first token waited behind it. Both refusals carry
`Retry-After`, the seconds until the bucket holds a request again. The address comes from the HTTP
middleware (server/authentication.py) through `REQUESTING_ADDRESS`, as the Authenticator interface carries
only the credential; without one (not over HTTP) only the total bound applies. A re-check of a token the
server called active before (its answer expired after `introspection_cache`) is never refused for the budget,
only counted in the total first: such re-checks are bounded by the valid tokens in use, which a flood of
made-up ones cannot lock out.

Only an answer about the token is the caller's fault (`401 invalid_token`): `active: false`, or a 400
`invalid_token` or `unsupported_token_type`. An answer about the gateway's own request or client (RFC 7662 §2.3: a
400 `invalid_request` or `invalid_client`, a 401, a 403) is the operator's to fix: a `503`, never remembered
against the token (every token got "unknown token" for 30 s when the gateway's secret was wrong), the server's
`error` and `error_description` in the gateway's log (shortened, the secret masked; once a minute per status).
Other statuses and transport errors are the server's trouble: `503` too, so the client retries rather than
re-authenticates; so is an answer that does not come whole within `timeout` or is larger than
`MAX_ANSWER_BYTES` (auth/bounded_fetch.py): a server dripping its answer held each request, and its connection,
for as long as it dripped. The secret is read as a backend's is (surrounding whitespace dropped) and sent
form-urlencoded in HTTP Basic (RFC 6749 §2.3.1), by the same code (config/backend_auth.py).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, TypeVar
from urllib.parse import quote_plus

import httpx2

from vmcp_opt.auth import errors
from vmcp_opt.auth.bounded_fetch import Answer, AnswerUnread, fetch
from vmcp_opt.auth.caller import Identification
from vmcp_opt.auth.errors import RetryLater as RetryLater  # re-exported: the HTTP middleware imports it here
from vmcp_opt.auth.identity import Identity, from_claims, numeric_date, string_set
from vmcp_opt.backends.secrets import redact, with_escaped_forms
from vmcp_opt.backends.tls import client_context
from vmcp_opt.config import ClaimNames, OAuthConfig
from vmcp_opt.config.backend_auth import client_basic_auth, env_secret
from vmcp_opt.logs import ThrottledLog
from vmcp_opt.single_flight import SingleFlight

logger = logging.getLogger(__name__)
_answers_log = ThrottledLog(logger)  # per status: a misconfigured gateway has every request refused

CACHE_SIZE = 10_000
ADDRESS_BUCKETS = 4096  # client addresses whose introspection budget is kept (the least recently seen dropped)
NEGATIVE_TTL = 30.0  # seconds a refused token is refused from memory (at most `introspection_cache`)
# What a 400 from the introspection endpoint says about the token rather than about the gateway's request
# (`invalid_request` is about the request: RFC 7662 answers a bad token with `active: false`).
TOKEN_REFUSALS = frozenset({"unsupported_token_type", "invalid_token"})
# Statuses saying the server refused the gateway's own client (RFC 7662 §2.3, RFC 6749 §5.2).
CLIENT_REFUSALS = frozenset({400, 401, 403})
MAX_SAID = 200  # characters of the server's error and description logged
# Characters of an opaque token the server is asked about. Opaque tokens are short handles (tens to a few hundred
# characters; an encrypted JWE a few KiB); a longer one is refused here unasked: a 60 KB token got a 400 from
# oidc-provider's body parser, read as the server refusing the gateway's own client (a 503 each time).
MAX_OPAQUE_TOKEN = 8192
TOO_LONG = f"an opaque token longer than {MAX_OPAQUE_TOKEN} characters is not accepted"
OVERDUE = "token introspection is taking too long; retry"
EntryT = TypeVar("EntryT")
UNKNOWN = "the authorization server does not know this token"
NOT_ACTIVE = "the token is not active (unknown, expired or revoked)"
OVER_BUDGET = "too many unknown tokens to introspect now (auth.incoming.oauth.introspection_rate)"
ADDRESS_OVER_BUDGET = (
    "too many unknown tokens from this address to introspect now (auth.incoming.oauth.introspection_rate_per_address)"
)
# The client address of the request being authenticated, set by server/authentication.py around the call.
REQUESTING_ADDRESS: ContextVar[str | None] = ContextVar("REQUESTING_ADDRESS", default=None)


class Introspection:
    def __init__(
        self,
        settings: OAuthConfig,
        audiences: list[str],
        claims: ClaimNames,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        expected: str | None = None,
    ) -> None:
        assert settings.introspection_url and settings.client_id and settings.client_secret_env
        assert audiences, "an empty audience set would refuse every token"
        self.settings = settings
        self.url = settings.introspection_url
        self.audiences = set(audiences)
        self.expected = expected or min(self.audiences)  # named in refusals
        self.claims = claims
        self.clock = clock
        self._answers: OrderedDict[bytes, tuple[float, Identity]] = OrderedDict()
        self._refused: OrderedDict[bytes, tuple[float, str]] = OrderedDict()  # digest -> (until, why)
        self._client: httpx2.AsyncClient | None = None  # made on first use, in the serving event loop
        self._budget = IntrospectionBudget(settings.introspection_rate, settings.introspection_burst, monotonic)
        self._per_address = AddressBudgets(
            settings.introspection_rate_per_address, settings.introspection_burst_per_address, monotonic
        )
        # One question per token at a time: concurrent first uses (a client opening several streams at once) wait
        # for its answer, at most `timeout`, instead of each asking and paying the budget (30 at once asked 20
        # times, and the address's burst refused the rest 429).
        self._flights: SingleFlight[bytes, Identity | errors.AuthError] = SingleFlight(
            settings.timeout, lambda: errors.unavailable(OVERDUE)
        )

    def _secret(self) -> str:
        assert self.settings.client_secret_env is not None
        try:
            return env_secret(self.settings.client_secret_env)
        except ValueError as exc:
            raise errors.unavailable(f"cannot introspect tokens: {exc}") from None

    async def authenticate(self, token: str) -> Identity:
        if len(token) > MAX_OPAQUE_TOKEN:
            raise errors.invalid_token(TOO_LONG)
        digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        outcome = await self._flights.get(
            digest, lambda: self._introspect(token, digest), ready=lambda: self._known(digest)
        )
        if isinstance(outcome, errors.AuthError):  # a fresh one per caller: one exception raised in many tasks
            raise errors.AuthError(outcome.status, outcome.error, outcome.description, outcome.scope)
        return outcome

    def _known(self, digest: bytes) -> Identity | errors.AuthError | None:
        """What memory says of the token: its identity, or why it was refused; None when it must be asked."""
        now = self.clock()
        cached = self._answers.get(digest)
        if cached is not None and now < cached[0]:
            return cached[1]
        refused = self._refused.get(digest)
        if refused is not None and now < refused[0]:
            return errors.invalid_token(refused[1])
        return None

    async def _introspect(self, token: str, digest: bytes) -> Identity | errors.AuthError:
        """The flight for one token: the budget paid once, the server asked once, the answer remembered. A 503
        (the server's trouble) is the outcome of every caller waiting on it; a budget refusal (`RetryLater`) is
        raised: it is this caller's address's, so a waiter from another one asks anew, paying its own."""
        now = self.clock()
        if digest in self._answers:
            self._budget.charge()  # a re-check of a token found active: never refused, counted first
        else:
            self._admit_unknown(REQUESTING_ADDRESS.get())
        try:
            answer = await self._ask(token)
        except errors.AuthError as trouble:
            return trouble
        try:
            identity = self._accepted(answer, now)
        except errors.AuthError as refusal:
            self._answers.pop(digest, None)  # no longer vouched for: its next check pays like any unknown token
            ttl = min(self.settings.introspection_cache, NEGATIVE_TTL)
            _remember(self._refused, digest, (now + ttl, refusal.description))
            return refusal
        until = now + self.settings.introspection_cache
        if identity.expires_at is not None:
            until = min(until, identity.expires_at)
        _remember(self._answers, digest, (until, identity))
        return identity

    def _admit_unknown(self, address: str | None) -> None:
        """Spend a request of the address's budget and of the total, or raise `RetryLater` (429 for the
        address's, 503 for the total's) spending neither: a refused request does not use up the other bucket."""
        own = self._per_address.bucket(address) if address is not None else None
        if own is not None and not own.has_one():
            raise _retry_later(429, ADDRESS_OVER_BUDGET, own.seconds_to_one())
        if not self._budget.take():
            raise _retry_later(503, OVER_BUDGET, self._budget.seconds_to_one())
        if own is not None:
            own.take()

    async def aclose(self) -> None:
        """Close the HTTP client (at shutdown); a later request would open a new one."""
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def _http(self) -> httpx2.AsyncClient:
        if self._client is None:
            tls = await client_context()  # made once, off the event loop (backends/tls.py)
            if self._client is None:
                self._client = httpx2.AsyncClient(timeout=self.settings.timeout, follow_redirects=False, verify=tls)
        return self._client

    async def _ask(self, token: str) -> dict[str, Any] | None:
        """The server's answer, or None when it refuses to introspect the token (a 400 about the token)."""
        assert self.settings.client_id is not None
        secret = self._secret()
        try:
            response = await fetch(
                await self._http(),
                "POST",
                self.url,
                self.settings.timeout,
                data={"token": token, "token_type_hint": "access_token"},
                auth=client_basic_auth(self.settings.client_id, secret),
                headers={"Accept": "application/json"},
            )
        except httpx2.HTTPError as exc:
            raise errors.unavailable(f"token introspection failed: {type(exc).__name__}") from None
        except AnswerUnread as exc:
            raise errors.unavailable(f"token introspection failed: {exc}") from None
        if response.status == 400 and _error_code(response) in TOKEN_REFUSALS:
            return None
        if response.status != 200:
            raise self._not_answered(response, _sent_secrets(token, self.settings.client_id, secret))
        try:
            answer = response.json()
        except ValueError:
            raise errors.unavailable("token introspection answered something other than JSON") from None
        if not isinstance(answer, dict):
            raise errors.unavailable("token introspection answered something other than an object")
        return answer

    def _not_answered(self, response: Answer, sent: list[str]) -> errors.AuthError:
        """The 503 for an answer that is no fault of the token's, its reason logged for the operator: the client
        is told only the status, the operator what the server said (its description names what to fix)."""
        status = response.status
        ours = status in CLIENT_REFUSALS
        settings = self.settings
        whose = f" to the gateway's client {settings.client_id!r}" if ours else ""
        fix = f" (check auth.incoming.oauth.client_id and ${settings.client_secret_env})" if ours else ""
        said = _server_says(response, sent)
        _answers_log.warning(
            f"status-{status}", "auth: token introspection answered HTTP %d%s: %s%s", status, whose, said, fix
        )
        if ours:
            return errors.unavailable(f"token introspection refused the gateway's own credentials (HTTP {status})")
        return errors.unavailable(f"token introspection answered {status}")

    def _accepted(self, answer: dict[str, Any] | None, now: float) -> Identity:
        """The identity an answer vouches for, or `invalid_token` saying why it vouches for none (remembered:
        an active token for another resource is refused from memory too, not asked about again each time)."""
        if answer is None:
            raise errors.invalid_token(UNKNOWN)
        if answer.get("active") is not True:
            raise errors.invalid_token(NOT_ACTIVE)
        return self._check(answer, now)

    def _check(self, answer: dict[str, Any], now: float) -> Identity:
        skew = self.settings.clock_skew
        if "iss" in answer and answer["iss"] != self.settings.issuer:
            raise errors.invalid_token("the token was issued by another issuer")
        if not string_set(answer.get("aud")) & self.audiences:
            raise errors.invalid_token(f"the token was not issued for this resource (expected aud {self.expected})")
        try:  # numbers, or numeric strings as PyJWT takes them: either way checked, never skipped
            exp, nbf = numeric_date(answer, "exp"), numeric_date(answer, "nbf")
        except ValueError as exc:
            raise errors.invalid_token(f"the token has {exc}") from None
        if exp is not None and now > exp + skew:
            raise errors.invalid_token("the token has expired")
        if nbf is not None and now + skew < nbf:
            raise errors.invalid_token("the token is not valid yet")
        try:
            return from_claims(answer, self.claims, Identification.TOKEN)
        except ValueError as exc:
            raise errors.invalid_token(f"the token has {exc}") from None


class IntrospectionBudget:
    """A token bucket of introspection requests: `rate` a second, holding at most `burst`. `take` spends one
    if there is one; `charge` spends one whatever is left, down to a debt of `burst` (so re-checks of valid
    tokens go first, and a long run of them delays unknown tokens by at most one burst's refill)."""

    def __init__(self, rate: float, burst: int, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.monotonic = monotonic
        self._tokens = self.burst
        self._at = monotonic()

    def take(self) -> bool:
        if not self.has_one():
            return False
        self._tokens -= 1
        return True

    def has_one(self) -> bool:
        self._refill()
        return self._tokens >= 1

    def seconds_to_one(self) -> int:
        """Whole seconds until `take` can succeed (at least 1: what a `Retry-After` says)."""
        self._refill()
        return max(1, math.ceil((1 - self._tokens) / self.rate))

    def charge(self) -> None:
        self._refill()
        self._tokens = max(self._tokens - 1, -self.burst)

    def _refill(self) -> None:
        now = self.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now


class AddressBudgets:
    """An `IntrospectionBudget` per client address, for the `ADDRESS_BUCKETS` addresses seen last: a flood from
    more addresses than that only starts some afresh, and the total budget still bounds them all."""

    def __init__(self, rate: float, burst: int, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self.monotonic = monotonic
        self._buckets: OrderedDict[str, IntrospectionBudget] = OrderedDict()

    def bucket(self, address: str) -> IntrospectionBudget:
        found = self._buckets.get(address)
        if found is None:
            found = self._buckets[address] = IntrospectionBudget(self.rate, self.burst, self.monotonic)
            if len(self._buckets) > ADDRESS_BUCKETS:
                self._buckets.popitem(last=False)
        self._buckets.move_to_end(address)
        return found


def _retry_later(status: int, description: str, seconds: int) -> RetryLater:
    """A budget's refusal, saying when to retry in its description too."""
    return RetryLater(status, f"{description}; retry in {seconds} s", seconds)


def _error_code(response: Answer) -> str | None:
    """The OAuth `error` of an error answer, when it has one."""
    try:
        body = response.json()
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, str) else None


def _sent_secrets(token: str, client_id: str, secret: str) -> list[str]:
    """What the gateway sent that a log line must not show, in each form a server may echo it: the caller's token
    and the gateway's secret (as written, form-encoded, escaped), and the Basic credentials (base64 of id:secret,
    which the header value `Basic <it>` holds too)."""
    user, password = client_basic_auth(client_id, secret)
    basic = base64.b64encode(f"{user}:{password}".encode("utf-8", "surrogatepass")).decode("ascii")
    forms = {basic, *(quote_plus(value, safe="") for value in (token, secret))}
    return with_escaped_forms([token, secret, *forms], min_length=1)


def _server_says(response: Answer, sent: list[str]) -> str:
    """The answer's `error` and `error_description`, for a log line: what the gateway sent masked (`sent`, in case
    the server echoes it), a control character shown as `?` (no forged log lines), at most `MAX_SAID` long."""
    try:
        body = response.json()
    except ValueError:
        body = None
    said = [body[k] for k in ("error", "error_description") if isinstance(body, dict) and isinstance(body.get(k), str)]
    text = redact(": ".join(said) or "no OAuth error in the answer", sent)
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= MAX_SAID else text[: MAX_SAID - 1] + "…"


def _remember(cache: OrderedDict[bytes, EntryT], digest: bytes, entry: EntryT) -> None:
    """Store an entry, dropping the oldest past `CACHE_SIZE` (a flood of distinct tokens stays bounded)."""
    cache[digest] = entry
    cache.move_to_end(digest)
    if len(cache) > CACHE_SIZE:
        cache.popitem(last=False)
