"""The merged view: every backend's tools, prompts, resources and templates, with where each routes."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import mcp_types as types
from mcp.shared.exceptions import MCPError
from mcp.shared.uri_template import DEFAULT_MAX_URI_LENGTH, InvalidUriTemplate, UriTemplate

from vmcp_opt.aggregation.conflicts import Candidate, ConflictResolver, Shadowed
from vmcp_opt.aggregation.filters import select_tools, warn_unmatched
from vmcp_opt.aggregation.screening import Drops, screen_prompts, screen_templates, screen_tools
from vmcp_opt.aggregation.template_index import MAX_UNANCHORED_TEMPLATES, TemplateIndex, literal_prefix
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


class UriTooLong(MCPError):
    def __init__(self) -> None:
        limit = DEFAULT_MAX_URI_LENGTH
        super().__init__(types.INVALID_PARAMS, f"URI longer than {limit:,} characters", {"max_uri_length": limit})


def uri_too_long(uri: str) -> UriTooLong | None:
    """What a URI nothing serves is told when no template could match it for its length alone (the SDK's
    `UriTemplate.match` refuses it): told "not found", a client would not know why."""
    return UriTooLong() if len(uri) > DEFAULT_MAX_URI_LENGTH else None


@dataclass
class Catalog:
    tools: dict[str, RoutedTool] = field(default_factory=dict)
    # aggregation.tools.<b>.workflow_only: callable by workflows' steps alone (the router's `step_tool`), so
    # kept out of `tools`, which lists, searches, suggests and routes clients' calls.
    workflow_only: dict[str, RoutedTool] = field(default_factory=dict)
    prompts: dict[str, RoutedPrompt] = field(default_factory=dict)
    resources: dict[str, RoutedResource] = field(default_factory=dict)
    templates: list[RoutedTemplate] = field(default_factory=list)
    backend_descriptions: dict[str, str] = field(default_factory=dict)  # every backend it was built from
    # Built from `templates` once they are all in (`index_templates`): trying every template cost seconds a read.
    _template_index: TemplateIndex | None = field(default=None, repr=False, compare=False)
    _templates_by_text: dict[str, RoutedTemplate] = field(default_factory=dict, repr=False, compare=False)

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
        position = self._index().first_match(uri)
        return self.templates[position] if position is not None else None

    def template_named(self, uri_template: str) -> RoutedTemplate | None:
        """The template whose text is `uri_template` (a client may send it as it is listed)."""
        self._index()
        return self._templates_by_text.get(uri_template)

    def index_templates(self) -> None:
        """Index `templates` for routing; called once they are all in (a catalogue is not changed after)."""
        self._template_index = TemplateIndex([t.matcher for t in self.templates])
        self._templates_by_text = {}
        for template in self.templates:
            self._templates_by_text.setdefault(template.template.uri_template, template)

    def _index(self) -> TemplateIndex:
        if self._template_index is None:
            self.index_templates()
        assert self._template_index is not None
        return self._template_index


def build_catalog(sources: Sequence[BackendSource], config: AggregationConfig) -> Catalog:
    """Merge the backends' listings. Never raises on what a backend lists: a tool that cannot be served
    (screening.py) or whose name another backend holds is dropped with a warning, the rest is served."""
    shadowed = Shadowed()
    resolver = ConflictResolver(config, [source.name for source in sources], shadowed)
    catalog = Catalog(backend_descriptions={s.name: s.description for s in sources})
    drops = Drops()

    served: list[Candidate[tuple[str, types.Tool]]] = []
    hidden: list[Candidate[tuple[str, types.Tool]]] = []
    for source in sources:
        screened, rules = screen_tools(source.name, source.listing.tools, drops), config.tools.get(source.name)
        warn_unmatched(source.name, screened, rules)
        for chosen in select_tools(screened, rules):
            item = (chosen.original_name, chosen.tool)
            candidate = Candidate(source.name, chosen.original_name, chosen.tool.name, chosen.renamed, item)
            (hidden if chosen.workflow_only else served).append(candidate)
    catalog.tools = _routed(resolver.resolve(served, "tool", drops))
    # Named apart from the served ones: a hidden tool never takes a served tool's name, so hiding one changes
    # no name clients see. One named like a served tool is dropped (a step naming it gets the served one).
    for name, routed in _routed(resolver.resolve(hidden, "tool", drops)).items():
        if name in catalog.tools:
            drops.add(routed.backend, routed.original_name, _HIDDEN_NAME_TAKEN.format(name=shorten(name)))
        else:
            catalog.workflow_only[name] = routed

    prompt_candidates = [
        Candidate(source.name, prompt.name, prompt.name, False, prompt)
        for source in sources
        for prompt in screen_prompts(source.name, source.listing.prompts, drops)
    ]
    for name, prompt_candidate in resolver.resolve(prompt_candidates, "prompt", drops).items():
        prompt = prompt_candidate.item
        exposed_prompt = prompt if prompt.name == name else prompt.model_copy(update={"name": name})
        catalog.prompts[name] = RoutedPrompt(name, prompt_candidate.backend, prompt.name, exposed_prompt)

    ordered = sorted(sources, key=lambda s: resolver.rank.get(s.name, len(resolver.rank)))
    template_holders: dict[str, str] = {}  # URI template -> the backend serving it
    for source in ordered:
        for resource in source.listing.resources:
            holder = catalog.resources.get(resource.uri)
            if holder is not None:
                shadowed.served_twice(source.name, "resource", resource.uri, holder.backend)
                continue
            catalog.resources[resource.uri] = RoutedResource(resource.uri, source.name, resource)
        unanchored = 0
        for template in screen_templates(source.name, source.listing.resource_templates, drops):
            if not literal_prefix(template.uri_template):
                unanchored += 1
                if unanchored > MAX_UNANCHORED_TEMPLATES:
                    drops.add(source.name, template.name, _UNANCHORED_PAST_BOUND, "resource template")
                    continue
            _add_template(catalog, template_holders, source.name, template, shadowed)
    catalog.index_templates()
    drops.log()
    shadowed.log()
    return catalog


def _routed(owners: dict[str, Candidate[tuple[str, types.Tool]]]) -> dict[str, RoutedTool]:
    """Each resolved tool under the name it is exposed by."""
    routed = {}
    for name, candidate in owners.items():
        original_name, tool = candidate.item
        exposed = tool if tool.name == name else tool.model_copy(update={"name": name})
        routed[name] = RoutedTool(name, candidate.backend, original_name, exposed)
    return routed


_HIDDEN_NAME_TAKEN = "it is workflow_only and exposed as '{name}', a name a served tool already has"

_UNANCHORED_PAST_BOUND = (
    "its URI template begins with a variable, so every URI read would be tried against it, and the backend lists "
    f"more than {MAX_UNANCHORED_TEMPLATES} such templates (the first {MAX_UNANCHORED_TEMPLATES} are kept)"
)


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
