"""Every test, and every gateway or `vmcp` process a test starts (they inherit the environment), keeps its
state (indexes, usage history) in a temporary data directory, never in the user's own.

The ONNX export of the embedding model is a cache keyed by the model's content, not state: tests share the
user's (`scripts/setup.sh` fills it with `vmcp models export`), so a run does not export the model again
(about a minute on a busy machine); when it is missing, the first gateway or test that needs it makes it. Tests
that only need an export take `real_export`: one export per machine, made under a lock, so the two xdist workers
(or two runs) of a fresh machine do not each pay for it. Tests whose point is an export (its recipe, where it
goes, a broken one made again) export into caches of their own.

In this process (not in the gateways it starts, which run as shipped), the default TLS context of httpx2 is made
once per CA setting, not for every client: loading the CA bundle is ~30 ms of CPU, and the tests make thousands
of clients (each `httpx2.get`, each SDK client), a quarter of a typical end-to-end file's time."""

from __future__ import annotations

import fcntl
import functools
import hashlib
import os
import ssl
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpcore2
import httpcore2._ssl
import pytest

from vmcp_opt.optimizer.embedding import default_model_cache
from vmcp_opt.optimizer.model_registry import DEFAULT_MODEL, resolve_model
from vmcp_opt.optimizer.onnx_export import ensure_onnx_model


@pytest.fixture(autouse=True, scope="session")
def private_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VMCP_DATA_DIR", str(tmp_path_factory.mktemp("vmcp-data")))
        if "VMCP_OPTIMIZER__MODEL_CACHE" not in os.environ:
            patch.setenv("VMCP_OPTIMIZER__MODEL_CACHE", str(default_model_cache()))
        yield


@pytest.fixture(scope="session")
def real_export(private_data_dir: None) -> Path:
    """This machine's export of the default model (its directory) in the run's cache, marked in use by this
    process. The lock is machine-wide, keyed by the cache: a worker that finds the other exporting waits and
    then finds the export made (the cache's key is the model's content, the recipe and onnxruntime's version)."""
    cache = Path(os.environ["VMCP_OPTIMIZER__MODEL_CACHE"])
    key = hashlib.sha256(str(cache.resolve()).encode()).hexdigest()[:16]
    with open(Path(tempfile.gettempdir()) / f"vmcp-tests-export-{key}.lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when closed
        return ensure_onnx_model(resolve_model(DEFAULT_MODEL), cache, "int8").parent


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
