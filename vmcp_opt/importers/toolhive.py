"""A ToolHive vMCP config (stacklok/toolhive `pkg/vmcp/config`, camelCase) as a vmcp-opt config.

Section by section, each a small function that writes what has an equivalent and reports the rest by its ToolHive
path (`Findings`). Secrets are never copied: a literal header value or client secret becomes a reference to an
environment variable the user is told to set, so the output file can be committed. ToolHive's defaults are not
written out: what the file leaves unset takes our defaults (docs/migrating-from-toolhive.md lists where they differ),
except the optimizer, which ToolHive runs only when configured and we run unless told not to.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from vmcp_opt.importers.findings import Findings
from vmcp_opt.importers.toolhive_cedar import authorization
from vmcp_opt.importers.toolhive_sections import SECTIONS, optimizer, set_path
from vmcp_opt.importers.toolhive_workflows import composite_tools

_TRANSPORTS = {"streamable-http": "streamable-http", "http": "streamable-http", "sse": "sse"}
# Keys kept as metadata by ToolHive, with nothing to do here.
_INFORMATIONAL = ("name", "metadata")


@dataclass
class Imported:
    """The converted document, and the workflows left out for a template (written commented out)."""

    config: dict[str, Any]
    left_workflows: list[dict[str, Any]]
    policies: str | None  # Cedar text for the policy file the config names, if any


def convert(document: dict[str, Any], findings: Findings) -> Imported:
    """Our config for a ToolHive one; every key of `document` is either converted or reported."""
    config: dict[str, Any] = {}
    if document.get("groupRef"):  # first: it explains the per-workload items reported after it
        findings.skip(
            "groupRef",
            "workloads of a ToolHive group (or Kubernetes MCPGroup) are not discovered: list "
            "each under `backends` (name, url, transport) in the ToolHive file and import it again",
        )
    handled = {
        "groupRef",
        "backends",
        "outgoingAuth",
        "passthroughHeaders",
        "aggregation",
        "compositeTools",
        "optimizer",
    }
    backends = _backends(document.get("backends") or [], findings)
    _outgoing(document.get("outgoingAuth") or {}, backends, findings)
    _passthrough(document.get("passthroughHeaders") or [], backends)
    if backends:
        config["backends"] = list(backends.values())
    names = _aggregation(document.get("aggregation") or {}, list(backends), config, findings)
    kept, left = composite_tools(document.get("compositeTools") or [], names.resolve, findings)
    if kept:
        config["workflows"] = kept
    optimizer(document.get("optimizer"), config, findings)
    policies = None
    for key, value in document.items():
        if key in handled:
            continue
        if key in _INFORMATIONAL:
            findings.note(key, "informational in ToolHive; not needed here")
        elif key == "incomingAuth":
            policies = _incoming(value or {}, config, findings)
        elif key in SECTIONS:
            SECTIONS[key](value or {}, config, findings)
        elif key == "compositeToolRefs":
            findings.skip(
                key,
                "references to Kubernetes VirtualMCPCompositeToolDefinition resources: copy each "
                "definition into compositeTools",
            )
        else:
            findings.skip(key, "not a ToolHive vMCP setting this importer knows")
    return Imported(config, left, policies)


def _env_name(*parts: str) -> str:
    name = re.sub(r"[^A-Z0-9]+", "_", "_".join(parts).upper()).strip("_")
    return f"BACKEND_{name}" if name.startswith("VMCP_") else name  # VMCP_* would read as one of our settings


# ----- backends and outgoing auth -----


def _backends(entries: list[Any], findings: Findings) -> dict[str, dict[str, Any]]:
    backends: dict[str, dict[str, Any]] = {}
    for index, entry in enumerate(entries):
        path = f"backends[{index}]"
        if not isinstance(entry, dict) or not entry.get("name"):
            findings.skip(path, "a backend needs a name")
            continue
        transport, name = str(entry.get("transport") or "streamable-http"), str(entry["name"])
        backend = {
            "name": name,
            "transport": _TRANSPORTS.get(transport, transport),
            "url": entry.get("url"),
        }
        backends[name] = backend
        for key in sorted(set(entry) - {"name", "url", "transport", "type", "metadata"}):
            why = "trust a CA bundle with SSL_CERT_FILE (for the whole gateway)" if key == "caBundlePath" else "unknown"
            findings.skip(f"{path}.{key}", why)
        if entry.get("type"):
            findings.note(f"{path}.type", "ToolHive's own bookkeeping of where a backend came from; not needed here")
        if entry.get("metadata"):
            findings.note(f"{path}.metadata", "informational in ToolHive; not needed here")
    return backends


def _outgoing(section: dict[str, Any], backends: dict[str, dict[str, Any]], findings: Findings) -> None:
    if section.get("source", "inline") != "inline":
        findings.skip("outgoingAuth.source", "only inline: per-MCPServer externalAuthConfigRef is Kubernetes'")
    strategies = section.get("backends") or {}
    for name, strategy in strategies.items():
        path = f"outgoingAuth.backends.{name}"
        if name not in backends:
            findings.skip(path, f"no backend named {name!r} in `backends` (groupRef workloads are not imported)")
        elif isinstance(strategy, dict):
            _backend_auth(strategy, backends[name], path, findings)
    default = section.get("default")
    if isinstance(default, dict) and default.get("type", "unauthenticated") != "unauthenticated":
        for name, backend in backends.items():
            if name not in strategies:
                _backend_auth(default, backend, "outgoingAuth.default", findings)


def _backend_auth(strategy: dict[str, Any], backend: dict[str, Any], path: str, findings: Findings) -> None:
    kind = strategy.get("type", "unauthenticated")
    if kind == "unauthenticated":
        return
    if kind == "header_injection":
        _header_injection(strategy.get("headerInjection") or {}, backend, f"{path}.headerInjection", findings)
    elif kind == "token_exchange":
        _token_exchange(strategy.get("tokenExchange") or {}, backend, f"{path}.tokenExchange", findings)
    else:
        findings.skip(
            f"{path}.type",
            f"outgoing auth {kind!r} is not supported (none, header_injection and "
            "token_exchange are); the backend is called without it",
        )


def _secret(env: Any, literal: Any, backend: str, what: str, path: str, findings: Findings) -> dict[str, str] | None:
    """A reference to the variable holding a secret; a literal in the ToolHive file is never copied."""
    if env:
        findings.needs(str(env), f"{what} of backend {backend!r}")
        return {"env": str(env)}
    if literal:
        variable = _env_name(backend, what)
        findings.needs(variable, f"{what} of backend {backend!r} (the value written in {path}, not copied)")
        return {"env": variable}
    return None


def _header_injection(config: dict[str, Any], backend: dict[str, Any], path: str, findings: Findings) -> None:
    header = config.get("headerName")
    if not header:
        findings.skip(f"{path}.headerName", "missing; no header sent")
        return
    secret = _secret(
        config.get("headerValueEnv"), config.get("headerValue"), backend["name"], str(header), path, findings
    )
    if secret is not None:
        backend.setdefault("auth", {"type": "header"})["headers"] = {str(header): secret}


def _token_exchange(config: dict[str, Any], backend: dict[str, Any], path: str, findings: Findings) -> None:
    auth: dict[str, Any] = {"type": "token_exchange", "token_url": config.get("tokenUrl")}
    for theirs, ours in (("clientId", "client_id"), ("audience", "audience"), ("scopes", "scopes")):
        if config.get(theirs):
            auth[ours] = config[theirs]
    secret = _secret(
        config.get("clientSecretEnv"), config.get("clientSecret"), backend["name"], "client secret", path, findings
    )
    if secret is not None:
        auth["client_secret"] = secret
    token_type = config.get("subjectTokenType")
    if token_type in ("access_token", "jwt"):
        auth["subject_token_type"] = token_type
    elif token_type:
        findings.skip(f"{path}.subjectTokenType", f"{token_type!r} is not supported (access_token or jwt)")
    if config.get("subjectProviderName"):
        findings.skip(f"{path}.subjectProviderName", "no embedded auth server: the caller's own token is exchanged")
    passthrough = backend.get("auth", {}).get("passthrough_headers")
    backend["auth"] = auth | ({"passthrough_headers": passthrough} if passthrough else {})


def _passthrough(headers: list[Any], backends: dict[str, dict[str, Any]]) -> None:
    """ToolHive's one allowlist for every backend is ours per backend."""
    for backend in backends.values() if headers else ():
        backend.setdefault("auth", {"type": "none"})["passthrough_headers"] = [str(h) for h in headers]


# ----- aggregation -----


class _Names:
    """How a composite step's `workload.tool` is served here: an override's name, else the strategy's."""

    def __init__(self, backends: list[str], prefix_format: str | None, renamed: dict[tuple[str, str], str]) -> None:
        self.backends = backends
        self.prefix_format = prefix_format
        self.renamed = renamed

    def resolve(self, written: str) -> str:
        backend, dot, tool = written.partition(".")
        if not dot or backend not in self.backends:
            return written  # a workflow's name, or already the served name
        if (backend, tool) in self.renamed:
            return self.renamed[(backend, tool)]
        if self.prefix_format is None:
            return tool
        return self.prefix_format.replace("{backend}", backend).replace("{name}", tool)


def _aggregation(section: dict[str, Any], backends: list[str], config: dict[str, Any], findings: Findings) -> _Names:
    strategy = section.get("conflictResolution") or "prefix"
    details = section.get("conflictResolutionConfig") or {}
    aggregation: dict[str, Any] = {"conflict_resolution": strategy}
    prefix_format = None
    if strategy == "prefix":
        written = details.get("prefixFormat") or "{workload}_"
        prefix_format = written.replace("{workload}", "{backend}") + "{name}"
        aggregation["prefix_format"] = prefix_format
    if details.get("priorityOrder"):
        aggregation["priority"] = details["priorityOrder"]
    tools, renamed = _tool_settings(section, backends, findings)
    if tools:
        aggregation["tools"] = tools
    if section:
        config["aggregation"] = aggregation
    for key in sorted(
        set(section)
        - {"conflictResolution", "conflictResolutionConfig", "tools", "excludeAllTools", "defaultToolVisibility"}
    ):
        findings.skip(f"aggregation.{key}", "unknown")
    return _Names(backends, prefix_format, renamed)


def _tool_settings(
    section: dict[str, Any], backends: list[str], findings: Findings
) -> tuple[dict[str, Any], dict[tuple[str, str], str]]:
    tools: dict[str, Any] = {}
    renamed: dict[tuple[str, str], str] = {}
    for index, entry in enumerate(section.get("tools") or []):
        path = f"aggregation.tools[{index}]"
        workload = str((entry or {}).get("workload", ""))
        if workload not in backends:
            findings.skip(path, f"no backend named {workload!r} in `backends` (groupRef workloads are not imported)")
            continue
        converted = _workload_tools(entry, workload, path, renamed, findings)
        if workload in tools:  # ToolHive refuses the file ("duplicate workload configuration")
            findings.skip(
                path,
                f"a second entry for workload {workload!r}, which ToolHive refuses; merged keeping the stricter of "
                "each setting (filters intersected), check it by hand",
            )
            converted = _stricter(tools[workload], converted)
        tools[workload] = converted
    hide_rest = section.get("excludeAllTools") or section.get("defaultToolVisibility") == "deny"
    for backend in backends:
        if section.get("excludeAllTools") or (hide_rest and backend not in tools):
            tools.setdefault(backend, {})["workflow_only"] = ["*"]
    return tools, renamed


def _stricter(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    """Two entries for one workload as one that exposes no tool either would hide: neither is the one meant."""
    merged = second | first  # overrides: the first entry's, as a rename already resolved composite steps
    if "include" in first and "include" in second:
        merged["include"] = [name for name in first["include"] if name in second["include"]]
    if "overrides" in first and "overrides" in second:
        merged["overrides"] = second["overrides"] | first["overrides"]
    return merged


def _workload_tools(
    entry: dict[str, Any], workload: str, path: str, renamed: dict[tuple[str, str], str], findings: Findings
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if entry.get("filter"):
        out["include"] = [re.sub(r"([*?\[])", r"[\1]", str(name)) for name in entry["filter"]]  # names, not globs
    if entry.get("excludeAll"):
        out["workflow_only"] = ["*"]  # hidden from clients, still callable by composite tools: as ToolHive's
    overrides = {}
    for tool, override in (entry.get("overrides") or {}).items():
        override = override or {}
        overrides[tool] = {k: override[k] for k in ("name", "description", "annotations") if override.get(k)}
        if override.get("name"):
            renamed.setdefault((workload, str(tool)), str(override["name"]))  # a duplicate entry's: the first's
    if overrides:
        out["overrides"] = overrides
    if entry.get("toolConfigRef"):
        findings.skip(f"{path}.toolConfigRef", "a Kubernetes MCPToolConfig: copy its filter and overrides here")
    return out


# ----- incoming auth -----


_OIDC = {
    "issuer": "issuer",
    "resource": "resource",
    "jwksUrl": "jwks_url",
    "introspectionUrl": "introspection_url",
    "clientId": "client_id",
    "clientSecretEnv": "client_secret_env",
    "scopes": "scopes_supported",
}


def _incoming(section: dict[str, Any], config: dict[str, Any], findings: Findings) -> str | None:
    kind = section.get("type", "anonymous")
    if kind == "anonymous":
        set_path(config, "auth.incoming.mode", "anonymous")
    elif kind == "oidc":
        set_path(config, "auth.incoming.mode", "oauth")
        _oidc(section.get("oidc") or {}, config, findings)
    else:
        findings.skip(
            "incomingAuth.type",
            f"{kind!r} has no equivalent over HTTP (over stdio, the OS user is the caller); left anonymous",
        )
    for key in sorted(set(section) - {"type", "oidc", "authz"}):
        findings.skip(
            f"incomingAuth.{key}",
            "the embedded authorization server is not supported" if key == "authServer" else "unknown",
        )
    authz = section.get("authz")
    return authorization(authz, config, findings) if authz else None


def _oidc(oidc: dict[str, Any], config: dict[str, Any], findings: Findings) -> None:
    for theirs, ours in _OIDC.items():
        set_path(config, f"auth.incoming.oauth.{ours}", oidc.get(theirs) or None)
    if oidc.get("clientSecretEnv"):
        findings.needs(str(oidc["clientSecretEnv"]), "the gateway's client secret at the authorization server")
    audience = oidc.get("audience")
    if audience and str(audience).rstrip("/") != str(oidc.get("resource", "")).rstrip("/"):
        set_path(config, "auth.incoming.oauth.audiences", [str(audience)])
    if not oidc.get("resource"):
        findings.skip("incomingAuth.oidc.resource", "required here: the URL clients reach the gateway at")
    for key, why in (
        ("caBundlePath", "trust a CA bundle with SSL_CERT_FILE"),
        ("insecureAllowHttp", "http issuers are accepted on loopback only"),
        ("jwksAllowPrivateIp", "no such switch: private addresses are allowed"),
        ("protectedResourceAllowPrivateIp", "no such switch: private addresses are allowed"),
    ):
        if oidc.get(key):
            findings.skip(f"incomingAuth.oidc.{key}", why)
