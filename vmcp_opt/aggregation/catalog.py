"""The merged view: every backend's tools, prompts, resources and templates, with where each routes.

A rebuild is given the catalogue it replaces: a name or URI it served stays with its backend while that backend
lists it (conflicts.py says why); the first build decides by priority, then config order.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import mcp_types as types
from mcp.shared.uri_template import InvalidUriTemplate, UriTemplate

from vmcp_opt.aggregation.conflicts import Candidate, ConflictResolver, Shadowed, held_elsewhere, unheld
from vmcp_opt.aggregation.filters import select_tools, warn_unmatched
from vmcp_opt.aggregation.screening import Drops, screen_prompts, screen_templates, screen_tools
from vmcp_opt.backends.listing import BackendListing
from vmcp_opt.config import AggregationConfig
from vmcp_opt.display import shorten

logger = logging.getLogger(__name__)

__all__ = ["BackendSource", "Catalog", "build_catalog"]


@dataclass(frozen=True)
class BackendSource:
    name: str
    listing: BackendListing
    description: str = ""


@dataclass(frozen=True)
class RoutedTool:
    name: str
    backend: str
    original_name: str
    tool: types.Tool  # as exposed: our name, the override's description


@dataclass(frozen=True)
class RoutedPrompt:
    name: str
    backend: str
    original_name: str
    prompt: types.Prompt


@dataclass(frozen=True)
class RoutedResource:
    uri: str
    backend: str
    resource: types.Resource


@dataclass(frozen=True)
class RoutedTemplate:
    backend: str
    template: types.ResourceTemplate
    matcher: UriTemplate | None


@dataclass
class Catalog:
    tools: dict[str, RoutedTool] = field(default_factory=dict)
    prompts: dict[str, RoutedPrompt] = field(default_factory=dict)
    resources: dict[str, RoutedResource] = field(default_factory=dict)
    templates: list[RoutedTemplate] = field(default_factory=list)
    backend_descriptions: dict[str, str] = field(default_factory=dict)  # every backend it was built from
    # Kind ("tool", "prompt", "resource", "resource template") -> exposed name or URI -> the backend holding it:
    # what this catalogue serves, and what a backend missing from it (down) served last, kept for its return.
    held: dict[str, dict[str, str]] = field(default_factory=dict)
    # Every backend some build so far was made from: one outside it is new, and claims its names as at start.
    seen: frozenset[str] = frozenset()

    def route_resource(self, uri: str) -> str | None:
        """The backend that serves `uri`: a listed resource first, then the first matching template."""
        if uri in self.resources:
            return self.resources[uri].backend
        matched = self.matching_template(uri)
        return matched.backend if matched is not None else None

    def matching_template(self, uri: str) -> RoutedTemplate | None:
        """The first template `uri` matches, when it is not a listed resource (then it routes by the template)."""
        if uri in self.resources:
            return None
        return next((t for t in self.templates if t.matcher is not None and t.matcher.match(uri) is not None), None)

    def template_named(self, uri_template: str) -> RoutedTemplate | None:
        """The template whose text is `uri_template` (a client may send it as it is listed)."""
        return next((t for t in self.templates if t.template.uri_template == uri_template), None)


def build_catalog(
    sources: Sequence[BackendSource], config: AggregationConfig, previous: Catalog | None = None
) -> Catalog:
    """Merge the backends' listings. Never raises on what a backend lists: a tool that cannot be served
    (screening.py) or whose name another backend holds is dropped with a warning, the rest is served.
    `previous`: the catalogue this one replaces, whose holders keep what they still list (None at start)."""
    shadowed = Shadowed()
    resolver = ConflictResolver(config, [source.name for source in sources], shadowed)
    catalog = Catalog(backend_descriptions={s.name: s.description for s in sources})
    before = previous.held if previous is not None else {}
    newcomers = {s.name for s in sources} - (previous.seen if previous is not None else frozenset())
    drops = Drops()

    tool_candidates = []
    for source in sources:
        screened, rules = screen_tools(source.name, source.listing.tools, drops), config.tools.get(source.name)
        warn_unmatched(source.name, screened, rules)
        tool_candidates += [
            Candidate(source.name, original_name, tool.name, renamed, (original_name, tool))
            for original_name, tool, renamed in select_tools(screened, rules)
        ]
    for name, candidate in resolver.resolve(tool_candidates, "tool", drops, before.get("tool"), newcomers).items():
        original_name, tool = candidate.item
        exposed = tool if tool.name == name else tool.model_copy(update={"name": name})
        catalog.tools[name] = RoutedTool(name, candidate.backend, original_name, exposed)

    prompt_candidates = [
        Candidate(source.name, prompt.name, prompt.name, False, prompt)
        for source in sources
        for prompt in screen_prompts(source.name, source.listing.prompts, drops)
    ]
    for name, prompt_candidate in resolver.resolve(
        prompt_candidates, "prompt", drops, before.get("prompt"), newcomers
    ).items():
        prompt = prompt_candidate.item
        exposed_prompt = prompt if prompt.name == name else prompt.model_copy(update={"name": name})
        catalog.prompts[name] = RoutedPrompt(name, prompt_candidate.backend, prompt.name, exposed_prompt)

    listed = [(source.name, resource) for source in sources for resource in source.listing.resources]
    listed.sort(key=lambda pair: resolver.order(False, pair[0]))  # stable: a backend's own order is kept
    position = {id(pair): i for i, pair in enumerate(listed)}
    placed: dict[str, int] = {}  # URI -> where its resource stands in priority order: resources/list's order
    held_uris = unheld(before.get("resource", {}), ((b, r.uri) for b, r in listed), newcomers)
    for pair in _holders_first(listed, held_uris, resolver, lambda r: r.uri):
        backend, resource = pair
        holder = catalog.resources.get(resource.uri)
        if holder is None:
            catalog.resources[resource.uri] = RoutedResource(resource.uri, backend, resource)
            placed[resource.uri] = position[id(pair)]
        elif held_uris.get(resource.uri) == holder.backend != backend:
            drops.add(backend, resource.uri, held_elsewhere("resource", resource.uri, holder.backend), "resource")
        else:
            shadowed.served_twice(backend, "resource", resource.uri, holder.backend)
    templates = [
        (source.name, template)
        for source in sources
        for template in screen_templates(source.name, source.listing.resource_templates, drops)
    ]
    catalog.resources = {uri: catalog.resources[uri] for uri in sorted(catalog.resources, key=placed.__getitem__)}
    held_templates = unheld(before.get("resource template", {}), ((b, t.uri_template) for b, t in templates), newcomers)
    template_holders: dict[str, str] = {}  # URI template -> the backend serving it
    for backend, template in _holders_first(templates, held_templates, resolver, lambda t: t.uri_template):
        holder_name = template_holders.get(template.uri_template)
        if holder_name is not None and held_templates.get(template.uri_template) == holder_name != backend:
            reason = held_elsewhere("resource template", template.uri_template, holder_name)
            drops.add(backend, template.name, reason, "resource template")
        else:
            _add_template(catalog, template_holders, backend, template, shadowed)
    drops.log()
    shadowed.log()
    catalog.held = _held(catalog, template_holders, before)
    catalog.seen = (previous.seen if previous is not None else frozenset()) | {s.name for s in sources}
    return catalog


ListedT = TypeVar("ListedT", types.Resource, types.ResourceTemplate)


def _holders_first(
    listed: list[tuple[str, ListedT]],
    held: Mapping[str, str],
    resolver: ConflictResolver,
    key: Callable[[ListedT], str],
) -> Iterable[tuple[str, ListedT]]:
    """(backend, item) pairs, what a backend held in the previous build first, then priority (config) order;
    a backend's own items keep their order (the first of two equal URIs is kept)."""
    return sorted(listed, key=lambda pair: resolver.order(held.get(key(pair[1])) == pair[0], pair[0]))


def _held(
    catalog: Catalog, template_holders: dict[str, str], before: Mapping[str, Mapping[str, str]]
) -> dict[str, dict[str, str]]:
    """Who holds what after this build: what it serves, then what backends missing from it (down) held
    before, so that a holder back with the name gets it back rather than whoever served it meanwhile."""
    serving = {
        "tool": {name: t.backend for name, t in catalog.tools.items()},
        "prompt": {name: p.backend for name, p in catalog.prompts.items()},
        "resource": {uri: r.backend for uri, r in catalog.resources.items()},
        "resource template": template_holders,
    }
    present = catalog.backend_descriptions.keys()
    for kind, holders in serving.items():
        holders.update({name: b for name, b in before.get(kind, {}).items() if b not in present})
    return serving


def _add_template(
    catalog: Catalog, holders: dict[str, str], backend: str, template: types.ResourceTemplate, shadowed: Shadowed
) -> None:
    """Like a resource URI, a URI template is served by one backend: the first (priority, then config
    order). Listing a second copy showed clients the same template twice, while reads and completions
    through it went to the first backend alone."""
    holder = holders.get(template.uri_template)
    if holder is not None:
        shadowed.served_twice(backend, "resource template", template.uri_template, holder)
        return
    holders[template.uri_template] = backend
    catalog.templates.append(RoutedTemplate(backend, template, _matcher(template.uri_template)))


def _matcher(uri_template: str) -> UriTemplate | None:
    try:
        return UriTemplate.parse(uri_template)
    except InvalidUriTemplate:
        logger.warning(
            "resource template %r cannot be parsed; reads through it cannot be routed", shorten(uri_template, 200)
        )
        return None
