"""ToolHive's operational sections (operational, telemetry, audit, optimizer, codeMode, sessionStorage,
rateLimiting) as ours: settings with a counterpart are written, the rest reported by their ToolHive path."""

from __future__ import annotations

from typing import Any

from vmcp_opt.importers.durations import seconds
from vmcp_opt.importers.findings import Findings


def set_path(config: dict[str, Any], dotted: str, value: Any) -> None:
    """`value` at a dotted path of `config`, its sections made as needed; None writes nothing."""
    if value is None:
        return
    *heads, last = dotted.split(".")
    for head in heads:
        config = config.setdefault(head, {})
    config[last] = value


def _operational(section: dict[str, Any], config: dict[str, Any], findings: Findings) -> None:
    level = section.get("logLevel")
    if level:
        set_path(config, "server.log_level", {"warn": "warning"}.get(level, level))
    timeouts = section.get("timeouts") or {}
    if timeouts.get("default"):
        set_path(config, "timeouts.call", seconds(timeouts["default"], "operational.timeouts.default", findings))
    backends = {b["name"]: b for b in config.get("backends", [])}
    for name, value in (timeouts.get("perWorkload") or {}).items():
        path = f"operational.timeouts.perWorkload.{name}"
        if name in backends:
            backends[name]["call_timeout"] = seconds(value, path, findings)
        else:
            findings.skip(path, f"no backend named {name!r} in `backends`")
    _failure(section.get("failureHandling") or {}, config, findings)


def _failure(section: dict[str, Any], config: dict[str, Any], findings: Findings) -> None:
    path = "operational.failureHandling"
    for theirs, ours in (("healthCheckInterval", "health.interval"), ("healthCheckTimeout", "health.timeout")):
        if section.get(theirs):
            set_path(config, ours, seconds(section[theirs], f"{path}.{theirs}", findings))
    set_path(config, "health.unhealthy_threshold", section.get("unhealthyThreshold") or None)
    mode = section.get("partialFailureMode")
    if mode:
        set_path(config, "failure.mode", "fail" if mode == "fail" else "best_effort")
    breaker = section.get("circuitBreaker")
    if isinstance(breaker, dict):
        set_path(config, "failure.circuit_breaker.enabled", bool(breaker.get("enabled")))
        set_path(config, "failure.circuit_breaker.failure_threshold", breaker.get("failureThreshold") or None)
        if breaker.get("timeout"):
            cooldown = seconds(breaker["timeout"], f"{path}.circuitBreaker.timeout", findings)
            set_path(config, "failure.circuit_breaker.cooldown", cooldown)
    if section.get("statusReportingInterval"):
        findings.note(f"{path}.statusReportingInterval", "Kubernetes status reporting; not needed here")


def _telemetry(section: dict[str, Any], config: dict[str, Any], findings: Findings) -> None:
    if section.get("tracingEnabled"):
        set_path(config, "telemetry.tracing.enabled", True)
        if section.get("samplingRate") not in (None, ""):
            set_path(config, "telemetry.tracing.sample_ratio", float(section["samplingRate"]))
    if section.get("enablePrometheusMetricsPath") or section.get("metricsEnabled"):
        set_path(config, "telemetry.metrics.enabled", True)
        if section.get("prometheusPort"):
            set_path(config, "telemetry.metrics.listen", str(section["prometheusPort"]))
        if section.get("metricsEnabled") and not section.get("enablePrometheusMetricsPath"):
            findings.skip("telemetry.metricsEnabled", "metrics are not pushed over OTLP; Prometheus scrapes /metrics")
    for key, variable in (("endpoint", "OTEL_EXPORTER_OTLP_ENDPOINT"), ("serviceName", "OTEL_SERVICE_NAME")):
        if section.get(key):
            findings.note(f"telemetry.{key}", f"set {variable} in the gateway's environment ({section[key]})")
    if section.get("insecure"):
        findings.note("telemetry.insecure", "give OTEL_EXPORTER_OTLP_ENDPOINT an http:// URL")
    if section.get("headers"):  # their values may be credentials: only the names are said
        names = ", ".join(sorted(map(str, section["headers"])))
        findings.skip("telemetry.headers", f"set OTEL_EXPORTER_OTLP_HEADERS ({names}) in the environment instead")
    for key in ("customAttributes", "environmentVariables", "caCertPath", "serviceVersion", "metricsOnTransportPort"):
        if section.get(key):
            findings.skip(f"telemetry.{key}", "not supported (the OTEL_* variables may cover it)")


def _audit(section: dict[str, Any], config: dict[str, Any], findings: Findings) -> None:
    audit: dict[str, Any] = {"enabled": section.get("enabled", True) is not False}
    for theirs, ours in (("eventTypes", "include"), ("excludeEventTypes", "exclude")):
        if section.get(theirs):
            audit[ours] = section[theirs]
    request, response = bool(section.get("includeRequestData")), bool(section.get("includeResponseData"))
    if request and response:
        audit["include_data"] = True
    elif request or response:  # one switch for both: on would record what the user chose to keep out
        which = "includeRequestData" if request else "includeResponseData"
        findings.skip(f"audit.{which}", "one include_data covers requests and responses together; left off")
    if section.get("maxDataSize"):
        audit["max_data_bytes"] = max(64, int(section["maxDataSize"]))
    if section.get("logFile"):
        audit["output"] = section["logFile"]
    for key in ("component", "detectApplicationErrors", "maxDelegationDepth"):
        if key in section:
            findings.skip(f"audit.{key}", "not supported")
    set_path(config, "telemetry.audit", audit)


def optimizer(section: Any, config: dict[str, Any], findings: Findings) -> None:
    if not section:  # ToolHive lists every tool unless an optimizer is configured
        set_path(config, "optimizer.enabled", False)
        return
    if section.get("maxToolsToReturn"):
        set_path(config, "optimizer.default_limit", min(50, int(section["maxToolsToReturn"])))
    if section.get("hybridSearchSemanticRatio") not in (None, ""):
        set_path(config, "optimizer.dense_weight", float(section["hybridSearchSemanticRatio"]))
    for key in sorted(set(section) - {"maxToolsToReturn", "hybridSearchSemanticRatio"}):
        findings.skip(
            f"optimizer.{key}",
            "the embedding model runs in the gateway (optimizer.model); no external service"
            if key.startswith("embedding")
            else "no equivalent (see optimizer.match_threshold)",
        )


def _code_mode(section: dict[str, Any], config: dict[str, Any], findings: Findings) -> None:
    set_path(config, "code_mode.enabled", bool(section.get("enabled")))
    if section.get("parallelMaxConcurrency"):
        set_path(config, "code_mode.max_parallel", min(64, int(section["parallelMaxConcurrency"])))
    if section.get("toolCallTimeout"):
        set_path(
            config, "code_mode.call_timeout", seconds(section["toolCallTimeout"], "codeMode.toolCallTimeout", findings)
        )
    if section.get("stepLimit"):
        findings.skip("codeMode.stepLimit", "scripts are bounded by CPU seconds (code_mode.cpu_seconds) instead")


def _sessions(section: dict[str, Any], config: dict[str, Any], findings: Findings) -> None:
    if section.get("provider") != "redis":
        return
    set_path(config, "sessions.store", "redis")
    if section.get("address"):
        set_path(config, "redis.url", f"redis://{section['address']}/{int(section.get('db') or 0)}")
    if section.get("keyPrefix"):
        set_path(config, "redis.key_prefix", section["keyPrefix"])
    findings.note("sessionStorage", "a Redis password goes in redis.password_env or redis.password_file")


def _rate_limits(section: dict[str, Any], config: dict[str, Any], findings: Findings) -> None:
    findings.skip("rateLimiting", "not converted: write rate_limits (per_caller, shared, per_tool) by hand")


SECTIONS = {
    "operational": _operational,
    "telemetry": _telemetry,
    "audit": _audit,
    "codeMode": _code_mode,
    "sessionStorage": _sessions,
    "rateLimiting": _rate_limits,
}
