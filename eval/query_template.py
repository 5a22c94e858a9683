"""A template around each text the vector arm embeds (fifteenth round, eval/README.md): eval only.

Tool documents describe APIs ("Get the 5-day forecast for a city"), requests ask for something ("what's the
weather in Paris"). `TemplatedQueries` wraps the embedder an `OptimizerMethod` hands its `ToolIndex` and
embeds every query text through `template` (its `{query}` replaced by the text), so the request reads more
like a description; the keyword arm still reads the request as written (it never sees the embedder).
Templated texts are plain strings, so the shared query cache (keyed by text) stays right across variants.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

# Not an OptimizerConfig field: eval/methods.py pops it and wraps the embedder in `TemplatedQueries`.
QUERY_TEMPLATE = "query_template"
API_TEMPLATE = "API to {query}"  # the dev split's best, run once on the held-out sets


class TemplatedQueries:
    """An embedder whose `encode_queries` embeds each text through a template; everything else delegates."""

    def __init__(self, inner: Any, template: str) -> None:
        if template.count("{query}") != 1:
            raise ValueError(f"a query template holds {{query}} once: {template!r}")
        self.inner = inner
        self.template = template

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def encode_queries(self, texts: Sequence[str]) -> np.ndarray:
        return np.asarray(self.inner.encode_queries([self.template.replace("{query}", text) for text in texts]))


def templated(embedder: Any, template: str | None) -> Any:
    """`embedder` itself when no template is set, else wrapped in `TemplatedQueries`."""
    return embedder if template is None else TemplatedQueries(embedder, template)
