"""Every test, and every gateway or `vmcp` process a test starts (they inherit the environment), keeps its
state (indexes, usage history) in a temporary data directory, never in the user's own.

The ONNX export of the embedding model is a cache keyed by the model's content, not state: tests share the
user's (`scripts/setup.sh` fills it with `vmcp models export`), so a run does not export the model again
(about a minute on a busy machine); when it is missing, the first gateway or test that needs it makes it."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from vmcp_opt.optimizer.embedding import default_model_cache


@pytest.fixture(autouse=True, scope="session")
def private_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VMCP_DATA_DIR", str(tmp_path_factory.mktemp("vmcp-data")))
        if "VMCP_OPTIMIZER__MODEL_CACHE" not in os.environ:
            patch.setenv("VMCP_OPTIMIZER__MODEL_CACHE", str(default_model_cache()))
        yield
