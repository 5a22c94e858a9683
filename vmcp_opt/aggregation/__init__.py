"""One catalogue from many backends: names, conflicts, filters, and the routing table."""

from vmcp_opt.aggregation.catalog import (
    BackendSource,
    Catalog,
    ConflictError,
    RoutedPrompt,
    RoutedResource,
    RoutedTemplate,
    RoutedTool,
    build_catalog,
)

__all__ = [
    "BackendSource",
    "Catalog",
    "ConflictError",
    "RoutedPrompt",
    "RoutedResource",
    "RoutedTemplate",
    "RoutedTool",
    "build_catalog",
]
