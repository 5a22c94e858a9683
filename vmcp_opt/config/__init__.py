"""The one typed configuration document, with every default in one place.

Precedence, highest first: CLI flags, `VMCP_`-prefixed environment variables (nested with `__`),
the YAML/JSON config file, the defaults below. Validation happens at load: every bad field is
reported by its path (`backends[2].url: ...`) and unknown keys are errors.

This package is a leaf: it imports nothing from the rest of the package. The document is `document.py`, its
loading `loading.py`; its sections live in the modules beside them (`sections`, `limits`, `auth`, `telemetry`,
`optimizer`, `workflows`, `backend_auth`), so each reads in one sitting; everything is importable from
`vmcp_opt.config`. Discovered mode's client config
files are read by `backends/discovery.py`, which the `vmcp` command hands to `load_config`.

Where state lives: the optimizer's index and usage history go to `optimizer.index_dir` when it is set, else
to a directory of their own per config file under `data_dir` (default: the per-user data directory, e.g.
`~/.local/share/vmcp-opt` on Linux), so an installed package never writes beside its code and two configs
never share (and prune) one index.
"""

from __future__ import annotations

from vmcp_opt.config.auth import (
    JWT_ALGORITHMS,
    LOOPBACK_ADDRESSES,
    ApiKeysConfig,
    AuthConfig,
    AuthorizationConfig,
    ClaimNames,
    IncomingAuthConfig,
    OAuthConfig,
)
from vmcp_opt.config.backend_auth import (
    LITERAL_REFUSED,
    NEVER_FORWARDED,
    BackendAuthConfig,
    SecretRef,
)
from vmcp_opt.config.base import (
    APP_NAME,
    BACKEND_NAME_PATTERN,
    DEFAULT_CONFIG_PATH,
    PACKAGE_ROOT,
    PROJECT_ROOT,
    SECRET_NAME,
    ConfigError,
)
from vmcp_opt.config.document import VmcpConfig
from vmcp_opt.config.limits import (
    BucketConfig,
    LimitsConfig,
    RateLimitsConfig,
    RedisConfig,
    RequestStateConfig,
    SessionsConfig,
    ToolBucketConfig,
)
from vmcp_opt.config.loading import load_config
from vmcp_opt.config.optimizer import OptimizerConfig
from vmcp_opt.config.sections import (
    AggregationConfig,
    BackendConfig,
    BackendToolsConfig,
    CircuitBreakerConfig,
    DiscoveryConfig,
    FailureConfig,
    HealthConfig,
    RestartConfig,
    ServerConfig,
    TimeoutsConfig,
    ToolOverride,
)
from vmcp_opt.config.telemetry import (
    AuditConfig,
    MetricsConfig,
    TelemetryConfig,
    TracingConfig,
)
from vmcp_opt.config.workflows import (
    RESERVED_NAMES,
    STEP_ID_PATTERN,
    WORKFLOW_NAME_PATTERN,
    OnErrorConfig,
    StepConfig,
    WorkflowConfig,
    check_workflows,
)

__all__ = [
    "APP_NAME",
    "BACKEND_NAME_PATTERN",
    "DEFAULT_CONFIG_PATH",
    "JWT_ALGORITHMS",
    "LITERAL_REFUSED",
    "LOOPBACK_ADDRESSES",
    "NEVER_FORWARDED",
    "PACKAGE_ROOT",
    "PROJECT_ROOT",
    "RESERVED_NAMES",
    "SECRET_NAME",
    "STEP_ID_PATTERN",
    "WORKFLOW_NAME_PATTERN",
    "AggregationConfig",
    "ApiKeysConfig",
    "AuditConfig",
    "AuthConfig",
    "AuthorizationConfig",
    "BackendAuthConfig",
    "BackendConfig",
    "BackendToolsConfig",
    "BucketConfig",
    "CircuitBreakerConfig",
    "ClaimNames",
    "ConfigError",
    "DiscoveryConfig",
    "FailureConfig",
    "HealthConfig",
    "IncomingAuthConfig",
    "LimitsConfig",
    "MetricsConfig",
    "OAuthConfig",
    "OnErrorConfig",
    "OptimizerConfig",
    "RateLimitsConfig",
    "RedisConfig",
    "RequestStateConfig",
    "RestartConfig",
    "SecretRef",
    "ServerConfig",
    "SessionsConfig",
    "StepConfig",
    "TelemetryConfig",
    "TimeoutsConfig",
    "ToolBucketConfig",
    "ToolOverride",
    "TracingConfig",
    "VmcpConfig",
    "WorkflowConfig",
    "check_workflows",
    "load_config",
]
