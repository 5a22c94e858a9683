"""The issuer's signing keys (JWKS): discovered from its metadata, cached, refreshed on an unknown key id.

A token signed with a key id the cache lacks triggers one refresh, at most once per `refresh_interval`
seconds: an attacker sending made-up key ids cannot make the gateway hammer the authorization server, and
a key the issuer just rotated in is picked up at the first token that uses it once the interval has passed.
Within the interval such a token cannot be judged (the key may be new, and anyone's made-up key id may have
spent the refresh): it is `JwksUnavailable`, a 503 whose `Retry-After` is the seconds until a refresh is
allowed, never a 401 that sends the client for a new token that fares no better. A key id the issuer has
dropped from its JWKS (`RETIRED_KIDS` of them remembered), one it lists with a key the gateway cannot use, and
one still missing after a successful refresh are the token's fault (None: a 401). `generation` counts the key
sets stored and `thumbprint` names a held key, so that tokens verified earlier are dropped once their key is gone
(auth/tokens.py). Symmetric keys (`kty: oct`) are never taken from a JWKS.

Concurrent requests share a refresh, and it takes at most `timeout` (auth.incoming.oauth.timeout) in all: its
discovery (up to three metadata requests) and its key fetch together, not each (bounded one by one, a slow issuer
held every token that needed the keys some 20 s). While it runs, a token whose key is held is verified with the
held keys at once; only one whose key is not held waits for it, at most `timeout` from its arrival, then is
`JwksUnavailable`. A refresh once started ends by recording its outcome (the reason of a failure logged, the
interval counted): one that fails, times out, or raises an error no branch foresaw (a discovered `jwks_uri` httpx
cannot parse: it was a 500 and a fetch per token), and one whose caller is cancelled meanwhile: the fetch is shielded
from the caller's cancel scopes (a client that hangs up, were its request cancelled, would otherwise leave nothing
recorded, and made-up key ids would fetch the keys back to back), and that caller lingers at most `timeout`. Only
the gateway's stop (asyncio cancelling the task itself) cuts one off, which then leaves nothing behind.

With no keys at all (the issuer unreachable since the start, or publishing none the gateway can use) no
token can be judged: each is `JwksUnavailable` (a 503 the client retries, never a 401 that sends it to get
a new token which would fare no better), and the keys are asked for again at most once per `NO_KEYS_RETRY`
seconds, so a gateway started before its issuer accepts tokens soon after the issuer serves. Why a fetch
failed (URLs of the issuer's network included) is logged for the operator; the client is told only that
the keys are unavailable. So is a token whose key id is not held while the last refresh failed: the issuer may
have rotated it in. Each such 503 says when to retry (`JwksUnavailable.retry_after`). Each request is also
bounded in size (auth/bounded_fetch.py).

Keys are found by `kid`, each kid holding every key listed under it (RFC 7517 §4.5 allows keys of different
types to share one), the one used being the first that fits the token's algorithm. A key whose `kid` is not a
string is skipped: no token header can name it. So is a key published with its private part (`d`): anyone who
fetched the JWKS can sign with it, so a token it verifies proves nothing (PyJWT verified EC tokens with it, and
failed on RSA ones with an AttributeError: a 500).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx2
import jwt

from vmcp_opt.auth.bounded_fetch import TIMEOUT_SETTING, Answer, AnswerUnread, fetch
from vmcp_opt.backends.secrets import mask_url, redact, url_credentials, with_escaped_forms
from vmcp_opt.backends.tls import client_context
from vmcp_opt.single_flight import SingleFlight

logger = logging.getLogger(__name__)

# The key families each signing algorithm needs (RFC 7518): never an HMAC key for an RSA algorithm, etc.
KEY_TYPES = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}
# Seconds between fetches while no key is known (at most `refresh_interval`): sooner than a key rotation needs,
# since every token waits on it, and still a bounded rate however many tokens arrive.
NO_KEYS_RETRY = 5.0
UNAVAILABLE = "the authorization server's signing keys cannot be fetched"
# The private exponent (RSA) or scalar (EC, OKP) of a JWK (RFC 7518 §6.2.2.1, §6.3.2.1; RFC 8037).
PRIVATE_MEMBER = "d"
# The key of a cache's one flight: the key set is fetched whole, for every token.
KEY_SET = "jwks"
THROTTLED = "the token's signing key is not held, and the issuer's keys were fetched moments ago"
# Key ids the issuer dropped from its JWKS that are remembered (refused at once, not after the next refresh).
RETIRED_KIDS = 1024


Keys = dict[str | None, list[dict[str, Any]]]  # by `kid` (None: keys without one), in the JWKS's order


class JwksUnavailable(Exception):
    """The authorization server's metadata or keys could not be fetched (or not yet again): `retry_after` is the
    whole seconds until they may be."""

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class JwksCache:
    def __init__(
        self,
        issuer: str,
        jwks_url: str | None = None,
        *,
        refresh_interval: float = 60.0,
        max_age: float = 3600.0,
        timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.issuer = issuer
        self.jwks_url = jwks_url
        self.refresh_interval = refresh_interval
        self.max_age = max_age
        self.timeout = timeout
        self.clock = clock
        self._keys: Keys = {}
        self._built: dict[tuple[str | None, str], tuple[jwt.PyJWK, str]] = {}  # with the key's thumbprint
        self._retired: OrderedDict[str, None] = OrderedDict()  # key ids the issuer published once, then dropped
        self._unusable: frozenset[str] = frozenset()  # key ids the JWKS lists with no usable key (`usable_keys`)
        self.generation = 0  # one more each time the held key set changes
        self._fetched_at: float | None = None
        self._failure: str | None = None  # why the last fetch failed (logged), None after one succeeded
        # The refresh under way; it records its outcome here and shares when it recorded it.
        self._refreshes: SingleFlight[str, float] = SingleFlight(timeout, lambda: JwksUnavailable(UNAVAILABLE))

    async def key(self, kid: str | None, alg: str) -> jwt.PyJWK | None:
        """The verification key for a token header's `kid` and `alg`; None when no key fits. `JwksUnavailable`
        while no key at all is known, or when the key is not held and the last refresh failed."""
        due = self._due_for_every_token()
        if due is not None:
            held = self._build(self._find(kid), kid, alg) if self._refreshes.running(KEY_SET) else None
            if held is not None:
                return held  # the refresh under way is for the tokens to come; this one's key is held
            await self._refresh(stale_before=due)
        if not self._keys:
            reason = UNAVAILABLE if self._failure else "the authorization server publishes no usable key"
            raise JwksUnavailable(reason, self._seconds_to_refresh())
        found = self._find(kid)
        if found or kid in self._retired or kid in self._unusable:
            return self._build(found, kid, alg)
        if self._fetched_at is not None and self.clock() - self._fetched_at >= self.refresh_interval:
            await self._refresh(stale_before=self.clock() - self.refresh_interval)
            found = self._find(kid)
            if found or self._failure is None:
                return self._build(found, kid, alg)  # the keys just fetched lack it: the token's fault
        # Perhaps a key the issuer rotated in: not judged until a refresh may tell.
        raise JwksUnavailable(UNAVAILABLE if self._failure else THROTTLED, self._seconds_to_refresh())

    def thumbprint(self, kid: str | None, alg: str) -> str | None:
        """What names the key `key` returns now for `kid` and `alg` (its JWK, canonical), without fetching; None
        when none is held. A token verified with a key whose thumbprint is gone is verified again."""
        return self._built[(kid, alg)][1] if self._build(self._find(kid), kid, alg) is not None else None

    def _seconds_to_refresh(self) -> int:
        """Whole seconds until a token may make the keys be fetched again (at least 1: a `Retry-After`)."""
        if self._fetched_at is None:
            return 1
        interval = self.refresh_interval if self._keys else min(self.refresh_interval, NO_KEYS_RETRY)
        return max(1, math.ceil(self._fetched_at + interval - self.clock()))

    def _due_for_every_token(self) -> float | None:
        """`stale_before` of a refresh any token triggers now (none fetched yet, the keys past `max_age`, or none
        held and the retry due); None when no such refresh is due."""
        now = self.clock()
        if self._fetched_at is None or now - self._fetched_at >= self.max_age:
            return now
        retry = min(self.refresh_interval, NO_KEYS_RETRY)
        if not self._keys and now - self._fetched_at >= retry:
            return now - retry
        return None

    def _find(self, kid: str | None) -> list[dict[str, Any]]:
        """The keys a token's `kid` names; without one, every key (`_build` takes one only if it alone fits)."""
        if kid is not None:
            return self._keys.get(kid, [])
        return [jwk for listed in self._keys.values() for jwk in listed]

    def _build(self, candidates: list[dict[str, Any]], kid: str | None, alg: str) -> jwt.PyJWK | None:
        """The first candidate that fits `alg` (never an HS256 or ES256 token verified with an RSA key); for a
        token without `kid`, the only one that fits (of several, which one signed would be a guess)."""
        fitting = [jwk for jwk in candidates if _fits(jwk, alg)]
        if not fitting or (kid is None and len(fitting) > 1):
            return None
        held = self._built.get((kid, alg))
        if held is not None:
            return held[0]
        for jwk in fitting:
            try:
                built = jwt.PyJWK(jwk, algorithm=alg)
            except jwt.PyJWTError:
                continue
            self._built[(kid, alg)] = (built, json.dumps(jwk, sort_keys=True))
            return built
        return None

    async def _refresh(self, stale_before: float) -> None:
        """Refresh unless one ended after `stale_before`: the first token to need it fetches, the others wait for
        that fetch at most `timeout` from their arrival (then `JwksUnavailable`), and one cut off is fetched anew
        (single_flight.py). Its outcome is recorded, not raised: `key` reads it. The fetch is shielded
        (`_run_refresh`), so a waiter that fetches anew may wait up to `timeout` past its own wait, not less."""
        await self._refreshes.get(KEY_SET, self._run_refresh, ready=lambda: self._fetched_after(stale_before))

    def _fetched_after(self, stale_before: float) -> float | None:
        """When the last refresh recorded its outcome, if after `stale_before`."""
        return self._fetched_at if self._fetched_at is not None and self._fetched_at > stale_before else None

    async def _run_refresh(self) -> float:
        """Fetch the keys within `timeout` in all and record the outcome, a failure of any kind too (an unreachable
        issuer is asked again only after the interval); when it was recorded. A cancelled caller does not cut it
        short (shielded); only the gateway's stop does, and then it records nothing."""
        where = mask_url(self.jwks_url or self.issuer)
        try:
            with anyio.CancelScope(shield=True), anyio.fail_after(self.timeout):
                url, keys, unusable = await self._fetch()
        except TimeoutError:
            return self._failed(
                f"fetching the issuer's keys from {where} failed: no whole answer within {self.timeout:g}s "
                f"for discovery and keys together ({TIMEOUT_SETTING})"
            )
        except JwksUnavailable as exc:
            return self._failed(str(exc))
        except Exception as exc:  # unforeseen (httpx2.InvalidURL, OverflowError): still a failure that counts
            reason = f"fetching the issuer's keys from {where} failed: {type(exc).__name__}: {exc}"
            return self._failed(self._masked(reason))
        return self._store(url, keys, unusable)

    def _failed(self, reason: str) -> float:
        at = self._fetched_at = self.clock()
        self._failure = reason
        logger.warning("auth: %s", reason)  # the detail for the operator; the client hears UNAVAILABLE
        if self._keys:
            logger.warning("auth: refreshing the issuer's keys failed, keeping the %d known", _count(self._keys))
        return at

    def _store(self, url: str, keys: Keys, unusable: frozenset[str]) -> float:
        at = self._fetched_at = self.clock()
        self._failure = None
        self.jwks_url = url  # discovered: kept only once its keys came
        self._unusable = unusable
        if keys != self._keys:
            self._retire([kid for kid in self._keys if kid is not None and kid not in keys])
            self._keys = keys
            self._built = {}
            self.generation += 1
        if not keys:
            logger.warning("auth: the issuer's JWKS holds no key the gateway can use (RSA, EC or OKP)")
        return at

    def _retire(self, dropped: list[str]) -> None:
        """Remember key ids the issuer no longer publishes (the oldest forgotten past `RETIRED_KIDS`); one it
        publishes again is held, and found before this is asked."""
        for kid in dropped:
            self._retired[kid] = None
            self._retired.move_to_end(kid)
        while len(self._retired) > RETIRED_KIDS:
            self._retired.popitem(last=False)

    async def _fetch(self) -> tuple[str, Keys, frozenset[str]]:
        """The JWKS's URL (configured, or discovered now), its usable keys, and the key ids it lists with none."""
        url = self.jwks_url
        try:
            async with httpx2.AsyncClient(
                timeout=self.timeout, follow_redirects=False, verify=await client_context()
            ) as client:
                url = self.jwks_url or await self._discover(client)
                answer = await fetch(client, "GET", url, self.timeout)
                if not 200 <= answer.status < 300:
                    raise JwksUnavailable(
                        f"fetching the issuer's keys from {mask_url(url)} failed: HTTP {answer.status}"
                    )
                document = answer.json()
        except (httpx2.HTTPError, ValueError) as exc:
            reason = f"fetching the issuer's keys{_from(exc)} failed: {type(exc).__name__}: {exc}"
            raise JwksUnavailable(self._masked(reason, _url_of(exc))) from None
        except AnswerUnread as exc:
            where = mask_url(url or self.issuer)
            raise JwksUnavailable(f"fetching the issuer's keys from {where} failed: {exc}") from None
        keys = document.get("keys") if isinstance(document, dict) else None
        if not isinstance(keys, list):
            raise JwksUnavailable(f"{mask_url(url)}: not a JWKS (no `keys` list)")
        usable = usable_keys(keys)
        for kid in exposed_kids(keys):
            logger.warning(
                "auth: the issuer's JWKS publishes the private part of key %s: anyone can sign tokens with it, so it "
                "verifies none (rotate it at the issuer)",
                repr(kid)[:80],
            )
        logger.info("auth: %d signing keys from %s", _count(usable), mask_url(url))
        listed = {str(jwk["kid"]) for jwk in keys if isinstance(jwk, dict) and isinstance(jwk.get("kid"), str)}
        return url, usable, frozenset(listed - usable.keys())

    def _masked(self, text: str, *urls: str | None) -> str:
        """`text` without the credentials any of the URLs involved carries (`user:password@`, a secret-named query
        parameter): an httpx error quotes its URL whole, and this text is logged every few seconds. The URLs are
        masked where they appear whole; their credentials of 8 characters or more wherever else they appear (a
        shorter one, such as a user name, may be an ordinary word of the message)."""
        involved = [url for url in (self.issuer, self.jwks_url, *urls) if url]
        for url in sorted(set(involved), key=len, reverse=True):
            text = text.replace(url, mask_url(url))
        return redact(text, with_escaped_forms((v for url in involved for v in url_credentials(url)), min_length=8))

    async def _discover(self, client: httpx2.AsyncClient) -> str:
        """`jwks_uri` from the issuer's metadata: RFC 8414 first, then OpenID Connect discovery. A URL answering
        anything but this issuer's metadata with a `jwks_uri` (an HTML page, `{}`, another issuer's) is passed
        over for the next: `JwksUnavailable` with each one's reason only when none has it."""
        reasons = []
        for url in metadata_urls(self.issuer):
            try:
                answer = await fetch(client, "GET", url, self.timeout)
            except AnswerUnread as exc:
                reasons.append(f"{mask_url(url)}: {exc}")
                continue
            jwks_uri, reason = self._jwks_uri(answer)
            if jwks_uri is not None:
                return jwks_uri
            reasons.append(f"{mask_url(url)}: {reason}")
        raise JwksUnavailable(
            self._masked(f"no metadata with a jwks_uri for issuer {self.issuer} ({'; '.join(reasons)})")
        )

    def _jwks_uri(self, answer: Answer) -> tuple[str | None, str]:
        """The `jwks_uri` of a metadata answer that is this issuer's, else None and why not."""
        if answer.status != 200:
            return None, f"HTTP {answer.status}"
        try:
            metadata = answer.json()
        except ValueError:
            return None, "not JSON"
        if not isinstance(metadata, dict):
            return None, "not a JSON object"
        said = metadata.get("issuer")
        if said != self.issuer:  # a trailing slash too: tokens carry exactly what the metadata says
            return None, (
                f"its `issuer` is {str(said)[:200]!r}, not {self.issuer!r} (auth.incoming.oauth.issuer must be "
                "exactly the issuer's)"
            )
        jwks_uri = metadata.get("jwks_uri")
        if not isinstance(jwks_uri, str):
            return None, "no `jwks_uri`"
        return jwks_uri, ""


def usable_keys(listed: list[Any]) -> Keys:
    """The JWKS's keys of a type a token may be signed with, by `kid`; one whose `kid` is not a string (a list
    would not even be a dict key) is skipped."""
    usable: Keys = {}
    for jwk in listed:
        if not isinstance(jwk, dict) or jwk.get("kty") not in KEY_TYPES.values() or PRIVATE_MEMBER in jwk:
            continue
        kid = jwk.get("kid")
        if kid is None or isinstance(kid, str):
            usable.setdefault(kid, []).append(jwk)
    return usable


def _fits(jwk: dict[str, Any], alg: str) -> bool:
    """A signing key of the family `alg` needs, and not one its own `alg` reserves for another."""
    return KEY_TYPES.get(alg[:2]) == jwk.get("kty") and jwk.get("alg", alg) == alg and jwk.get("use", "sig") == "sig"


def exposed_kids(listed: list[Any]) -> list[object]:
    """The `kid` of each listed key that carries its private part."""
    return [jwk.get("kid") for jwk in listed if isinstance(jwk, dict) and PRIVATE_MEMBER in jwk]


def _count(keys: Keys) -> int:
    return sum(len(listed) for listed in keys.values())


def _from(exc: Exception) -> str:
    """` from <url>`: the request that failed, when the error knows it (one made without a request does not)."""
    url = _url_of(exc)
    return f" from {mask_url(url)}" if url else ""


def _url_of(exc: Exception) -> str | None:
    try:
        return str(exc.request.url) if isinstance(exc, httpx2.HTTPError) else None
    except RuntimeError:  # raised by `request` when the error was made without one
        return None


def metadata_urls(issuer: str) -> list[str]:
    parts = urlsplit(issuer)
    path = parts.path.rstrip("/")
    origin = f"{parts.scheme}://{parts.netloc}"
    return [
        f"{origin}/.well-known/oauth-authorization-server{path}",
        f"{origin}{path}/.well-known/openid-configuration",
        f"{origin}/.well-known/openid-configuration{path}",
    ]
