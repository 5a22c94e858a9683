"""Every test, and every gateway or `vmcp` process a test starts (they inherit the environment), keeps its
state (indexes, usage history) in a temporary data directory, never in the user's own.

The ONNX export of the embedding model is a cache keyed by the model's content, not state: tests share the
user's (`scripts/setup.sh` fills it with `vmcp models export`), so a run does not export the model again
(about a minute on a busy machine); when it is missing, the first gateway or test that needs it makes it.

In this process (not in the gateways it starts, which run as shipped), the default TLS context of httpx2 is made
once per CA setting, not for every client: loading the CA bundle is ~30 ms of CPU, and the tests make thousands
of clients (each `httpx2.get`, each SDK client), a quarter of a typical end-to-end file's time."""

from __future__ import annotations

import functools
import os
import ssl
from collections.abc import Iterator

import httpcore2
import httpcore2._ssl
import pytest

from vmcp_opt.optimizer.embedding import default_model_cache


@pytest.fixture(autouse=True, scope="session")
def private_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VMCP_DATA_DIR", str(tmp_path_factory.mktemp("vmcp-data")))
        if "VMCP_OPTIMIZER__MODEL_CACHE" not in os.environ:
            patch.setenv("VMCP_OPTIMIZER__MODEL_CACHE", str(default_model_cache()))
        yield


@pytest.fixture(autouse=True, scope="session")
def one_default_tls_context() -> Iterator[None]:
    """httpx2's default context, shared: nothing here changes it after it is made (no client passes `cert=`,
    which would load a chain into it; httpcore2 sets its ALPN, the same `http/1.1` for every client, as none uses
    HTTP/2). Keyed by the variables it reads, so a test that sets them gets a context of its own."""
    made = httpcore2._ssl.default_ssl_context

    @functools.cache
    def made_for(trust_env: bool, cert_file: str | None, cert_dir: str | None) -> ssl.SSLContext:
        return made(_trust_env=trust_env)

    def shared(*, _trust_env: bool = True) -> ssl.SSLContext:
        return made_for(_trust_env, os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(httpcore2, "default_ssl_context", shared)
        patch.setattr(httpcore2._ssl, "default_ssl_context", shared)
        yield
