"""Go's duration strings (`30s`, `1m30s`, `500ms`) as our seconds."""

from __future__ import annotations

import re
from typing import Any

from vmcp_opt.importers.findings import Findings

_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def seconds(value: Any, path: str, findings: Findings) -> float | None:
    """Seconds of a Go duration (a bare number is taken as seconds, as YAML may give one); None, reported, when
    it is neither."""
    if isinstance(value, bool):
        findings.skip(path, f"not a duration: {value!r}")
        return None
    if isinstance(value, int | float):
        return float(value)
    text = str(value).strip()
    if _PART.sub("", text) == "" and text:
        return sum(float(number) * _UNIT[unit] for number, unit in _PART.findall(text))
    findings.skip(path, f"not a duration: {value!r}")
    return None
