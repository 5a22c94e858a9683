"""A per-caller policy's find_tool searches (`ToolIndex.search(names=…)`, what a Cedar policy gives) do not keep
replaced catalogues in memory: the masks made for them held each snapshot alive, so a backend announcing a
new tool set every second kept the last 256 catalogues (+780 MiB at 1,500 tools each, measured)."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

from vmcp_opt.config import OptimizerConfig
from vmcp_opt.optimizer.documents import ToolRecord
from vmcp_opt.optimizer.index import ToolIndex


def catalogue(round_: int) -> list[ToolRecord]:
    return [
        ToolRecord(name=f"tool_{round_}_{i}", backend="churn", description=f"Weather report number {i}")
        for i in range(50)
    ]


def test_name_filtered_searches_do_not_keep_replaced_catalogues_alive(tmp_path: Path) -> None:
    index = ToolIndex(OptimizerConfig(), tmp_path)  # keywords only: the masks need no model
    served: list[weakref.ref[object]] = []
    for round_ in range(30):
        records = catalogue(round_)
        index.update_keywords(records)
        served.append(weakref.ref(index._snapshot))
        # The caller's usable set is a new object for each catalogue (routing/views.py makes it per catalogue).
        usable = frozenset(record.name for record in records)
        hits = index.search("weather report", limit=3, names=usable).hits
        assert hits and all(hit.record.name in usable for hit in hits)
    gc.collect()
    alive = [i for i, ref in enumerate(served) if ref() is not None]
    assert alive == [29], f"replaced catalogues still in memory: {alive[:-1]}"
