"""One catalogue from many backends: names, conflicts, filters, and the routing table."""

from vmcp_opt.aggregation.catalog import (
    BackendSource,
    Catalog,
    RoutedPrompt,
    RoutedResource,
    RoutedTemplate,
    RoutedTool,
    build_catalog,
)
from vmcp_opt.aggregation.live import LiveCatalog, catalog_of

__all__ = [
    "BackendSource",
    "Catalog",
    "LiveCatalog",
    "RoutedPrompt",
    "RoutedResource",
    "RoutedTemplate",
    "RoutedTool",
    "build_catalog",
    "catalog_of",
]
