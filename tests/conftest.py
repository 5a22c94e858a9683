"""Every test, and every gateway or `vmcp` process a test starts (they inherit the environment), keeps its
state (indexes, usage history) in a temporary data directory, never in the user's own."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True, scope="session")
def private_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VMCP_DATA_DIR", str(tmp_path_factory.mktemp("vmcp-data")))
        yield
