"""The TLS context of the gateway's outgoing HTTPS clients, made once per trust setting, off the event loop.

httpx makes a context for every client unless given one (`verify=`), and making one parses the CA bundle: 80-260
ms of CPU on a busy host, on the event loop, for every HTTP backend session (a client declaring sampling gets
sessions of its own: one per MCP session, without limit) and every token request. `client_context()` makes it in
a worker thread the first time and hands the same context to every client after that: an `ssl.SSLContext` is
made to be shared by the connections it wraps, and no client of ours changes it (none passes `cert=`).

The trust setting is the one httpx reads: `SSL_CERT_FILE`, else `SSL_CERT_DIR`, else the system's CAs. A context
is kept per setting (the variables' values); one that cannot be made (a bundle that does not exist, or holds no
certificate) is not kept, and its error (`FileNotFoundError`, `ssl.SSLError`) reaches the caller as httpx's
own did, for backends/errors.py to name the variable and the file.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading

import anyio
import httpx2

logger = logging.getLogger(__name__)

# (SSL_CERT_FILE, SSL_CERT_DIR) as httpx reads them: an empty value is unset.
TrustSetting = tuple[str | None, str | None]

_contexts: dict[TrustSetting, ssl.SSLContext] = {}
_making = threading.Lock()  # one thread makes a setting's context; the others wait for it, not make their own


def trust_setting() -> TrustSetting:
    return os.environ.get("SSL_CERT_FILE") or None, os.environ.get("SSL_CERT_DIR") or None


async def client_context() -> ssl.SSLContext:
    """The context for `httpx2.AsyncClient(verify=...)` under the current trust setting; made in a worker thread
    the first time only."""
    setting = trust_setting()
    made = _contexts.get(setting)
    if made is not None:
        return made
    return await anyio.to_thread.run_sync(_made_once, setting)


def _made_once(setting: TrustSetting) -> ssl.SSLContext:
    with _making:
        made = _contexts.get(setting)
        if made is None:
            # httpx's own default (it reads the variables itself, as every client it made did).
            made = _contexts[setting] = httpx2.create_ssl_context()
            logger.info("TLS context for outgoing HTTPS made: %s", _describe(setting))
        return made


def _describe(setting: TrustSetting) -> str:
    cert_file, cert_dir = setting
    if cert_file is not None:
        return f"CAs from SSL_CERT_FILE ({cert_file})"
    if cert_dir is not None:
        return f"CAs from SSL_CERT_DIR ({cert_dir})"
    return "the system's CAs"
