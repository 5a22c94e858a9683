"""A rebuild that moves a served name to another backend while its holder still lists it, said as a warning.

Who serves a clashing name is decided from the current listings alone (priority, then config order), at start and
at every rebuild: every replica with the same config and backends routes it alike, and a restart changes nothing.
The price: a backend earlier in that order that starts listing a name another backend serves (a tool name its
prefix can also make, a resource URI, a URI template, a prompt under `priority`) takes it, and the calls or reads
its callers send. Keeping a name with its first holder was tried (`4f70102`); it made routing depend on the
order in which things happened to each process, so replicas routed one name to two backends. Such a move is
therefore said loudly here, naming the name and both backends, so an operator sees it and can pin the name
(an override, `priority`, or `include`/`exclude`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence

from vmcp_opt.aggregation.catalog import BackendSource, Catalog
from vmcp_opt.display import shorten

logger = logging.getLogger(__name__)

# Moves named one by one in one rebuild; the rest are counted (a backend may relist thousands of URIs).
MOVES_LOGGED = 5


def warn_moves(before: Catalog, after: Catalog, sources: Sequence[BackendSource]) -> int:
    """Warn of each name or URI `after` serves from another backend than `before` did although the backend
    serving it before still lists it. Returns how many moved."""
    listed = {source.name: source for source in sources}
    moves = [
        *_moved("tool", _tools(before), _tools(after), listed, _tool_names),
        *_moved("prompt", _prompts(before), _prompts(after), listed, _prompt_names),
        *_moved("resource", _resources(before), _resources(after), listed, _resource_uris),
        *_moved("resource template", _templates(before), _templates(after), listed, _template_texts),
    ]
    for kind, name, old, new in moves[:MOVES_LOGGED]:
        logger.warning(
            "%s '%s' moved from backend '%s' to backend '%s', which lists it too and comes first in priority "
            "(then config) order: calls to it now reach '%s'. If that is not meant, pin it (an override renaming "
            "one of them, aggregation.priority, or an include/exclude filter)",
            kind,
            shorten(name),
            old,
            new,
            new,
        )
    if len(moves) > MOVES_LOGGED:
        logger.warning("%d more names moved to another backend in this rebuild", len(moves) - MOVES_LOGGED)
    return len(moves)


def _moved(
    kind: str,
    before: Mapping[str, tuple[str, str]],
    after: Mapping[str, tuple[str, str]],
    listed: Mapping[str, BackendSource],
    names_of: Callable[[BackendSource], frozenset[str]],
) -> Iterable[tuple[str, str, str, str]]:
    """(kind, name, old backend, new backend) for each name whose backend changed while the old one lists it
    (`names_of`: a backend's own names of this kind)."""
    still: dict[str, frozenset[str]] = {}
    for name, (new_backend, _) in after.items():
        held = before.get(name)
        if held is None or held[0] == new_backend or held[0] not in listed:
            continue
        old_backend, old_own = held
        if old_backend not in still:
            still[old_backend] = names_of(listed[old_backend])
        if old_own in still[old_backend]:
            yield kind, name, old_backend, new_backend


# Exposed name (URI) -> (backend, the backend's own name for it), per kind.
def _tools(catalog: Catalog) -> dict[str, tuple[str, str]]:
    return {name: (t.backend, t.original_name) for name, t in catalog.tools.items()}


def _prompts(catalog: Catalog) -> dict[str, tuple[str, str]]:
    return {name: (p.backend, p.original_name) for name, p in catalog.prompts.items()}


def _resources(catalog: Catalog) -> dict[str, tuple[str, str]]:
    return {uri: (r.backend, uri) for uri, r in catalog.resources.items()}


def _templates(catalog: Catalog) -> dict[str, tuple[str, str]]:
    return {t.template.uri_template: (t.backend, t.template.uri_template) for t in catalog.templates}


def _tool_names(source: BackendSource) -> frozenset[str]:
    return frozenset(tool.name for tool in source.listing.tools)


def _prompt_names(source: BackendSource) -> frozenset[str]:
    return frozenset(prompt.name for prompt in source.listing.prompts)


def _resource_uris(source: BackendSource) -> frozenset[str]:
    return frozenset(str(resource.uri) for resource in source.listing.resources)


def _template_texts(source: BackendSource) -> frozenset[str]:
    return frozenset(template.uri_template for template in source.listing.resource_templates)
